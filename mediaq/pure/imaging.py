"""Pure image operations (Pillow only; nothing here knows about arq, Redis or the storage layout).

One pipeline for every output: **open** the file (:func:`open_source`: file-system errors are told
apart from bad image data, since only the former carry an errno), **decode** once (bomb guard on;
JPEG ``draft()`` to the smallest DCT scale that keeps at least ``reducing_gap`` times the largest
output; any mode normalised to 8-bit L, LA, RGB, RGBA or CMYK; animations give their first frame),
then per output, largest first, **render** (``reduce()`` + LANCZOS in the stored frame, embedded
ICC profile to sRGB, EXIF orientation applied; an output at most half the size of one already
rendered is resized from that one instead: :func:`render_outputs`) and **encode** (deterministic:
same pixels and options give the same bytes; alpha flattened on white for JPEG, kept for PNG and
WebP; no metadata copied).

Every problem with the input raises :class:`~mediaq.errors.PermanentJobError` with a stable code:
``missing_file``, ``unreadable``, ``corrupt_image``, ``not_an_image``, ``unsupported_format``,
``too_large`` or ``bad_argument``. An unexpected ``OSError`` while *reading* the file (EIO, ESTALE,
a timed-out network mount) raises :class:`~mediaq.errors.TransientJobError` ``read_error``: the same
call may work a moment later, and the job's retries (5 s x try, 3 tries) cover that.

>>> from mediaq.pure import imaging
>>> data = imaging.read_source("data/chelsea.png")
>>> out, info = imaging.thumbnail(data, (250, 200), format="jpeg", quality=87)
>>> (out.width, out.height, out.format), (info["width"], info["height"])
((250, 166, 'jpeg'), (451, 300))
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import stat
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from mediaq.errors import JobFailure, PermanentJobError, TransientJobError
from mediaq.pure.imagespec import OUTPUT_FORMATS, OutputSpec, check_format, check_quality, check_size

__all__ = [
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "Output",
    "OutputSpec",
    "Source",
    "check_format",
    "check_pixels",
    "check_quality",
    "check_size",
    "decode",
    "encode",
    "fit_size",
    "open_source",
    "probe",
    "read_source",
    "render",
    "render_outputs",
    "thumbnail",
    "to_srgb",
]

#: Pillow formats we decode. Anything else Pillow can identify is ``unsupported_format``: fewer
#: parsers exposed to untrusted files. (JPEGs with a multi-picture block open as format "MPO".)
INPUT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF", "ICO", "PPM", "JPEG2000")
#: An output is resized from an earlier, larger output (not the source) when that one is at least
#: this many times its size on each side (see :func:`render_outputs`).
CASCADE_FACTOR = 2
#: Largest source file accepted (bytes).
MAX_FILE_BYTES = 512 * 1024 * 1024
#: EXIF orientation -> the transpose that makes the picture upright (as ``ImageOps.exif_transpose``).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# read errors that say something about the file itself, not a passing failure
_PERMANENT_READ_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO,
                          errno.EINVAL, errno.ESPIPE, errno.ENODEV, errno.EOPNOTSUPP}  # a file that cannot seek or read


def fit_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size of ``size`` scaled to fit inside ``box``, aspect ratio kept, never upscaled.

    >>> fit_size((3000, 2000), (250, 200)), fit_size((100, 50), (250, 200)), fit_size((4000, 10), (250, 200))
    ((250, 167), (100, 50), (250, 1))
    """
    w, h = size
    scale = min(box[0] / w, box[1] / h, 1.0)
    if scale >= 1.0:
        return (w, h)
    return (min(box[0], max(1, round(w * scale))), min(box[1], max(1, round(h * scale))))


