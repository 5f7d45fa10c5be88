"""Notebook display helpers: inline pictures (size, orientation, modes, bad files), grids from paths and
results frames, near-duplicate pairs from every kind of storage, and no IPython at import."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mediaq.errors import PermanentJobError
from mediaq.faces.display import grid_html, image_data_uri, pairs_html, pairs_side_by_side, thumbnail_grid
from mediaq.pure import imaging
from mediaq.runtime.settings import Settings
from mediaq.runtime.storage.local import LocalStore

DATA = Path(__file__).resolve().parent.parent / "data"
URI = re.compile(r'src="data:image/(jpeg|png);base64,([A-Za-z0-9+/=]+)"')


def decode_uri(uri: str) -> Image.Image:
    kind, _, payload = uri.partition(";base64,")
    im = Image.open(io.BytesIO(base64.b64decode(payload)))
    assert kind == f"data:image/{im.format.lower()}"
    return im


def save(path: Path, im: Image.Image, fmt: str | None = None, **kw: object) -> Path:
    im.save(path, fmt, **kw)
    return path


# -- image_data_uri ---------------------------------------------------------------------------------
def test_uri_fits_within_size_and_keeps_aspect() -> None:
    im = decode_uri(image_data_uri(DATA / "chelsea.png", size=90))  # 451x300
    assert im.format == "JPEG" and im.size == (90, 60)
    # never upscaled
    small = decode_uri(image_data_uri(DATA / "coffee.jpg", size=2000))
    assert small.size == (600, 400)


def test_uri_applies_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(tmp_path / "o.jpg", Image.new("RGB", (80, 40), "red"), "JPEG", exif=exif.tobytes())
    assert decode_uri(image_data_uri(path, size=80)).size == (40, 80)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_uri_transparency_is_png(tmp_path: Path, mode: str) -> None:
    im = Image.new("RGBA", (30, 20), (10, 200, 30, 0)).convert(mode)
    kw = {"transparency": 0} if mode == "P" else {}
    out = decode_uri(image_data_uri(save(tmp_path / "t.png", im, **kw), size=15))
    assert out.format == "PNG" and out.size == (15, 10)


@pytest.mark.parametrize(("mode", "dtype", "fmt"), [("I;16", np.uint16, "PNG"), ("F", np.float32, "TIFF"),
                                                    ("I", np.int32, "TIFF")])
def test_uri_shows_deep_images_as_the_thumbnail_job_does(tmp_path: Path, mode: str, dtype: type, fmt: str) -> None:
    """One decoding path: the grid's picture of a 16-bit, 32-bit or float image is the thumbnail job's,
    byte for byte (it used to stretch min..max on its own and differ from the thumbnail)."""
    offset = 0 if dtype is np.uint16 else -5000  # negative values too, where the type allows them
    ramp = (np.arange(64).reshape(8, 8) * 1000 + offset).astype(dtype)
    path = save(tmp_path / f"d.{fmt.lower()}", Image.fromarray(ramp), fmt)
    thumb, _ = imaging.thumbnail(imaging.read_source(path), (8, 8), format="jpeg", quality=85)
    assert base64.b64decode(image_data_uri(path, size=8).split(",", 1)[1]) == thumb.data
    out = np.asarray(decode_uri(image_data_uri(path, size=8)).convert("L"), dtype=int)
    assert out.min() <= 3 and out.max() >= 240 and len(np.unique(out)) >= 60  # the range is used, not clipped


def test_uri_first_frame_of_animation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ("blue", "red")]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, _g, b = decode_uri(image_data_uri(path, size=20)).convert("RGB").getpixel((10, 10))
    assert b > 200 and r < 50


def test_uri_bad_input(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(PermanentJobError, match="not_an_image"):
        image_data_uri(tmp_path / "notes.jpg")
    with pytest.raises(PermanentJobError, match="missing_file"):
        image_data_uri(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="size"):
        image_data_uri(DATA / "coffee.jpg", size=0)


# -- grids -----------------------------------------------------------------------------------------
def test_grid_from_paths_rows_and_captions() -> None:
    paths = sorted(DATA.glob("*.jpg"))  # 5 photos
    html = grid_html(paths, columns=2, size=40)
    assert len(URI.findall(html)) == len(paths) == 5
    assert html.count("<tr>") == 3  # 2 + 2 + 1
    assert re.findall(r">([a-z_]+\.jpg)<", html.replace("<wbr>", "")) == [p.name for p in paths]
    assert "hubble_<wbr>deep_<wbr>field.jpg" in html  # long ids may wrap at their separators
    for _kind, payload in URI.findall(html):
        assert max(Image.open(io.BytesIO(base64.b64decode(payload))).size) <= 40


def test_grid_from_results_frame_shows_failures_as_boxes(tmp_path: Path) -> None:
    df = pd.DataFrame({
        "image_id": ["cat", "<b>bad</b>", "gone"],
        "status": ["complete", "failed", "complete"],
        "path": [str(DATA / "chelsea.png"), None, str(tmp_path / "deleted.jpg")],
    })
    html = grid_html(df, columns=6, size=50)
    assert len(URI.findall(html)) == 1
    assert "cannot show (no file)" in html and "cannot show (missing_file)" in html
    assert "&lt;b&gt;bad&lt;/b&gt;" in html.replace("<wbr>", "") and "<b>bad" not in html  # escaped
    assert html.index(">cat<") < html.index("bad") < html.index(">gone<")  # frame order kept


def test_grid_caption_column_and_limits() -> None:
    df = pd.DataFrame({"file": [str(DATA / "coffee.jpg")] * 5, "label": list("abcde")})
    html = grid_html(df, columns=3, path_column="file", caption="label", max_images=4)
    assert len(URI.findall(html)) == 4 and "4 of 5 pictures shown" in html
    assert re.findall(r">([a-e])</div>", html) == list("abcd")
    with pytest.raises(ValueError, match="path_column"):
        grid_html(df)
    with pytest.raises(ValueError, match="caption column"):
        grid_html(df, path_column="file", caption="nope")
    with pytest.raises(ValueError, match="columns"):
        grid_html([DATA / "coffee.jpg"], columns=0)


def test_thumbnail_grid_is_ipython_html() -> None:
    pytest.importorskip("IPython")
    from IPython.display import HTML

    out = thumbnail_grid([DATA / "coffee.jpg", str(DATA / "rocket.jpg")], columns=2, size=30)
    assert isinstance(out, HTML)
    assert out.data == grid_html([DATA / "coffee.jpg", DATA / "rocket.jpg"], columns=2, size=30)


# -- near-duplicate pairs --------------------------------------------------------------------------
@pytest.fixture
def thumbs(tmp_path: Path) -> Path:
    store = LocalStore(tmp_path)
    for name in ("coffee", "rocket", "astronaut"):
        with Image.open(DATA / f"{name}.jpg") as im:
            im.thumbnail((100, 100))
            buf = io.BytesIO()
            im.save(buf, "JPEG")
        store.write(f"thumbs/{name}.jpg", buf.getvalue())
    return tmp_path


DUPS = pd.DataFrame({"image_id": ["coffee", "rocket", "coffee"], "match_id": ["rocket", "astronaut", "astronaut"],
                     "score": [91.25, 99.5, 95.0]})


def test_pairs_best_first_with_scores(thumbs: Path) -> None:
    html = pairs_html(DUPS, thumbs, n=2, size=50)
    assert re.findall(r"<b>([0-9.]+)</b>", html) == ["99.50", "95.00"]
    assert html.count("<tr>") == 3  # header + 2 pairs
    assert len(URI.findall(html)) == 4 and "2 of 3 pairs shown" in html
    assert html.index(">rocket<") < html.index(">astronaut<") < html.index(">coffee<")


def test_pairs_storage_kinds_agree(thumbs: Path) -> None:
    by_root = pairs_html(DUPS, thumbs)
    assert by_root == pairs_html(DUPS, str(thumbs))
    assert by_root == pairs_html(DUPS, LocalStore(thumbs))
    assert by_root == pairs_html(DUPS, Settings.load(env={}, storage=thumbs))
    paths = {i: thumbs / "thumbs" / f"{i}.jpg" for i in ("coffee", "rocket", "astronaut")}
    assert by_root == pairs_html(DUPS, paths)
    assert by_root == pairs_html(DUPS, paths.__getitem__)
    with pytest.raises(TypeError, match="storage"):
        pairs_html(DUPS, 42)


def test_pairs_missing_pictures_columns_and_empty(thumbs: Path) -> None:
    html = pairs_html(pd.DataFrame({"image_id": ["coffee"], "match_id": ["nope"], "score": [90.0]}), thumbs)
    assert len(URI.findall(html)) == 1 and "cannot show (missing_file)" in html
    with pytest.raises(ValueError, match="match_id"):
        pairs_html(pd.DataFrame({"image_id": [], "score": []}), thumbs)
    assert pairs_html(DUPS.iloc[:0], thumbs) == "<p>no pairs</p>"


def test_pairs_side_by_side_is_ipython_html(thumbs: Path) -> None:
    pytest.importorskip("IPython")
    from IPython.display import HTML

    out = pairs_side_by_side(DUPS, thumbs, n=1)
    assert isinstance(out, HTML) and out.data == pairs_html(DUPS, thumbs, n=1)


def test_import_does_not_load_ipython() -> None:
    code = "import sys, mediaq.faces.display; print('IPython' in sys.modules, 'ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
