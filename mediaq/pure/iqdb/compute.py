"""IQDB image signatures, bit for bit as the danbooru/iqdb server computes them (DESIGN.md section 4).

Pure numpy and Pillow: no arq, no Redis. The steps, each exact:

1. decode the JPEG to 8-bit RGB (:func:`decode_rgb`; grayscale becomes three equal channels);
2. resize to 128x128 as libgd 2.3's ``gdImageCopyResampled`` does, in IEEE single precision
   (:func:`resize_gd`; an image already 128x128 is used as is);
3. YIQ in doubles, evaluated left to right (:func:`rgb_to_yiq`);
4. the standard 2-D Haar transform with the literal 0.7071 scale (:func:`haar2d`);
5. per channel the 40 largest coefficients with ``std::priority_queue`` tie behaviour
   (:func:`top_coefficients`).

>>> import numpy as np
>>> sig = signature_from_rgb(np.full((200, 250, 3), 128, np.uint8))
>>> sig.is_grayscale, sig.sig[0][:3].tolist(), len(sig.hash)
(True, [-40, -39, -38], 533)
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mediaq.errors import ImageTooLargeError, InvalidImageError
from mediaq.pure.iqdb.signature import NUM_COEFS, NUM_PIXELS, Signature, looks_like_hash, parse_hash
from mediaq.pure.iqdb.stdheap import PriorityQueue

__all__ = [
    "ImageInput",
    "as_signature",
    "compute_signature",
    "decode_rgb",
    "haar2d",
    "mirror_signature",
    "resize_gd",
    "rgb_to_yiq",
    "signature_from_rgb",
    "to_jpeg_bytes",
    "top_coefficients",
]

HAAR_SCALE = 0.7071  # the server's literal 1/sqrt(2)
_F32 = np.float32

ImageInput = bytes | bytearray | memoryview | str | Path | Any  # Any: a PIL.Image.Image


# -- step 1: decode -------------------------------------------------------------------------------

_EOI = b"\xff\xd9"


def _open(data: ImageInput, max_pixels: int | None = None) -> Any:
    """The decoded image, refused from its header when it has more than ``max_pixels`` pixels.

    A JPEG whose data ends early decodes as libjpeg finishes it for the server (libgd's reader): its
    data source inserts an end-of-image marker, and the blocks never reached come out mid-grey.
    """
    from PIL import Image

    from mediaq.pure.imaging import check_pixels

    if isinstance(data, Image.Image):
        _checked(check_pixels, data, max_pixels)
        return data
    raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else Path(data).read_bytes()
    try:
        return _decode(raw, max_pixels)
    except InvalidImageError as exc:
        if raw[:2] != b"\xff\xd8" or "truncated" not in str(exc) or raw.endswith(_EOI):
            raise
        return _decode(raw + _EOI, max_pixels)


def _decode(raw: bytes, max_pixels: int | None) -> Any:
    from PIL import Image, UnidentifiedImageError

    from mediaq.pure.imaging import check_pixels

    def decode() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is check_pixels'
            img = Image.open(io.BytesIO(raw))
        check_pixels(img, max_pixels)
        img.load()
        return img

    try:
        return _checked(decode)
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"cannot decode image: {exc}") from exc


def _checked(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with Pillow's decompression-bomb errors as :class:`ImageTooLargeError`."""
    from PIL import Image

    try:
        return fn(*args)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely: {exc} (MEDIAQ_MAX_IMAGE_PIXELS)") from None


def decode_rgb(data: ImageInput, *, max_pixels: int | None = None) -> np.ndarray:
    """Decoded pixels as an ``(H, W, 3)`` uint8 array, as libgd's JPEG reader gives them.

    Grayscale is expanded to three equal channels; CMYK uses libgd's integer formula
    ``(255 - c) * (255 - k) // 255``. Other modes are converted by Pillow (only JPEG input is
    guaranteed to match the server, which accepts nothing else). More than ``max_pixels`` pixels
    (default Pillow's 89,478,485, as ``MEDIAQ_MAX_IMAGE_PIXELS``) raises :class:`ImageTooLargeError`
    from the header, before decoding.
    """
    img = _open(data, max_pixels)
    if img.mode == "L":
        gray = np.asarray(img, dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode == "CMYK":
        cmyk = np.asarray(img, dtype=np.int32)
        k = 255 - cmyk[:, :, 3:4]
        return ((255 - cmyk[:, :, :3]) * k // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def to_jpeg_bytes(data: ImageInput, quality: int = 95, *, max_pixels: int | None = None) -> bytes:
    """The image as JPEG bytes: JPEG input passes through untouched, anything else is converted.

    IQDB servers accept JPEG only, and the embedded index applies the same conversion, so both
    backends give the same hash for a PNG thumbnail. Every input is checked against ``max_pixels``
    (see :func:`decode_rgb`) from its header first, JPEG included: a server would decode it.
    """

    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif isinstance(data, (str, Path)):
        raw = Path(data).read_bytes()
    else:
        raw = b""
    if raw[:2] == b"\xff\xd8":
        _header_check(raw, max_pixels)
        return raw
    img = _open(raw if raw else data, max_pixels)
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _header_check(raw: bytes, max_pixels: int | None) -> None:
    """:class:`ImageTooLargeError` if the header of ``raw`` declares more than ``max_pixels`` (nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    from mediaq.pure.imaging import check_pixels

    def header() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            check_pixels(Image.open(io.BytesIO(raw)), max_pixels)

    try:
        _checked(header)
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass  # not for this check to judge: the decoder (here or on a server) says what is wrong


# -- step 2: libgd resize ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=128)
def _axis_table(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index of 128: the (source index, float32 portion) entries libgd visits, in order.

    Rows are padded with (0, 0.0) entries, which add exact zeros and so change nothing.
    """
    entries: list[list[tuple[int, np.float32]]] = []
    one = _F32(1.0)
    for o in range(NUM_PIXELS):
        s1 = _F32(_F32(o * length) / _F32(NUM_PIXELS))
        s2 = _F32(_F32((o + 1) * length) / _F32(NUM_PIXELS))
        s = s1
        row = []
        while True:
            if math.floor(s) == math.floor(s1):
                portion = _F32(one - _F32(s - _F32(math.floor(s))))
                span = _F32(s2 - s1)
                if portion > span:
                    portion = span
                s = _F32(math.floor(s))
            elif s == _F32(math.floor(s2)):
                portion = _F32(s2 - _F32(math.floor(s2)))
            else:
                portion = one
            row.append((int(s), portion))
            s = _F32(s + one)
            if not s < s2:
                break
        entries.append(row)
    width = max(len(r) for r in entries)
    index = np.zeros((NUM_PIXELS, width), np.intp)
    portion = np.zeros((NUM_PIXELS, width), _F32)
    for o, row in enumerate(entries):
        for j, (i, p) in enumerate(row):
            index[o, j] = i
            portion[o, j] = p
    index.setflags(write=False)
    portion.setflags(write=False)
    return index, portion


@functools.lru_cache(maxsize=8)
def _geometry(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For one source size: per (row entry, column entry) pass, the flat source index and the
    float32 weight ``a = f32(127 * f32(yportion * xportion))`` of every output pixel, in the C loop's
    order; and the per-pixel ``weight_sum`` and ``alpha_sum / weight_sum``, which depend on the
    geometry only (accumulated in the same order, in float32)."""
    iy, py = _axis_table(height)
    ix, px = _axis_table(width)
    passes = iy.shape[1] * ix.shape[1]
    index = np.empty((passes, NUM_PIXELS, NUM_PIXELS), np.intp)
    weight = np.empty((passes, NUM_PIXELS, NUM_PIXELS), _F32)
    alpha_sum = np.zeros((NUM_PIXELS, NUM_PIXELS), _F32)
    weight_sum = np.zeros((NUM_PIXELS, NUM_PIXELS), _F32)
    k = 0
    for jy in range(iy.shape[1]):
        for jx in range(ix.shape[1]):
            w = py[:, jy, None] * px[None, :, jx]  # f32(yportion * xportion)
            a = _F32(127) * w  # f32(127 * w)
            index[k] = iy[:, jy, None] * width + ix[None, :, jx]
            weight[k] = a
            alpha_sum += a
            weight_sum += w
            k += 1
    norm = alpha_sum / weight_sum
    for array in (index, weight, weight_sum, norm):
        array.setflags(write=False)
    return index, weight, weight_sum, norm


def resize_gd(rgb: np.ndarray) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 to 128x128 exactly as libgd 2.3's ``gdImageCopyResampled``.

    Float32 throughout, with the C loop's accumulation order per output pixel (source rows outer,
    columns inner). Vectorised over output pixels and channels: one pass per (row entry, column
    entry) pair; entries a pixel does not have are padded with weight 0, which adds exact zeros.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if height == NUM_PIXELS and width == NUM_PIXELS:
        return rgb
    index, weight, weight_sum, norm = _geometry(height, width)
    planes = np.ascontiguousarray(np.moveaxis(rgb, 2, 0)).reshape(3, height * width)
    acc = np.zeros((3, NUM_PIXELS, NUM_PIXELS), _F32)
    for k in range(index.shape[0]):
        acc += planes[:, index[k]] * weight[k]  # channel += f32(value * a), in order
    acc /= weight_sum  # channel /= weight_sum
    acc /= norm  # channel /= (alpha_sum / weight_sum)
    out = np.where(acc >= _F32(255.5), _F32(255), np.trunc(acc + _F32(0.5)))
    return np.ascontiguousarray(np.moveaxis(out.astype(np.uint8), 0, 2))


# -- steps 3 and 4: YIQ and Haar ---------------------------------------------------------------------

def rgb_to_yiq(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YIQ planes in float64, each product and sum rounded in the server's left-to-right order."""
    r, g, b = (rgb[:, :, k].astype(np.float64) for k in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    i = 0.596 * r - 0.275 * g - 0.321 * b
    q = 0.212 * r - 0.523 * g + 0.311 * b
    return y, i, q


def _haar_last_axis(a: np.ndarray) -> None:
    """In place: the 1-D pass on every row of ``a`` (the C code's loop, vectorised over rows)."""
    h = a.shape[-1]
    scale = 1.0
    while h > 1:
        half = h >> 1
        scale *= HAAR_SCALE
        even = a[..., 0:h:2]
        odd = a[..., 1:h:2]
        detail = (even - odd) * scale
        total = even + odd
        a[..., :half] = total
        a[..., half:h] = detail
        h = half
    a[..., 0] *= scale


def haar2d(plane: np.ndarray) -> np.ndarray:
    """The server's 2-D Haar transform of a 128x128 float64 plane (or a stack of them, ``(..., 128, 128)``):
    every row along x, then every column along y.

    Index ``i = y * 128 + x`` of the result is the server's coefficient i. The DC term is left as
    the transform leaves it (``avglf`` is ``result[0, 0] / (256 * 128)``).
    """
    a = np.array(plane, dtype=np.float64, copy=True)
    _haar_last_axis(a)
    at = np.ascontiguousarray(np.swapaxes(a, -1, -2))
    _haar_last_axis(at)
    return np.ascontiguousarray(np.swapaxes(at, -1, -2))


# -- step 5: selection ------------------------------------------------------------------------------

def _select_by_heap(magnitudes: np.ndarray) -> list[int]:
    """The server's selection simulated literally (used when ties make the kept set ambiguous): a
    ``std::priority_queue`` of ``(|c|, i)`` ordered by ``|c|`` alone, smallest on top."""
    d = magnitudes.tolist()
    heap: PriorityQueue[tuple[float, int]] = PriorityQueue(lambda a, b: a[0] > b[0])
    for i in range(1, NUM_COEFS + 1):
        heap.push((d[i], i))
    top = heap.top()[0]
    # Only values above the first top can ever enter; the top only grows.
    for i in (np.flatnonzero(magnitudes[NUM_COEFS + 1:] > top) + NUM_COEFS + 1).tolist():
        v = d[i]
        if v > heap.top()[0]:
            heap.pop()
            heap.push((v, i))
    return [i for _, i in heap.items]


def top_coefficients(coefs: np.ndarray) -> np.ndarray:
    """The 40 kept signed indices of one channel's 16384 coefficients, sorted ascending (int16).

    Largest ``|c|`` among indices 1..16383 with ``std::priority_queue`` tie semantics; +i when
    ``c > 0``, else -i.
    """
    flat = np.asarray(coefs, dtype=np.float64).reshape(-1)
    mags = np.abs(flat)
    # A lower bound of the 40th largest |c|: the 40th largest of the low-frequency 16x16 corner
    # (index 0 excluded). Only values at or above it can be kept, which are usually a few hundred.
    corner = mags.reshape(NUM_PIXELS, NUM_PIXELS)[:16, :16].reshape(-1)[1:]
    bound = np.partition(corner, corner.size - NUM_COEFS)[corner.size - NUM_COEFS]
    candidates = np.flatnonzero(mags[1:] >= bound) + 1
    values = mags[candidates]
    part = np.argpartition(values, values.size - NUM_COEFS)[values.size - NUM_COEFS:]
    threshold = values[part].min()
    if np.count_nonzero(values >= threshold) == NUM_COEFS:
        kept = candidates[part]  # no tie at the boundary: the set is unambiguous
    else:
        kept = np.asarray(_select_by_heap(mags), dtype=np.intp)
    signed = np.where(flat[kept] > 0, kept, -kept)
    return np.sort(signed.astype(np.int16))


# -- the whole pipeline -----------------------------------------------------------------------------

def _signature_from_resized(small: np.ndarray) -> tuple[Signature, np.ndarray]:
    coefs = haar2d(np.stack(rgb_to_yiq(small)))  # (3, 128, 128)
    coefs[:, 0, 0] /= 256 * 128
    avglf = tuple(float(v) for v in coefs[:, 0, 0])
    sig = np.stack([top_coefficients(coefs[c]) for c in range(3)])
    return Signature(avglf, sig), coefs  # type: ignore[arg-type]


def signature_from_rgb(rgb: np.ndarray) -> Signature:
    """The signature of decoded ``(H, W, 3)`` uint8 pixels (steps 2 to 5)."""
    return _signature_from_resized(resize_gd(rgb))[0]


def compute_signature(data: ImageInput, *, max_pixels: int | None = None) -> Signature:
    """The server's signature of an image (JPEG bytes, a path, or a PIL image).

    Non-JPEG input is converted to JPEG first, as a client must before sending it to a server. More
    than ``max_pixels`` pixels raises :class:`ImageTooLargeError` before anything is decoded.

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (250, 200), (200, 30, 30)).save(buf, "JPEG")
    >>> compute_signature(buf.getvalue()).is_grayscale
    False
    """
    from PIL import Image

    if isinstance(data, Image.Image):
        data = to_jpeg_bytes(data, max_pixels=max_pixels)
    elif isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if bytes(data[:2]) != b"\xff\xd8":
        data = to_jpeg_bytes(data, max_pixels=max_pixels)
    return signature_from_rgb(decode_rgb(data, max_pixels=max_pixels))


# -- beyond the reference server: mirrored queries ------------------------------------------------------

def _mirror_table() -> np.ndarray:
    """x -> x' such that the Haar row coefficient x of a mirrored row is -(coefficient x') (x' = 0 -> 0)."""
    table = np.zeros(NUM_PIXELS, np.int32)
    h = NUM_PIXELS
    while h > 1:
        m = h // 2
        for x in range(m, h):
            table[x] = 3 * m - 1 - x
        h = m
    return table


_MIRROR_X = _mirror_table()


def mirror_signature(sig: Signature) -> Signature:
    """The signature of the horizontally mirrored image, derived from the signature alone.

    Mirroring a row reverses each Haar level and negates its details exactly (IEEE sums commute
    and differences negate exactly), so coefficient (y, x) moves to (y, x') and changes sign when
    x > 0. The DC terms do not change. Works for hashes too, at no image cost.

    >>> s = signature_from_rgb(np.arange(128 * 128 * 3, dtype=np.uint32).reshape(128, 128, 3).astype(np.uint8))
    >>> mirror_signature(mirror_signature(s)) == s
    True
    """
    idx = sig.sig.astype(np.int32)
    mag = np.abs(idx)
    y, x = np.divmod(mag, NUM_PIXELS)
    new = y * NUM_PIXELS + _MIRROR_X[x]
    sign = np.sign(idx) * np.where(x > 0, -1, 1)
    return Signature(sig.avglf, (sign * new).astype(np.int16))


def as_signature(value: Signature | str | ImageInput, *, max_pixels: int | None = None) -> Signature:
    """A signature from a :class:`Signature`, an ``iqdb_`` hash, or an image (bytes, path, PIL)."""
    if isinstance(value, Signature):
        return value
    if looks_like_hash(value):
        return parse_hash(value)  # type: ignore[arg-type]
    return compute_signature(value, max_pixels=max_pixels)