# -- read -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_source(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> Iterator[BinaryIO]:
    """The regular file ``path`` opened for reading; file-system problems become job errors.

    Missing -> ``missing_file``; a directory, FIFO, device, a ``/proc`` or ``/sys`` file, or a permission
    problem -> ``unreadable``;
    bigger than ``max_bytes`` -> ``too_large``; any other ``OSError`` (EIO, ESTALE...) -> transient
    ``read_error``. Decoding straight from the file is ~0.6 ms faster per 6 Mpx JPEG than from a
    copy in memory; an ``OSError`` with an errno while decoding is still a read error (Pillow's own
    complaints about the data carry none).
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path) or "\x00" in str(path):
        raise PermanentJobError("bad_argument", f"source_path={path!r} must be a non-empty path string",
                                argument="source_path", value=repr(path))
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise _read_error(exc, name) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentJobError("unreadable", f"{name} is not a regular file", path=name)
        if st.st_size == 0:
            _refuse_pseudo_file(fd, name)
        if st.st_size > max_bytes:
            raise PermanentJobError("too_large", f"{name} is {st.st_size} bytes, more than the {max_bytes} allowed",
                                    path=name, bytes=st.st_size, limit=max_bytes)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            yield f
        except OSError as exc:
            if exc.errno is None:
                raise
            raise _read_error(exc, name) from None


def read_source(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, with the checks and errors of :func:`open_source`."""
    with open_source(path, max_bytes=max_bytes) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(size + 1)  # one exact buffer (asking for more allocates all of it)
        if len(data) > size:  # it grew while we read: read on, up to the limit
            data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise PermanentJobError("too_large", f"{path} is more than {max_bytes} bytes", path=str(path),
                                limit=max_bytes)
    return data


def _refuse_pseudo_file(fd: int, name: str) -> None:
    """A regular file that reports 0 bytes yet can be read (or fails to read) is a kernel file
    (``/proc``, ``/sys``): its size is not its content, and reading it again will not make it an
    image, so it is ``unreadable`` at once instead of a read error to retry. A really empty file
    reads as empty and is left to the decoder (``corrupt_image``)."""
    try:
        head: bytes | OSError = os.pread(fd, 1, 0)
    except OSError as exc:
        head = exc
    if head:
        what = "has content" if isinstance(head, bytes) else f"cannot be read ({head.strerror})"
        raise PermanentJobError("unreadable", f"{name} is not an ordinary file: it reports 0 bytes but {what}, as "
                                "/proc and /sys files do", path=name)


def _read_error(exc: OSError, name: str) -> Exception:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PermanentJobError("missing_file", f"no such file: {name}", path=name)
    if exc.errno in _PERMANENT_READ_ERRNOS:
        return PermanentJobError("unreadable", f"cannot read {name}: {exc.strerror}", path=name, errno=exc.errno)
    return TransientJobError("read_error", f"reading {name} failed: {exc}", path=name, errno=exc.errno)


# -- decode -----------------------------------------------------------------------------------------
@dataclass
class Source:
    """A decoded source image, ready to render outputs from.

    ``image`` is in the file's stored frame (before EXIF orientation), possibly at a JPEG draft scale,
    in mode L, LA, RGB, RGBA or CMYK; ``box`` is the region of ``image`` that covers the whole picture.
    ``width``/``height`` are the full-resolution size as displayed (orientation applied).
    """

    image: Image.Image
    box: tuple[float, float, float, float]
    width: int
    height: int
    format: str
    mode: str
    orientation: int
    icc_profile: bytes | None
    animated: bool
    bytes: int
    reducing_gap: float | None = 2.0

    def info(self) -> dict[str, Any]:
        """Plain-data facts about the source (for job results)."""
        return {"width": self.width, "height": self.height, "format": self.format.lower(), "mode": self.mode,
                "orientation": self.orientation, "animated": self.animated, "bytes": self.bytes,
                "icc_profile": self.icc_profile is not None}


def probe(data: bytes | BinaryIO, *, max_pixels: int | None = None, name: str = "<bytes>") -> dict[str, Any]:
    """Facts from the header only (no pixel decoding): displayed size, format, mode, orientation.

    ``data``: the file's bytes, or a seekable binary file (see :func:`open_source`). Same checks
    and errors as :func:`decode` except those only pixel data can reveal (truncation).
    """
    fp, size_bytes = _input(data)
    with _image_errors(fp, size_bytes, name):
        im = _open(fp, max_pixels)
        orientation = _orientation(im)
        size = (im.height, im.width) if orientation >= 5 else im.size
        return {"width": size[0], "height": size[1], "format": str(im.format).lower(), "mode": im.mode,
                "orientation": orientation, "bytes": size_bytes}


