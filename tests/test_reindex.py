"""A folder as a library (one image id per file) and ``client.reindex`` through a real worker, reruns
included."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import mediaq
from mediaq.errors import ConfigError
from mediaq.runtime.storage.layout import validate_image_id

DATA = Path(__file__).resolve().parent.parent / "data"


def _picture(path: Path, colour: tuple[int, int, int], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (320, 240), colour).save(path, fmt)


def test_image_ids_are_unique_per_file_and_stable(tmp_path):
    """Two files that differ only by extension, or by folder, are two images; a name that is no valid
    image id (a space, an accent) gets a safe id with a short hash of its path."""
    _picture(tmp_path / "a.gif", (200, 0, 0), "GIF")
    _picture(tmp_path / "a.webp", (0, 200, 0), "WEBP")
    _picture(tmp_path / "sub" / "a.jpg", (0, 0, 200), "JPEG")
    _picture(tmp_path / "Été 2024.JPG", (9, 9, 9), "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    frame = mediaq.image_frame(tmp_path)
    ids = dict(zip(frame["source_path"].map(lambda p: Path(p).relative_to(tmp_path).as_posix()), frame["image_id"],
                   strict=True))
    assert ids["a.gif"] == "a.gif" and ids["a.webp"] == "a.webp" and ids["sub/a.jpg"] == "sub__a.jpg"
    assert re.fullmatch(r"t_2024\.JPG-[0-9a-f]{10}", ids["Été 2024.JPG"])
    assert len(set(ids.values())) == 4 and all(validate_image_id(i) == i for i in ids.values())
    assert mediaq.image_frame(tmp_path).equals(frame)  # the same ids on every run


def test_two_files_that_would_share_an_id_are_refused(tmp_path):
    _picture(tmp_path / "a__b.png", (1, 2, 3), "PNG")
    _picture(tmp_path / "a" / "b.png", (3, 2, 1), "PNG")
    with pytest.raises(ConfigError, match=r"a__b\.png"):
        mediaq.image_frame(tmp_path)


async def test_reindex_files_differing_by_extension_and_force(client, settings, start_worker, tmp_path):
    """``a.gif`` and ``a.webp`` both get thumbnails; a rerun within ``keep_result`` skips everything,
    ``force=True`` runs everything again (after a settings change, say), follow-ups included."""
    folder = tmp_path / "library"
    _picture(folder / "a.gif", (200, 0, 0), "GIF")
    _picture(folder / "a.webp", (0, 200, 0), "WEBP")
    shutil.copy(DATA / "coffee.jpg", folder / "coffee.jpg")
    start_worker()
    first = await client.reindex(folder)
    counts = await first.wait(progress=False, timeout=120)
    assert counts["complete"] == 6 and counts["failed"] == 0  # 3 reindex_image + 3 add_to_iqdb
    thumbs = sorted(p.name for p in (Path(settings.storage) / "thumbs").iterdir())
    assert thumbs == ["a.gif.jpg", "a.webp.jpg", "coffee.jpg.jpg"]
    again = await client.reindex(folder)
    assert sorted(again.skipped) == ["reindex:a.gif", "reindex:a.webp", "reindex:coffee.jpg"]
    assert (await again.wait(progress=False, timeout=60))["complete"] == 3  # nothing new ran
    before = (await first.results()).set_index("job_id")["finish_time"]
    forced = await client.reindex(folder, force=True)
    assert forced.skipped == []
    counts = await forced.wait(progress=False, timeout=120)
    assert counts["complete"] == 6 and counts["failed"] == 0
    after = (await forced.results()).set_index("job_id")["finish_time"]
    assert set(after.index) == set(before.index) and (after > before.loc[after.index]).all()
