"""Issue 9, item 4: a corpus of hostile and odd files, generated here, through a real worker in one
batch. Each file gives a correct thumbnail or a structured permanent error with its stable code, and
the worker keeps running (same process, same pool) and still makes a normal thumbnail afterwards.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mediaq.pure.imaging import fit_size

pytestmark = pytest.mark.slow

BOX = (250, 200)
MARK = (255, 0, 0)  # the picture's top-left corner, as a viewer shows it, is red; the rest blue


@dataclass
class Case:
    name: str
    path: Path
    expect: str  # "ok" or an error code
    size: tuple[int, int] | None = None  # the source size as displayed (for "ok")
    upright_mark: bool = False  # check the red corner ends up top-left


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: bytes, *, extra: bytes = b"", bit_depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 255, w)[None, :, None].repeat(h, 0).repeat(3, 2)
    return Image.fromarray(np.clip(grad * 0.6 + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))


def _marked(w: int, h: int) -> Image.Image:
    im = Image.new("RGB", (w, h), (0, 0, 255))
    im.paste(MARK, (0, 0, w // 2, h // 2))
    return im


# stored frame for each EXIF orientation, so that the displayed picture is _marked(60, 40)
_TO_STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def build_corpus(folder: Path) -> list[Case]:
    """At least 30 files; every one is written by this function (nothing downloaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, data: bytes, expect: str, size: tuple[int, int] | None = None, **kw) -> None:
        path = folder / name
        path.write_bytes(data)
        cases.append(Case(name, path, expect, size, **kw))

    jpeg = _encode(_noise(400, 300), "JPEG", quality=90)
    png = _encode(_noise(400, 300, 1), "PNG")
    webp = _encode(_noise(400, 300, 2), "WEBP", quality=80)
    rng = np.random.default_rng(99)

    # broken or not images at all
    add("truncated.jpg", jpeg[: len(jpeg) // 2], "corrupt_image")
    add("truncated_header.jpg", jpeg[:120], "corrupt_image")
    add("truncated.png", png[: len(png) // 2], "corrupt_image")
    add("truncated_header.png", png[:30], "corrupt_image")
    add("truncated.webp", webp[: len(webp) // 2], "corrupt_image")
    add("empty.jpg", b"", "corrupt_image")
    add("empty.png", b"", "corrupt_image")
    add("random.jpg", b"\x00\x13" + rng.bytes(8190), "not_an_image")
    add("random.png", b"\x7f\x01" + rng.bytes(8190), "not_an_image")
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>nope</body></html>\n"
    add("page.jpg", html, "not_an_image")
    add("page.png", html * 50, "not_an_image")
    add("drawing.jpg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "unsupported_format")
    add("zero_width.png", _png(0, 10, b""), "corrupt_image")

    # decompression bombs: tiny files whose headers announce billions of pixels
    add("bomb.png", _png(100_000, 100_000, b"\x00" * 101), "too_large")
    add("bomb_warning_zone.png", _png(10_000, 10_000, b"\x00" * 10_001), "too_large")  # 1x-2x the limit
    gif_bomb = (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
                + b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00\x3b")
    add("bomb.gif", gif_bomb, "too_large")
    sof_bomb = bytearray(_encode(Image.new("RGB", (8, 8)), "JPEG"))
    at = sof_bomb.find(b"\xff\xc0") + 5  # SOF0: length(2) precision(1) height(2) width(2)
    sof_bomb[at:at + 4] = struct.pack(">HH", 65500, 65500)
    add("bomb.jpg", bytes(sof_bomb), "too_large")

    # extreme but valid sizes
    add("one_pixel.png", _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok", (1, 1))
    add("one_pixel.jpg", _encode(Image.new("L", (1, 1), 200), "JPEG"), "ok", (1, 1))
    add("wide_20000x1.png", _encode(Image.new("L", (20000, 1), 128), "PNG"), "ok", (20000, 1))
    add("tall_1x20000.png", _encode(Image.new("L", (1, 20000), 128), "PNG"), "ok", (1, 20000))
    big = _png(9000, 9000, (b"\x00" + b"\x80" * 9000) * 9000)  # 81 Mpx (under the limit), ~80 KB on disk
    add("big_but_allowed_9000.png", big, "ok", (9000, 9000))

    # modes and formats
    add("cmyk.jpg", _encode(_noise(300, 200).convert("CMYK"), "JPEG", quality=90), "ok", (300, 200))
    gray16 = Image.fromarray((np.arange(300 * 200, dtype=np.uint16).reshape(200, 300) * 7).astype(np.uint16))
    add("gray16.png", _encode(gray16, "PNG"), "ok", (300, 200))
    add("gray16.tif", _encode(gray16, "TIFF"), "ok", (300, 200))
    pal = Image.new("P", (120, 80), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 60, 80))
    add("palette_transparent.png", _encode(pal, "PNG", transparency=0), "ok", (120, 80))
    add("palette_transparent.gif", _encode(pal, "GIF", transparency=0), "ok", (120, 80))
    frames = [Image.new("RGB", (90, 60), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    add("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "ok", (90, 60))
    add("animated.png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50), "ok",
        (90, 60))
    add("animated.webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50), "ok",
        (90, 60))
    add("jpeg_named.png", jpeg, "ok", (400, 300))
    add("bmp_named.jpg", _encode(_noise(64, 48), "BMP"), "ok", (64, 48))

    # EXIF orientations 1..8: the displayed picture is always _marked(60, 40)
    for orientation, transpose in _TO_STORED.items():
        stored = _marked(60, 40) if transpose is None else _marked(60, 40).transpose(transpose)
        exif = Image.Exif()
        exif[0x0112] = orientation
        add(f"exif_orientation_{orientation}.jpg", _encode(stored, "JPEG", quality=95, exif=exif), "ok", (60, 40),
            upright_mark=True)

    # broken metadata never costs the picture
    good = _encode(_noise(200, 150), "JPEG", quality=90)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + 40) + b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\xff\xff" + rng.bytes(32)
    add("corrupt_exif.jpg", good[:2] + app1 + good[2:], "ok", (200, 150))
    bad_orientation = Image.Exif()
    bad_orientation[0x0112] = 77
    add("exif_orientation_77.jpg", _encode(_noise(200, 150), "JPEG", exif=bad_orientation), "ok", (200, 150))
    add("corrupt_icc.jpg", _encode(_noise(200, 150), "JPEG", icc_profile=b"not a profile" * 20), "ok", (200, 150))
    iccp = _png_chunk(b"iCCP", b"junk\x00\x00" + zlib.compress(b"\x00garbage profile" * 40))
    add("corrupt_icc.png", _png(50, 40, (b"\x00" + b"\x90" * 50) * 40, extra=iccp), "ok", (50, 40))

    # not regular files
    (folder / "folder.jpg").mkdir()
    cases.append(Case("folder.jpg", folder / "folder.jpg", "unreadable"))
    os.mkfifo(folder / "fifo.jpg")
    cases.append(Case("fifo.jpg", folder / "fifo.jpg", "unreadable"))
    os.symlink("loop.jpg", folder / "loop.jpg")
    cases.append(Case("loop.jpg", folder / "loop.jpg", "unreadable"))
    os.symlink("/dev/zero", folder / "zero.jpg")
    cases.append(Case("zero.jpg", folder / "zero.jpg", "unreadable"))
    cases.append(Case("missing.jpg", folder / "missing.jpg", "missing_file"))
    return cases


def image_id(case: Case) -> str:
    return "h-" + case.name.replace(".", "_")


async def test_hostile_corpus_through_a_real_worker(client, start_worker, tmp_path, settings):
    cases = build_corpus(tmp_path / "hostile")
    assert len(cases) >= 30
    worker = start_worker()
    normal = tmp_path / "normal.jpg"
    _noise(640, 480, 5).save(normal, "JPEG")
    warm = await client.enqueue_many("create_thumbnail", [{"image_id": f"warm-{i}", "source_path": str(normal)}
                                                          for i in range(8)])  # starts every pool process
    warm_counts = await warm.wait(progress=False, timeout=60)
    assert warm_counts["complete"] == 8, warm_counts
    pool_before = set(_children(worker.pid))
    batch = await client.enqueue_many("create_thumbnail",
                                      [{"image_id": image_id(c), "source_path": str(c.path)} for c in cases],
                                      job_id="hostile:{image_id}")
    counts = await batch.wait(progress=False, timeout=110)
    df = (await batch.results()).set_index("image_id")
    assert counts["complete"] + counts["failed"] == len(cases), counts

    problems = []
    for case in cases:
        row = df.loc[image_id(case)]
        if case.expect == "ok":
            if row["status"] != "complete":
                problems.append(f"{case.name}: expected a thumbnail, got {row['error_code']}: {row['error_message']}")
                continue
            path = Path(row["path"])
            assert path.parent == Path(Path(settings.storage)) / "thumbs"
            with Image.open(path) as im:
                im.load()
                want = fit_size(case.size, BOX)
                if im.size != want or (row["width"], row["height"]) != want:
                    problems.append(f"{case.name}: thumbnail {im.size}, expected {want}")
                if case.upright_mark:
                    rgb = np.asarray(im.convert("RGB"), np.int16)
                    h, w = rgb.shape[:2]
                    corners = {"top-left": rgb[h // 4, w // 4], "bottom-right": rgb[3 * h // 4, 3 * w // 4]}
                    if not (np.abs(corners["top-left"] - MARK).max() < 60
                            and np.abs(corners["bottom-right"] - (0, 0, 255)).max() < 60):
                        problems.append(f"{case.name}: not upright, corners {corners}")
        else:
            if row["status"] != "failed" or row["error_code"] != case.expect:
                problems.append(f"{case.name}: expected {case.expect}, got {row['status']} "
                                f"{row['error_code']}: {row['error_message']}")
            elif row["error_type"] != "mediaq.errors.PermanentJobError" or row["tries"] != 1:
                problems.append(f"{case.name}: {row['error_type']} after {row['tries']} tries (not permanent)")
    assert not problems, "\n".join(problems)
    assert (df["tries"] == 1).all()  # nothing was retried: no pool process died on the way
    # no failed file left a thumbnail (or a temporary file) behind
    made = sorted(p.name for p in (Path(settings.storage) / "thumbs").iterdir())
    wanted = [f"{image_id(c)}.jpg" for c in cases if c.expect == "ok"] + [f"warm-{i}.jpg" for i in range(8)]
    assert made == sorted(wanted)

    # the same worker, with the same pool processes, is still alive and still works
    assert worker.alive
    result = await client.result(await client.enqueue_job("create_thumbnail", "after-hostile", str(normal)),
                                 timeout=60)
    assert (result["width"], result["height"]) == (250, 188)
    assert set(_children(worker.pid)) == pool_before, "a pool process died and was replaced"
    print(f"\nhostile files: {len(cases)} tried, {sum(c.expect == 'ok' for c in cases)} thumbnails, "
          f"{sum(c.expect != 'ok' for c in cases)} structured permanent errors, worker alive")


def _children(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]