def decode(
    data: bytes | BinaryIO,
    boxes: list[tuple[int, int]] | None = None,
    *,
    reducing_gap: float | None = 2.0,
    max_pixels: int | None = None,
    name: str = "<bytes>",
) -> Source:
    """Decode ``data`` once, at a scale good enough for outputs fitting each of ``boxes``.

    For JPEG, ``draft()`` picks the smallest DCT scale (1/2, 1/4, 1/8) whose result is still at least
    ``reducing_gap`` times the largest output (``None``: full decode). ``max_pixels`` (default
    Pillow's ``Image.MAX_IMAGE_PIXELS``) caps width x height; beyond it, or when Pillow's
    decompression-bomb guard fires, ``too_large``. ``data``: bytes or a seekable binary file.
    """
    fp, size_bytes = _input(data)
    with _image_errors(fp, size_bytes, name):
        im = _open(fp, max_pixels)
        fmt, mode = str(im.format), im.mode
        orientation = _orientation(im)
        animated = _is_animated(im)  # before load(): finding out seeks, and seeking back unloads
        oriented = (im.height, im.width) if orientation >= 5 else im.size
        box: tuple[float, float, float, float] = (0.0, 0.0, float(im.width), float(im.height))
        if boxes and reducing_gap and fmt in ("JPEG", "MPO"):
            target = max((fit_size(oriented, b) for b in boxes), key=lambda s: s[0] * s[1])
            stored = (target[1], target[0]) if orientation >= 5 else target
            drafted = im.draft(None, (int(stored[0] * reducing_gap), int(stored[1] * reducing_gap)))
            if drafted is not None:
                box = tuple(float(v) for v in drafted[1])  # type: ignore[assignment]
        im.load()  # the first frame only; after this the pixels no longer need the file
        icc = im.info.get("icc_profile") or None
    image = _normalise_mode(im)
    return Source(image, box, oriented[0], oriented[1], fmt, mode, orientation, icc, animated, size_bytes,
                  reducing_gap)


def _input(data: bytes | BinaryIO) -> tuple[BinaryIO, int]:
    """A seekable binary file and its size in bytes, from bytes or a file."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data), len(data)
    data.seek(0, os.SEEK_END)
    size = data.tell()
    data.seek(0)
    return data, size


def _open(fp: BinaryIO, max_pixels: int | None) -> Image.Image:
    im = Image.open(fp, formats=INPUT_FORMATS)
    check_pixels(im, max_pixels)
    return im


def check_pixels(im: Image.Image, max_pixels: int | None = None) -> None:
    """Raise Pillow's ``DecompressionBombError`` when the opened (not yet decoded) ``im`` has more than
    ``max_pixels`` pixels (default: Pillow's ``Image.MAX_IMAGE_PIXELS``, mediaq's
    ``MEDIAQ_MAX_IMAGE_PIXELS`` default too). Opening reads the header only, so nothing was decoded."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and im.width * im.height > limit:
        raise Image.DecompressionBombError(f"{im.width}x{im.height} is more than the {limit} pixels allowed")


