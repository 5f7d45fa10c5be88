"""IQDB signatures against a literal, scalar transcription of DESIGN.md section 4.

There is no reference IQDB server on this machine, so the golden values are derived, not copied:

* ``_ref_signature`` below is a slow, literal transcription of the spec's text (and of the server's
  C loops it describes): plain Python loops, one pixel and one coefficient at a time, float32
  arithmetic emulated by rounding every single-precision operation with ``struct`` (exact: a
  float32 +, -, *, / computed in double then rounded once equals the float32 result), doubles as
  Python floats, and its own port of libstdc++'s ``push_heap``/``pop_heap``. It shares no code with
  :mod:`mediaq.pure.iqdb.compute` (which is vectorised with per-axis tables and a tie fast path).
  The vectorised implementation must agree with it bit for bit on every hash.
* The uniform-image hash is derived by hand from the spec (every detail coefficient is exactly 0,
  so the heap keeps indices 1..40, all stored negative; the DC term is a short closed form).
* ``GOLDEN`` pins the hashes of two deterministic integer-formula images (no RNG, no codec, so the
  input pixels are identical everywhere), computed by the literal reference when this test was
  written; they guard against regressions in both implementations.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest
from helpers import png_header
from PIL import Image

from mediaq.errors import ImageTooLargeError, InvalidImageError
from mediaq.pure.iqdb import compute as S
from mediaq.pure.iqdb.signature import Signature, format_hash

# ----------------------------------------------------------------------------------------------
# The literal reference
# ----------------------------------------------------------------------------------------------

_pack, _unpack = struct.Struct("<f").pack, struct.Struct("<f").unpack


def f32(x: float) -> float:
    """Round a Python float to the nearest IEEE single (ties to even)."""
    return _unpack(_pack(x))[0]


def _ref_axis(o: int, length: int) -> list[tuple[int, float]]:
    """The spec's per-axis loop for output index o (all values float32)."""
    s1 = f32(f32(o * length) / 128)
    s2 = f32(f32((o + 1) * length) / 128)
    s = s1
    out = []
    while True:
        if math.floor(s) == math.floor(s1):
            portion = f32(1.0 - f32(s - math.floor(s)))
            if portion > f32(s2 - s1):
                portion = f32(s2 - s1)
            s = float(math.floor(s))
        elif s == math.floor(s2):
            portion = f32(s2 - math.floor(s2))
        else:
            portion = 1.0
        out.append((int(s), portion))
        s = f32(s + 1.0)
        if not s < s2:
            return out


def _ref_resize(rgb: np.ndarray) -> list[list[list[int]]]:
    height, width = rgb.shape[:2]
    pixels = rgb.tolist()
    if (height, width) == (128, 128):
        return pixels
    ys = [_ref_axis(o, height) for o in range(128)]
    xs = [_ref_axis(o, width) for o in range(128)]
    out = []
    for oy in range(128):
        row = []
        for ox in range(128):
            channel = [0.0, 0.0, 0.0]
            alpha_sum = 0.0
            weight_sum = 0.0
            for sy, yportion in ys[oy]:
                for sx, xportion in xs[ox]:
                    w = f32(yportion * xportion)
                    a = f32(127 * w)
                    value = pixels[sy][sx]
                    for k in range(3):
                        channel[k] = f32(channel[k] + f32(value[k] * a))
                    alpha_sum = f32(alpha_sum + a)
                    weight_sum = f32(weight_sum + w)
            alpha_sum = f32(alpha_sum / weight_sum)
            px = []
            for k in range(3):
                c = f32(f32(channel[k] / weight_sum) / alpha_sum)
                px.append(255 if c >= 255.5 else int(f32(c + 0.5)))
            row.append(px)
        out.append(row)
    return out


def _ref_haar_pass(a: list[float], start: int, step: int, n: int = 128) -> None:
    """In place: the server's 1-D pass over the ``n`` values ``a[start], a[start + step], ...``."""
    scale = 1.0
    h = n
    while h > 1:
        h1 = h >> 1
        scale *= 0.7071
        t = []
        for k in range(h1):
            j2 = start + 2 * k * step
            t.append((a[j2] - a[j2 + step]) * scale)
            a[start + k * step] = a[j2] + a[j2 + step]
        for k in range(h1):
            a[start + (h1 + k) * step] = t[k]
        h = h1
    a[start] *= scale


