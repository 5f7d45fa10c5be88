"""Generate test and benchmark images, deterministically from a seed.

Two kinds:

* ``photo_mosaic(width, height, seed)``: a large RGB picture tiled from the real photos in this
  folder at their native scale (random crops and flips), so it has the detail and noise of real
  photographs at any size; the benchmarks use 3000x2000 JPEG q90 ones.
* ``varied_image(index, seed)``: one image of a varied size, mode and format (JPEG, PNG, GIF, WebP,
  TIFF, BMP; 1, L, LA, P with transparency, RGB, RGBA, CMYK, I;16, I, F; animated GIF/WebP; EXIF
  orientations), for volume and robustness runs.

Usage::

    python data/generate_images.py OUT_DIR -n 200 --seed 1             # varied images
    python data/generate_images.py OUT_DIR -n 20 --photo 3000x2000     # photo mosaics, JPEG q90

The same arguments always give the same files, byte for byte (same Pillow and codec versions).

>>> im = photo_mosaic(320, 200, seed=3)
>>> im.size, im.mode
((320, 200), 'RGB')
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
PHOTOS = ("astronaut.jpg", "chelsea.png", "coffee.jpg", "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg")

__all__ = ["PHOTOS", "photo_mosaic", "save_image", "varied_image", "write_photos", "write_varied"]

_photo_cache: dict[str, Image.Image] = {}


def _photo(name: str) -> Image.Image:
    if name not in _photo_cache:
        with Image.open(HERE / name) as im:
            _photo_cache[name] = im.convert("RGB")
    return _photo_cache[name]


def photo_mosaic(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of ``width`` x ``height`` tiled from real photo crops at native scale."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (width, height))
    y = 0
    while y < height:
        row_h = int(rng.integers(200, 420))
        x = 0
        while x < width:
            photo = _photo(PHOTOS[int(rng.integers(len(PHOTOS)))])
            tile_w = int(min(rng.integers(200, 460), photo.width))
            th = min(row_h, photo.height)
            left = int(rng.integers(0, photo.width - tile_w + 1))
            top = int(rng.integers(0, photo.height - th + 1))
            tile = photo.crop((left, top, left + tile_w, top + th))
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if th < row_h:  # a short photo: stretch the crop a little to fill the row
                tile = tile.resize((tile_w, row_h), Image.Resampling.BICUBIC)
            canvas.paste(tile, (x, y))
            x += tile_w
        y += row_h
    return canvas


def _pattern(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Smooth gradients, shapes and a little noise: cheap colour content of any size."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.random(3) * 6.28
    freq = rng.uniform(2, 9, 3)
    channels = [127.5 + 127.5 * np.sin(freq[i] * (xx / w + yy / h * (i + 1) / 3) * 3.14 + phase[i]) for i in range(3)]
    arr = np.stack(channels, axis=-1) + rng.normal(0, 6, (h, w, 3))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 8))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(1, max(2, w // 2))), y0 + int(rng.integers(1, max(2, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return im


def _with_orientation(im: Image.Image, orientation: int) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    return im


# (mode, format, extension); animated and oriented cases are marked in the mode name
KINDS: tuple[tuple[str, str, str], ...] = (
    ("RGB", "JPEG", "jpg"),
    ("RGB+orient", "JPEG", "jpg"),
    ("L", "JPEG", "jpg"),
    ("CMYK", "JPEG", "jpg"),
    ("RGB", "PNG", "png"),
    ("RGBA", "PNG", "png"),
    ("LA", "PNG", "png"),
    ("P+transparency", "PNG", "png"),
    ("I;16", "PNG", "png"),
    ("1", "PNG", "png"),
    ("P+animated", "GIF", "gif"),
    ("RGBA+animated", "WEBP", "webp"),
    ("RGB", "WEBP", "webp"),
    ("F", "TIFF", "tif"),
    ("I", "TIFF", "tif"),
    ("RGB", "BMP", "bmp"),
)


def varied_image(index: int, seed: int = 0) -> tuple[bytes, str]:
    """The encoded bytes and file extension of varied image number ``index``."""
    rng = np.random.default_rng([seed, index])
    kind, fmt, ext = KINDS[index % len(KINDS)]
    size = (int(rng.integers(16, 1600)), int(rng.integers(16, 1200)))
    base = photo_mosaic(*size, seed=int(rng.integers(1 << 30))) if rng.random() < 0.5 else _pattern(size, rng)
    kw: dict = {}
    frames: list[Image.Image] = []
    if kind == "RGB+orient":
        im = _with_orientation(base, int(rng.integers(1, 9)))
        kw["exif"] = im.info["exif"]
    elif kind == "P+transparency":
        im = base.quantize(64)
        im.info["transparency"] = 0
        kw["transparency"] = 0
    elif kind == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    elif kind == "I":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 100 - 5000)
    elif kind == "F":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0)
    elif kind in ("RGBA", "LA"):
        alpha = Image.linear_gradient("L").resize(size)
        im = base.convert(kind[0] if kind == "LA" else "RGB")
        im.putalpha(alpha)
    elif kind.endswith("+animated"):
        mode = kind.split("+")[0]
        frames = [base.rotate(i * 30).convert("RGBA" if mode == "RGBA" else "RGB") for i in range(3)]
        if mode == "P":
            frames = [f.quantize(64) for f in frames]
        im = frames[0]
        kw.update(save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:
        im = base.convert(kind)
    if fmt == "JPEG":
        kw.setdefault("quality", int(rng.integers(60, 96)))
    if fmt == "WEBP":
        kw.setdefault("quality", 80)
        kw["method"] = 4
    return save_image(im, fmt, **kw), ext


def save_image(im: Image.Image, fmt: str, **kw: object) -> bytes:
    """Encode ``im`` to bytes."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def write_varied(out: Path, n: int, seed: int = 0) -> Iterator[Path]:
    """Write ``n`` varied images into ``out``; yields the paths."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data, ext = varied_image(i, seed)
        path = out / f"varied-{seed}-{i:05d}.{ext}"
        path.write_bytes(data)
        yield path


def write_photos(out: Path, n: int, size: tuple[int, int] = (3000, 2000), seed: int = 0,
                 quality: int = 90) -> Iterator[Path]:
    """Write ``n`` photo mosaics as JPEG into ``out``; yields the paths."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = out / f"photo-{seed}-{size[0]}x{size[1]}-{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(save_image(photo_mosaic(*size, seed=seed * 100_003 + i), "JPEG", quality=quality))
        yield path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=50, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photo", metavar="WxH", help="write photo mosaics of this size (JPEG) instead")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of photo mosaics")
    args = parser.parse_args(argv)
    if args.photo:
        w, h = (int(v) for v in args.photo.lower().split("x"))
        paths = list(write_photos(args.out, args.n, (w, h), args.seed, args.quality))
    else:
        paths = list(write_varied(args.out, args.n, args.seed))
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()