@contextlib.contextmanager
def _image_errors(fp: BinaryIO, size: int, name: str) -> Iterator[None]:
    """Turn whatever Pillow raises about the data in ``fp`` into a PermanentJobError with a stable
    code; an ``OSError`` with an errno is the file system's, re-raised for :func:`open_source`."""
    if not size:
        raise PermanentJobError("corrupt_image", f"{name} is empty (0 bytes)", path=name, bytes=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd metadata are not failures...
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # ...but its bomb guard is
            yield
    except JobFailure:  # ours (a remote read that failed, say): already said what went wrong
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentJobError("too_large", f"{name} is too large to decode safely "
                                f"(decompression bomb guard): {exc}", path=name) from None
    except UnidentifiedImageError:
        raise _unidentified(fp, name) from None
    except MemoryError:
        raise PermanentJobError("too_large", f"{name} needs more memory to decode than is available",
                                path=name) from None
    except OSError as exc:
        if exc.errno is not None:  # the disk's, not the data's: open_source maps it
            raise
        raise _decode_error(exc, name) from None
    except Exception as exc:  # any other failure inside this block is about the data
        raise _decode_error(exc, name) from None


def _is_animated(im: Image.Image) -> bool:
    try:
        return bool(getattr(im, "is_animated", False))
    except Exception:  # a broken second frame must not cost the first
        im.seek(0)
        return False


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not cost the picture
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


#: signatures of the formats we read: such a file that Pillow cannot parse is corrupt, not "not an image"
_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP", b"\x00\x00\x00\x0cjP  ": "JPEG2000"}


def _unidentified(fp: BinaryIO, name: str) -> PermanentJobError:
    fp.seek(0)
    head = fp.read(1024)
    kind = None
    known = next((fmt for sig, fmt in _SIGNATURES.items() if head.startswith(sig)), None)
    if known is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        known = "WEBP"
    if known is None and head[4:12] in (b"ftypavif", b"ftypavis"):
        known = "AVIF"
    if known:
        return PermanentJobError("corrupt_image", f"{name} starts like a {known} file but cannot be read: "
                                 "corrupt or truncated", path=name, format=known)
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1", b"ftypheim", b"ftypheis"):
        kind = "HEIF"
    elif head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        kind = "JPEG XL"
    elif b"<svg" in head.lower():
        kind = "SVG"
    else:
        try:  # can Pillow read it with a format we chose not to allow?
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kind = Image.open(fp).format
        except Exception:
            kind = None
    if kind:
        return PermanentJobError("unsupported_format", f"{name} is a {kind} image, which is not supported "
                                 f"(supported: {', '.join(INPUT_FORMATS)})", path=name, format=kind)
    return PermanentJobError("not_an_image", f"{name} is not an image file (starts with {head[:16]!r})", path=name)


def _decode_error(exc: Exception, name: str) -> PermanentJobError:
    text = str(exc)
    if "not available" in text or "not supported" in text.lower() or "unsupported" in text.lower():
        return PermanentJobError("unsupported_format", f"{name} cannot be decoded: {text}", path=name)
    if "too large" in text.lower() or "too much memory" in text.lower():
        return PermanentJobError("too_large", f"{name}: {text}", path=name)
    if "truncated" in text:
        return PermanentJobError("corrupt_image", f"{name} is truncated: {text}", path=name)
    return PermanentJobError("corrupt_image", f"{name} is corrupt: {type(exc).__name__}: {text}", path=name)


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit L, LA, RGB, RGBA or CMYK (alpha and palette transparency kept)."""
    mode = im.mode
    if mode in ("L", "RGB", "RGBA", "LA", "CMYK"):
        if mode in ("L", "RGB") and "transparency" in im.info:
            return im.convert("RGBA" if mode == "RGB" else "LA")
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        return im.convert("RGBA" if im.has_transparency_data else "RGB")
    if mode in ("La", "RGBa"):
        return im.convert(mode[:-1] + "A")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_8bit(np.asarray(im), mode))
    if mode == "LAB":
        return ImageCms.applyTransform(im, _lab_transform())  # type: ignore[return-value]
    return im.convert("RGB")  # RGBX, YCbCr, HSV, ...


def _to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit int or float greyscale -> uint8.

    ``I;16*`` scales 0..65535. ``I`` already in 0..255 is kept, in 0..65535 is scaled as 16-bit;
    ``F`` in 0..1 is scaled by 255, in 0..255 kept; anything else is stretched min..max.
    """
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        a = a * 255.0
    elif not (lo >= 0 and hi <= 255):
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# -- colour -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=1)
def _lab_transform() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), _srgb(), "LAB", "RGB")


@functools.lru_cache(maxsize=32)
def _icc_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from the embedded profile to sRGB for ``mode``, or None if the profile does not fit."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        wanted = {"L": "GRAY", "LA": "GRAY", "RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}[mode]
        if space != wanted:
            return None
        out_mode = {"L": "RGB", "LA": "RGBA", "CMYK": "RGB"}.get(mode, mode)
        return ImageCms.buildTransform(profile, _srgb(), mode, out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError, KeyError, TypeError):
        return None  # a broken profile is ignored, never fatal