def _ref_haar(a: list[float]) -> None:
    """In place on a flat list of 128*128 doubles: rows, then columns, as the server's haar2D."""
    n = 128
    for i in range(0, n * n, n):
        _ref_haar_pass(a, i, 1)
    for i in range(n):
        _ref_haar_pass(a, i, n)


class _PriorityQueue:
    """``std::priority_queue<valStruct>`` whose ``operator<`` is ``d > other.d`` (libstdc++ algorithms)."""

    def __init__(self) -> None:
        self.c: list[tuple[float, int]] = []

    @staticmethod
    def _less(x: tuple[float, int], y: tuple[float, int]) -> bool:
        return x[0] > y[0]

    def _push_heap(self, hole: int, top: int, value: tuple[float, int]) -> None:
        c = self.c
        parent = (hole - 1) // 2
        while hole > top and self._less(c[parent], value):
            c[hole] = c[parent]
            hole = parent
            parent = (hole - 1) // 2
        c[hole] = value

    def push(self, value: tuple[float, int]) -> None:
        self.c.append(value)
        self._push_heap(len(self.c) - 1, 0, value)

    def top(self) -> tuple[float, int]:
        return self.c[0]

    def pop(self) -> None:
        c = self.c
        if len(c) > 1:
            last = len(c) - 1
            value = c[last]
            c[last] = c[0]
            length, hole, top, second = last, 0, 0, 0
            while second < (length - 1) // 2:
                second = 2 * (second + 1)
                if self._less(c[second], c[second - 1]):
                    second -= 1
                c[hole] = c[second]
                hole = second
            if (length & 1) == 0 and second == (length - 2) // 2:
                second = 2 * (second + 1)
                c[hole] = c[second - 1]
                hole = second - 1
            self._push_heap(hole, top, value)
        c.pop()


def _ref_largest(cdata: list[float]) -> list[int]:
    vq = _PriorityQueue()
    for i in range(1, 41):
        vq.push((abs(cdata[i]), i))
    for i in range(41, 128 * 128):
        d = abs(cdata[i])
        if d > vq.top()[0]:
            vq.pop()
            vq.push((d, i))
    sig = []
    while vq.c:
        i = vq.top()[1]
        sig.append(-i if cdata[i] <= 0 else i)
        vq.pop()
    return sorted(sig)


def _ref_hash(avglf: list[float], sig: list[list[int]]) -> str:
    text = "iqdb_" + "".join(format(struct.unpack(">Q", struct.pack(">d", v))[0], "016x") for v in avglf)
    return text + "".join(format(v & 0xFFFF, "04x") for channel in sig for v in channel)


def _ref_signature(rgb: np.ndarray) -> tuple[str, bool]:
    small = _ref_resize(rgb)
    planes: list[list[float]] = [[], [], []]
    for row in small:
        for r, g, b in row:
            r, g, b = float(r), float(g), float(b)
            planes[0].append(0.299 * r + 0.587 * g + 0.114 * b)
            planes[1].append(0.596 * r - 0.275 * g - 0.321 * b)
            planes[2].append(0.212 * r - 0.523 * g + 0.311 * b)
    avglf, sig = [], []
    for plane in planes:
        _ref_haar(plane)
        plane[0] /= 256 * 128
        avglf.append(plane[0])
        sig.append(_ref_largest(plane))
    return _ref_hash(avglf, sig), abs(avglf[1]) + abs(avglf[2]) < 6.0 / 1000


# ----------------------------------------------------------------------------------------------
# Deterministic test images (integer formulas only: identical on every machine)
# ----------------------------------------------------------------------------------------------