def to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert ``im`` from its embedded profile ``icc`` to sRGB; CMYK always ends as RGB.

    A profile that is broken or does not match the mode is ignored (naive conversion for CMYK).
    Greyscale stays greyscale.
    """
    transform = _icc_transform(bytes(icc), im.mode) if icc else None
    if transform is not None:
        out = ImageCms.applyTransform(im, transform)
        assert out is not None
        if im.mode in ("L", "LA"):  # grey through sRGB: channels are equal, keep one
            out = out.convert(im.mode)
        return out
    return im.convert("RGB") if im.mode == "CMYK" else im


# -- render and encode ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """An encoded output image."""

    data: bytes
    width: int
    height: int
    format: str

    @property
    def ext(self) -> str:
        return OUTPUT_FORMATS[self.format][1]


def render(source: Source, box: tuple[int, int]) -> Image.Image:
    """The upright sRGB picture of ``source`` fitted within ``box`` (mode L, LA, RGB or RGBA)."""
    size = fit_size((source.width, source.height), box)
    stored = (size[1], size[0]) if source.orientation >= 5 else size
    im = source.image
    full = (0.0, 0.0, float(im.width), float(im.height))
    if im.size != stored or source.box != full:
        im = im.resize(stored, Image.Resampling.LANCZOS, box=source.box, reducing_gap=source.reducing_gap)
    im = to_srgb(im, source.icc_profile)
    if source.orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[source.orientation])
    return im


def encode(im: Image.Image, fmt: str = "jpeg", quality: int = 87) -> bytes:
    """Encode ``im`` (L, LA, RGB or RGBA). JPEG: alpha flattened on white; PNG/WebP keep it.

    No metadata (EXIF, ICC, text) is written; the same pixels and options give the same bytes.
    """
    fmt = check_format(fmt)
    quality = check_quality(quality)
    buf = io.BytesIO()
    if fmt == "jpeg":
        if im.mode in ("LA", "RGBA"):  # flatten on white
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im.convert("RGBA")).convert(im.mode[:-1])
        # no optimize=True: its second Huffman pass doubles the encode time (13 ms more for a 2560 px
        # variant) for files 0.8-3.5% smaller (issue 17)
        im.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        im.save(buf, "PNG", compress_level=6)
    else:
        if im.mode in ("L", "LA"):
            im = im.convert("RGBA" if im.mode == "LA" else "RGB")
        im.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def render_outputs(source: Source, specs: Mapping[str, OutputSpec]) -> dict[str, Output]:
    """Render and encode every spec from one decoded ``source``, largest output first.

    An output at most half the size (each side, give or take one pixel of rounding) of one already
    rendered is resized from the smallest such output instead of from the source: the cascade
    large -> medium -> thumbnail resizes far fewer pixels, and colour and orientation are done once.
    Each output stays above 45 dB against a LANCZOS resize of the full decode (48.6-54 dB on photos
    of 2700 to 6000 px; ``tests/test_image_jobs.py`` checks it).

    >>> source = decode(read_source("data/astronaut.jpg"))
    >>> outs = render_outputs(source, {"t": OutputSpec((64, 64)), "m": OutputSpec((256, 256))})
    >>> [(k, o.width, o.height) for k, o in outs.items()]
    [('t', 64, 64), ('m', 256, 256)]
    """
    sizes = {key: fit_size((source.width, source.height), spec.box) for key, spec in specs.items()}
    rendered: list[Image.Image] = []  # largest first
    out = {}
    for key in sorted(specs, key=lambda k: sizes[k][0] * sizes[k][1], reverse=True):
        size = sizes[key]
        parent = next((im for im in reversed(rendered) if im.width + 1 >= CASCADE_FACTOR * size[0]
                       and im.height + 1 >= CASCADE_FACTOR * size[1]), None)  # + 1: sizes are rounded
        if parent is None:
            im = render(source, specs[key].box)
        else:
            im = parent.resize(size, Image.Resampling.LANCZOS, reducing_gap=source.reducing_gap)
        rendered.append(im)
        out[key] = Output(encode(im, specs[key].format, specs[key].quality), im.width, im.height, specs[key].format)
    return {key: out[key] for key in specs}


def thumbnail(
    data: bytes,
    box: tuple[int, int] = (250, 200),
    *,
    format: str = "jpeg",
    quality: int = 87,
    reducing_gap: float | None = 2.0,
    max_pixels: int | None = None,
    name: str = "<bytes>",
) -> tuple[Output, dict[str, Any]]:
    """Decode ``data`` and make one thumbnail fitting ``box``; returns it and the source facts."""
    spec = OutputSpec(box, check_format(format), check_quality(quality))
    source = decode(data, [box], reducing_gap=reducing_gap, max_pixels=max_pixels, name=name)
    return render_outputs(source, {"out": spec})["out"], source.info()