def pattern(height: int, width: int, seed: int = 0, gray: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    base = (x * 3 + y * 5 + seed * 17) % 256
    texture = ((x * x * 7 + y * y * 3 + x * y * (seed + 1)) ^ (x * 31 + y * 11)) % 97
    r = (base + texture) % 256
    if gray:
        return np.repeat(r[:, :, None], 3, axis=2).astype(np.uint8)
    g = (255 - base + (texture * 2) % 61) % 256
    b = ((x // 8 + y // 8 + seed) % 2) * 180 + (texture % 50)
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def jpeg_bytes(rgb: np.ndarray, quality: int = 87, mode: str = "RGB") -> bytes:
    img = Image.fromarray(rgb)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_crop() -> np.ndarray:
    """A real photo (data/coffee.jpg, CC0) cut to an odd 333x221, through a JPEG round trip."""
    from pathlib import Path

    with Image.open(Path(__file__).resolve().parent.parent / "data" / "coffee.jpg") as im:
        crop = im.convert("RGB").crop((101, 57, 434, 278))
    return S.decode_rgb(jpeg_bytes(np.asarray(crop), quality=80))


CASES = {
    "photo_333x221": photo_crop(),
    "thumb_250x200": pattern(200, 250, seed=1),
    "odd_97x61_upscale": pattern(61, 97, seed=2),
    "exact_128": pattern(128, 128, seed=3),
    "gray_300x129": pattern(129, 300, seed=4, gray=True),
    "tall_127x250": pattern(250, 127, seed=5),
}

GOLDEN = {
    "thumb_250x200": (
        "iqdb_3fdf6b059e5dfc933f91cf516cf827bbbf902f566157d1e1f879f8fbf979f9fbfa79fafbfb79fbfbfc7afc7bfcf3fcfafd76fd7a"
        "fdf6fdfa02010204028102840287028e030103040307030e0381038403870407040c04850488050705850607060f06850688070ff87a"
        "f8fcf97af9fcfa7afafcfb7afbfcfc78fc7bfc7dfcf8fcfbfcfdfd78fd7bfd7dfdfb02070209020c0287028c030203060307030c0386"
        "0387038c038f040604840506058406060684070607840787f270f87bf8f9f97bf9f9fa7bfaf9fb7bfbf9fc75fc7cfcfcfd75fd7cfdf5"
        "fdfbfdfc02020206020f02820286028f03060386038f0405040d04870505050d05870605060d068706890705078707890a10"
    ),
    "gray_300x129": (
        "iqdb_3fdffddf7ce5ccfabc7fe0cf7ca26032bc7152df8f297debfa7afbfafc76fc78fc79fc7afcf2fcf7fd71fd73fd7bfd7cfdf4fdf6"
        "fdf9fe73fe7bfe7c0105010601070187018c018e02040205020b020d028e0305030603070308030f03840389038b048506040687f87c"
        "f9fbfaf4faf9fb7bfc75fc77fc7cfcf1fcf8fcfafcfbfd72fd74fdf3fdf5fdfbfdfcfe79fef9fefafefb0109018401850207020a020c"
        "02840285028d028f0301030e038603870388038a048e23e7d0c4d634d711db68e13fe365edc5f1def743f979faf9fc7cfcf8fcf9fcfa"
        "fcfbfdf5fdfcfe79fef90109018401850207028402850286028f0309038603870388038a0390039d0599078e0ac51e4235b8"
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vectorised_signature_matches_literal_reference(name):
    rgb = CASES[name]
    ref_hash, ref_gray = _ref_signature(rgb)
    sig = S.signature_from_rgb(rgb)
    assert sig.hash == ref_hash
    assert sig.is_grayscale == ref_gray
    assert np.array_equal(S.resize_gd(rgb), np.asarray(_ref_resize(rgb), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_hashes(name):
    assert S.signature_from_rgb(CASES[name]).hash == GOLDEN[name]


def test_golden_hashes_are_the_literal_references():
    for name, expected in GOLDEN.items():
        assert _ref_signature(CASES[name])[0] == expected


def test_uniform_image_hash_derived_by_hand():
    """A uniform image: the resize returns the value itself, every Haar detail is exactly 0 (v - v),
    so all |c| tie at 0, the heap never replaces its first 40 entries (indices 1..40), and each is
    stored as -i (0 counts as non-positive). The DC term: each row sums to 128*y exactly, times C^7;
    each column of those sums to 128 times that exactly, times C^7; divided by 256*128."""
    v = 128
    y = 0.299 * v + 0.587 * v + 0.114 * v
    i = 0.596 * v - 0.275 * v - 0.321 * v
    q = 0.212 * v - 0.523 * v + 0.311 * v
    c7 = 1.0
    for _ in range(7):
        c7 *= 0.7071
    avglf = [(128 * ((128 * p) * c7)) * c7 / 32768 for p in (y, i, q)]
    expected = "iqdb_" + "".join(struct.pack(">d", a).hex() for a in avglf)
    expected += "".join(format(k & 0xFFFF, "04x") for k in range(-40, 0)) * 3
    sig = S.signature_from_rgb(np.full((200, 250, 3), v, np.uint8))
    assert sig.hash == expected
    assert sig.is_grayscale
    assert S.compute_signature(jpeg_bytes(np.full((200, 250, 3), v, np.uint8))).hash == expected


def test_exact_128_is_used_as_is():
    rgb = CASES["exact_128"]
    assert S.resize_gd(rgb) is rgb


def test_black_image_has_zero_luminance():
    sig = S.signature_from_rgb(np.zeros((50, 60, 3), np.uint8))
    assert sig.avglf == (0.0, 0.0, 0.0)
    assert sig.is_grayscale


def _tie_case(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if seed < 4:  # small integers: thousands of ties at the top value
        return rng.integers(-6, 7, size=128 * 128).astype(np.float64) * (0.25 if seed % 2 else 1.0)
    # The first 40 tie at 1.0; k later values of 2.0 each pop one of them: which one is popped is
    # decided by the heap's layout, not by index order.
    coefs = np.zeros(128 * 128)
    coefs[1:41] = rng.choice([-1.0, 1.0], 40)
    k = [1, 7, 20, 39, 25][seed - 4]
    coefs[rng.choice(np.arange(41, 16384), k, replace=False)] = 2.0
    return coefs


@pytest.mark.parametrize("seed", range(9))
def test_tie_selection_matches_priority_queue(seed):
    """Coefficient arrays full of exact ties at the boundary, where the kept indices depend on the
    heap's order of operations: the implementation's slow path must match the literal port."""
    coefs = _tie_case(seed)
    assert S.top_coefficients(coefs).tolist() == _ref_largest(coefs.tolist())


def test_tie_cases_do_discriminate():
    """The tie cases would catch a plausible wrong rule (keep the lowest indices among equals)."""
    differ = 0
    for seed in range(9):
        coefs = _tie_case(seed)
        order = np.argsort(-np.abs(coefs[1:]), kind="stable")[:40] + 1
        naive = sorted(int(i) if coefs[i] > 0 else -int(i) for i in order)
        differ += naive != _ref_largest(coefs.tolist())
    assert differ >= 3


@pytest.mark.parametrize("seed", range(3))
def test_fast_path_without_ties_matches_priority_queue(seed):
    coefs = np.random.default_rng(seed).normal(size=128 * 128)
    assert S.top_coefficients(coefs).tolist() == _ref_largest(coefs.tolist())


def test_grayscale_rule_and_grayscale_hash_keeps_iq_coefficients():
    gray = CASES["gray_300x129"]
    sig = S.compute_signature(jpeg_bytes(gray))
    assert sig.is_grayscale and sig.num_colors == 1
    # The I and Q planes are rounding residue, yet their coefficients are in the hash.
    assert abs(sig.avglf[1]) + abs(sig.avglf[2]) < 1e-6
    assert not np.array_equal(sig.sig[1], np.arange(-40, 0))
    colour = S.signature_from_rgb(CASES["thumb_250x200"])
    assert not colour.is_grayscale and colour.num_colors == 3


def test_grayscale_jpeg_decodes_to_equal_channels():
    gray = pattern(90, 120, seed=7)[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="JPEG", quality=90)
    rgb = S.decode_rgb(buf.getvalue())
    assert rgb.shape == (90, 120, 3)
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2])
    assert np.array_equal(rgb[:, :, 0], np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


def test_cmyk_jpeg_uses_libgd_formula():
    cmyk = Image.new("CMYK", (40, 30), (10, 200, 30, 60))
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    raw = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.int32)
    rgb = S.decode_rgb(buf.getvalue())
    c, m, yy, k = (raw[0, 0, j] for j in range(4))
    assert rgb[0, 0].tolist() == [(255 - c) * (255 - k) // 255, (255 - m) * (255 - k) // 255,
                                  (255 - yy) * (255 - k) // 255]


def test_non_jpeg_is_converted_to_jpeg_first():
    rgb = CASES["thumb_250x200"]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    png = buf.getvalue()
    jpeg = S.to_jpeg_bytes(png)
    assert jpeg[:2] == b"\xff\xd8"
    assert S.to_jpeg_bytes(jpeg) is jpeg or S.to_jpeg_bytes(jpeg) == jpeg
    assert S.compute_signature(png) == S.compute_signature(jpeg)
    assert S.compute_signature(Image.fromarray(rgb)) == S.compute_signature(jpeg)


def test_paths_and_bad_input(tmp_path):
    data = jpeg_bytes(CASES["thumb_250x200"])
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert S.compute_signature(path) == S.compute_signature(data) == S.compute_signature(str(path))
    with pytest.raises(InvalidImageError):
        S.compute_signature(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InvalidImageError):
        S.compute_signature(b"plain text")
    with pytest.raises(FileNotFoundError):
        S.compute_signature(tmp_path / "missing.jpg")


def test_mirror_signature_equals_signature_of_mirrored_pixels():
    """Exact for a 128x128 image (no resize): mirroring permutes and negates Haar coefficients."""
    rgb = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    sig = S.signature_from_rgb(rgb)
    flipped = S.signature_from_rgb(np.ascontiguousarray(rgb[:, ::-1]))
    assert S.mirror_signature(sig) == flipped
    assert S.mirror_signature(flipped) == sig
    assert S.mirror_signature(sig) != sig


def test_signature_properties():
    sig = S.signature_from_rgb(CASES["thumb_250x200"])
    assert sig.sig.dtype == np.int16 and sig.sig.shape == (3, 40)
    assert all(list(row) == sorted(row) for row in sig.sig.tolist())
    assert not np.any(sig.sig == 0)
    assert all(len(set(np.abs(row).tolist())) == 40 for row in sig.sig)  # an index is kept once
    assert 0 < sig.avglf[0] < 1
    assert Signature.from_dict(sig.to_dict()) == sig
    assert format_hash(sig) == sig.hash and len(sig.hash) == 533
    with pytest.raises(ValueError):
        Signature((0.0, 0.0, 0.0), np.zeros((3, 40), np.int16))


def test_the_pixel_limit_is_checked_from_the_header_on_every_decoding_path():
    """compute_signature, decode_rgb and to_jpeg_bytes refuse a picture over ``max_pixels`` (default:
    Pillow's 89,478,485, as MEDIAQ_MAX_IMAGE_PIXELS) before decoding it, with ``code == "too_large"``."""
    bomb = png_header(15000, 15000)  # 225 Mpx declared in 200 bytes
    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000), (200, 30, 30)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    for call in (S.compute_signature, S.decode_rgb, S.to_jpeg_bytes):
        with pytest.raises(ImageTooLargeError) as info:
            call(bomb)
        assert info.value.code == "too_large" and "MEDIAQ_MAX_IMAGE_PIXELS" in str(info.value)
        with pytest.raises(ImageTooLargeError):
            call(jpeg, max_pixels=1_000_000)
    assert S.compute_signature(jpeg, max_pixels=1_200_000).avglf == S.compute_signature(jpeg).avglf
    with pytest.raises(ImageTooLargeError):
        S.as_signature(jpeg, max_pixels=1000)


def test_a_truncated_jpeg_decodes_as_libjpeg_finishes_it():
    """The server indexes a truncated JPEG: libjpeg's data source inserts an end-of-image marker when
    the data runs out, and the blocks never reached decode as mid-grey. decode_rgb does the same (a
    hash equal to the server's); a JPEG cut inside its header still cannot be read."""
    rng = np.random.default_rng(4)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    cut = data[: len(data) * 6 // 10]
    rgb = S.decode_rgb(cut)
    assert rgb.shape == (200, 300, 3) and (rgb[-16:] == 128).all()
    assert S.compute_signature(cut) == S.compute_signature(cut + b"\xff\xd9")
    with pytest.raises(InvalidImageError):
        S.compute_signature(data[:100])
