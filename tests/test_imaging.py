"""The pure imaging pipeline: sizes, orientation, colour, every mode and format, bad input."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import png_header
from PIL import Image, ImageCms, features

from mediaq.errors import PermanentJobError, TransientJobError
from mediaq.pure import imaging

DATA = Path(__file__).resolve().parents[1] / "data"
QUADS = {"tl": (230, 20, 20), "tr": (20, 200, 20), "bl": (20, 20, 230), "br": (240, 240, 240)}


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_images", DATA / "generate_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_out(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def quadrants(w: int = 120, h: int = 80) -> np.ndarray:
    """An upright picture with four differently coloured quadrants (asymmetric in every direction)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = QUADS["tl"]
    a[: h // 2, w // 2 :] = QUADS["tr"]
    a[h // 2 :, : w // 2] = QUADS["bl"]
    a[h // 2 :, w // 2 :] = QUADS["br"]
    return a


def stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """What a camera stores for ``upright`` under EXIF ``orientation``, from the EXIF spec's words
    (where row 0 and column 0 of the stored picture are when displayed), independent of the code."""
    u = upright
    return {
        1: u,
        2: u[:, ::-1],  # row 0 top, column 0 right
        3: u[::-1, ::-1],  # row 0 bottom, column 0 right
        4: u[::-1, :],  # row 0 bottom, column 0 left
        5: u.transpose(1, 0, 2),  # row 0 left, column 0 top
        6: np.rot90(u, 1),  # row 0 right, column 0 top
        7: u[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
        8: np.rot90(u, -1),  # row 0 left, column 0 bottom
    }[orientation]


def with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def quad_means(a: np.ndarray) -> dict[str, np.ndarray]:
    h, w = a.shape[:2]
    mh, mw, ih, iw = h // 2, w // 2, h // 8, w // 8  # sample the inner part of each quadrant
    return {"tl": a[ih:mh - ih, iw:mw - iw].mean((0, 1)), "tr": a[ih:mh - ih, mw + iw:w - iw].mean((0, 1)),
            "bl": a[mh + ih:h - ih, iw:mw - iw].mean((0, 1)), "br": a[mh + ih:h - ih, mw + iw:w - iw].mean((0, 1))}


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- sizes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "box", "expected"), [
    ((3000, 2000), (250, 200), (250, 167)),
    ((2000, 3000), (250, 200), (133, 200)),
    ((250, 200), (250, 200), (250, 200)),
    ((100, 50), (250, 200), (100, 50)),  # never upscaled
    ((5000, 10), (250, 200), (250, 1)),  # never zero
    ((10, 5000), (250, 200), (1, 200)),
    ((1411, 1411), (1280, 1280), (1280, 1280)),
])
def test_fit_size(size, box, expected):
    assert imaging.fit_size(size, box) == expected


def test_thumbnail_of_a_real_photo_fits_and_keeps_aspect():
    out, info = imaging.thumbnail((DATA / "coffee.jpg").read_bytes(), (250, 200))
    im = decode_out(out.data)
    assert (im.format, im.size, im.mode) == ("JPEG", (250, 167), "RGB")
    assert (out.width, out.height, info["width"], info["height"]) == (250, 167, 600, 400)


def test_small_image_is_not_upscaled():
    data = save(Image.fromarray(quadrants(60, 40)), "PNG")
    out, _ = imaging.thumbnail(data, (250, 200), format="png")
    im = decode_out(out.data)
    assert im.size == (60, 40)
    assert np.array_equal(np.asarray(im), quadrants(60, 40))  # same pixels, lossless round trip


def test_jpeg_draft_path_meets_45_db_against_full_decode_lanczos():
    data = save(load_generator().photo_mosaic(3000, 2000, seed=11), "JPEG", quality=90)
    source = imaging.decode(data, [(250, 200)])
    assert source.image.size == (750, 500)  # drafted to 1/4: at least 2x the 250x167 target
    fast = imaging.render(source, (250, 200))
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((250, 167), Image.Resampling.LANCZOS)
    assert psnr(fast, full) >= 45.0


# -- orientation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright_lossless(orientation):
    upright = quadrants(120, 80)
    stored = Image.fromarray(np.ascontiguousarray(stored_for(upright, orientation)))
    data = save(stored, "PNG", exif=with_orientation(orientation))
    out, info = imaging.thumbnail(data, (500, 500), format="png")  # no resize: exact pixels
    assert info["orientation"] == orientation and (info["width"], info["height"]) == (120, 80)
    assert np.array_equal(np.asarray(decode_out(out.data)), upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_upright_through_jpeg_draft_and_resize(orientation):
    upright = quadrants(1200, 800)
    stored = Image.fromarray(np.ascontiguousarray(stored_for(upright, orientation)))
    data = save(stored, "JPEG", quality=95, exif=with_orientation(orientation))
    source = imaging.decode(data, [(250, 200)])
    assert source.image.size[0] < stored.size[0]  # the draft path was taken
    out = decode_out(imaging.encode(imaging.render(source, (250, 200)), "png"))
    assert out.size == (250, 167)
    for quad, mean in quad_means(np.asarray(out)).items():
        assert np.abs(mean - QUADS[quad]).max() < 6, (quad, mean)


def test_invalid_orientation_value_is_ignored():
    upright = quadrants(40, 20)
    data = save(Image.fromarray(upright), "PNG", exif=with_orientation(9))
    out, info = imaging.thumbnail(data, (100, 100), format="png")
    assert info["orientation"] == 1
    assert np.array_equal(np.asarray(decode_out(out.data)), upright)


# -- colour -----------------------------------------------------------------------------------------
def adobe_profile() -> bytes:
    icc = Image.open(DATA / "rocket.jpg").info["icc_profile"]
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).startswith("Adobe RGB")
    return icc


def adobe_to_srgb_by_hand(rgb: tuple[int, int, int]) -> np.ndarray:
    """Adobe RGB (1998) -> sRGB with the published matrices and curves (both D65), not with LCMS."""
    lin = (np.asarray(rgb, np.float64) / 255.0) ** (563 / 256)
    adobe_to_xyz = np.array([[0.5767309, 0.1855540, 0.1881852],
                             [0.2973769, 0.6273491, 0.0752741],
                             [0.0270343, 0.0706872, 0.9911085]])
    xyz_to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314],
                            [-0.9692660, 1.8760108, 0.0415560],
                            [0.0556434, -0.2040259, 1.0572252]])
    s = np.clip(xyz_to_srgb @ adobe_to_xyz @ lin, 0, 1)
    s = np.where(s <= 0.0031308, 12.92 * s, 1.055 * s ** (1 / 2.4) - 0.055)
    return s * 255.0


@pytest.mark.parametrize("colour", [(100, 150, 80), (200, 60, 40), (60, 90, 180)])
def test_embedded_adobe_rgb_profile_is_converted_to_srgb(colour):
    data = save(Image.new("RGB", (64, 48), colour), "PNG", icc_profile=adobe_profile())
    out, info = imaging.thumbnail(data, (250, 200), format="png")
    got = np.asarray(decode_out(out.data), np.float64)[10, 10]
    expected = adobe_to_srgb_by_hand(colour)
    assert info["icc_profile"] is True
    assert np.abs(got - expected).max() <= 2.5, (got, expected)
    assert np.abs(got - np.asarray(colour)).max() >= 8  # really converted, not passed through


def test_real_photo_with_adobe_rgb_profile_differs_from_ignoring_it():
    data = (DATA / "rocket.jpg").read_bytes()
    converted = decode_out(imaging.thumbnail(data, (250, 200), format="png")[0].data)
    raw = Image.open(io.BytesIO(data)).convert("RGB").resize(converted.size, Image.Resampling.LANCZOS)
    manual = ImageCms.profileToProfile(raw, ImageCms.ImageCmsProfile(io.BytesIO(adobe_profile())),
                                       ImageCms.createProfile("sRGB"))
    assert psnr(converted, manual) > psnr(converted, raw) + 3


def test_alpha_survives_icc_conversion():
    im = Image.new("RGBA", (32, 32), (100, 150, 80, 255))
    im.paste((100, 150, 80, 0), (0, 0, 16, 32))
    out, _ = imaging.thumbnail(save(im, "PNG", icc_profile=adobe_profile()), format="png")
    got = np.asarray(decode_out(out.data))
    assert got[5, 5, 3] == 0 and got[5, 25, 3] == 255


@pytest.mark.parametrize("icc", [b"not a profile at all", b"\x00" * 200])
def test_broken_icc_profile_is_ignored_not_fatal(icc):
    data = save(Image.new("RGB", (20, 20), (10, 120, 200)), "PNG", icc_profile=icc)
    out, _ = imaging.thumbnail(data, format="png")
    assert tuple(np.asarray(decode_out(out.data))[5, 5]) == (10, 120, 200)


def test_profile_of_the_wrong_colour_space_is_ignored():
    data = save(Image.new("L", (20, 20), 77), "PNG", icc_profile=adobe_profile())  # RGB profile on grey
    out, _ = imaging.thumbnail(data, format="png")
    im = decode_out(out.data)
    assert im.mode == "L" and im.getpixel((3, 3)) == 77


def test_cmyk_jpeg_with_its_profile_is_converted_through_it():
    """A CMYK JPEG with an embedded profile (tests/iccprofiles.py: every ink mix -> one CIELAB green)
    comes out as that green in sRGB everywhere; the naive conversion would follow the inks."""
    from iccprofiles import cmyk_profile

    ramp = Image.linear_gradient("L").resize((64, 48))
    cmyk = Image.merge("CMYK", [ramp.rotate(angle) for angle in (0, 90, 180, 270)])
    data = save(cmyk, "JPEG", icc_profile=cmyk_profile((60.0, -60.0, 50.0)), quality=95)
    out, info = imaging.thumbnail(data, (32, 24), format="png")
    got = np.asarray(decode_out(out.data), np.float64)
    assert info["mode"] == "CMYK" and info["icc_profile"] is True and got.shape == (24, 32, 3)
    # one colour everywhere, and a green one (its exact value depends on the perceptual intent's
    # black point handling in LittleCMS, as this profile's "black" is green too)
    assert got.std(axis=(0, 1)).max() < 1
    r, g, b = got[0, 0]
    assert g - max(r, b) > 50, got[0, 0]
    naive = np.asarray(cmyk.convert("RGB").resize((32, 24)), np.float64)
    assert naive.std(axis=(0, 1)).max() > 30  # what ignoring the profile would have given: not uniform


def test_cmyk_without_a_profile_is_converted_naively():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # full magenta + yellow: red
    out, _ = imaging.thumbnail(save(cmyk, "JPEG", quality=95), format="png")
    r, g, b = np.asarray(decode_out(out.data))[5, 5]
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize("level", [16, 64, 128, 200])
def test_grey_image_with_a_grey_profile_is_converted_and_stays_grey(level):
    """A greyscale PNG whose profile says "linear light" (tests/iccprofiles.py) gets the sRGB value of
    that luminance, and stays one channel."""
    from iccprofiles import gray_profile

    data = save(Image.new("L", (20, 20), level), "PNG", icc_profile=gray_profile(1.0))
    out, info = imaging.thumbnail(data, format="png")
    im = decode_out(out.data)
    lin = level / 255
    expected = (12.92 * lin if lin <= 0.0031308 else 1.055 * lin ** (1 / 2.4) - 0.055) * 255
    assert info["icc_profile"] is True and im.mode == "L"
    assert abs(im.getpixel((5, 5)) - expected) <= 2.5, (im.getpixel((5, 5)), expected)
    assert abs(expected - level) >= 20  # really converted, not passed through


# -- modes ------------------------------------------------------------------------------------------
def _modes() -> dict[str, tuple[bytes, str, tuple]]:
    """mode name -> (encoded file, expected output mode for PNG, expected PNG pixel at (2, 2))."""
    rgb = Image.new("RGB", (40, 30), (200, 100, 50))
    p_trans = Image.new("P", (40, 30), 1)
    p_trans.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p_trans.paste(0, (0, 0, 20, 30))
    la = Image.new("LA", (40, 30), (90, 255))
    la.paste((90, 0), (0, 0, 20, 30))
    rgba = Image.new("RGBA", (40, 30), (200, 100, 50, 255))
    rgba.paste((200, 100, 50, 0), (0, 0, 20, 30))
    one = Image.new("1", (40, 30), 1)
    one.paste(0, (0, 0, 20, 30))
    return {
        "1": (save(one, "PNG"), "L", (0,)),
        "L": (save(Image.new("L", (40, 30), 90), "PNG"), "L", (90,)),
        "LA": (save(la, "PNG"), "LA", (90, 0)),
        "P": (save(rgb.quantize(8), "PNG"), "RGB", None),
        "P+transparency": (save(p_trans, "PNG", transparency=0), "RGBA", (0, 0, 0, 0)),
        "P+transparency GIF": (save(p_trans, "GIF", transparency=0), "RGBA", (0, 0, 0, 0)),
        "RGB": (save(rgb, "PNG"), "RGB", (200, 100, 50)),
        "RGBA": (save(rgba, "PNG"), "RGBA", (200, 100, 50, 0)),
        "CMYK": (save(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "TIFF"), "RGB", (0, 255, 255)),
        "I;16": (save(Image.fromarray(np.full((30, 40), 32896, np.uint16)), "PNG"), "L", (128,)),
        "I": (save(Image.fromarray(np.full((30, 40), 65535, np.int32)), "TIFF"), "L", (255,)),
        "F": (save(Image.fromarray(np.full((30, 40), 0.5, np.float32)), "TIFF"), "L", (128,)),
        "LAB": (save(Image.new("LAB", (40, 30), (50, 128, 128)), "TIFF"), "RGB", None),
    }


MODES = _modes()


@pytest.mark.parametrize("name", sorted(MODES))
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_every_mode_to_every_output_format(name, fmt):
    data, png_mode, pixel = MODES[name]
    out, _ = imaging.thumbnail(data, (20, 20), format=fmt, quality=95)
    im = decode_out(out.data)
    assert im.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    assert im.size == (20, 15) == (out.width, out.height)
    has_alpha = png_mode in ("LA", "RGBA")
    if fmt == "jpeg":
        assert im.mode == ("L" if png_mode in ("L", "LA") else "RGB")
        if has_alpha:  # flattened on white
            assert min(np.asarray(im.convert("RGB"))[7, 2]) >= 250
    elif fmt == "png":
        assert im.mode == png_mode
        got = im.getpixel((2, 2))
        if has_alpha and pixel[-1] == 0:  # fully transparent: only alpha is defined (premultiplied resize)
            got, pixel = got[-1:], pixel[-1:]
        if pixel is not None:
            assert np.abs(np.asarray(got, float) - pixel).max() <= 1, got
    else:
        assert im.mode == ("RGBA" if has_alpha else "RGB")
        if has_alpha:
            assert im.getpixel((2, 7))[3] == 0 and im.getpixel((17, 7))[3] == 255


def test_lab_is_converted_to_srgb():
    data = save(Image.new("LAB", (10, 10), (int(50 * 2.55), 128, 128)), "TIFF")  # L*=50, neutral
    out, _ = imaging.thumbnail(data, format="png")
    r, g, b = decode_out(out.data).getpixel((2, 2))
    assert abs(r - g) <= 2 and abs(g - b) <= 2 and 110 <= r <= 125  # sRGB grey of L*=50 is 119


def test_jpeg_output_flattens_transparency_on_white_and_png_keeps_it():
    data = MODES["RGBA"][0]
    jpeg = decode_out(imaging.thumbnail(data, format="jpeg", quality=95)[0].data)
    assert np.asarray(jpeg)[10, 5].min() >= 250  # the transparent half
    assert np.abs(np.asarray(jpeg, float)[10, 35] - (200, 100, 50)).max() <= 4


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_the_first_frame(fmt):
    frames = [Image.new("RGB", (40, 30), c) for c in ((220, 30, 30), (30, 30, 220), (30, 220, 30))]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    source = imaging.decode(data, [(250, 200)])
    assert source.animated
    out = decode_out(imaging.encode(imaging.render(source, (250, 200)), "png"))
    assert np.abs(np.asarray(out, float)[10, 10] - (220, 30, 30)).max() <= 8


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF", "ICO", "PPM", "JPEG2000"])
def test_every_input_format_decodes(fmt):
    im = Image.fromarray(quadrants(64, 48))
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec")
    out, info = imaging.thumbnail(save(im, fmt), (32, 32), format="png")
    assert info["format"] == fmt.lower()
    got = decode_out(out.data).convert("RGB")
    assert got.size == (32, 24)
    means = quad_means(np.asarray(got))
    tol = 40 if fmt in ("GIF",) else 25  # GIF: palette; AVIF/JPEG: lossy
    for quad, mean in means.items():
        assert np.abs(mean - QUADS[quad]).max() < tol, (fmt, quad, mean)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encoding_is_deterministic(fmt):
    data = (DATA / "chelsea.png").read_bytes()
    first = imaging.thumbnail(data, format=fmt, quality=80)[0].data
    assert imaging.thumbnail(data, format=fmt, quality=80)[0].data == first


def test_encoding_is_the_same_in_a_fresh_process():
    data = (DATA / "hubble_deep_field.jpg").read_bytes()
    here = imaging.thumbnail(data)[0].data
    code = ("import sys; from mediaq.pure import imaging; "
            "sys.stdout.buffer.write(imaging.thumbnail(open(sys.argv[1], 'rb').read())[0].data)")
    there = subprocess.run([sys.executable, "-c", code, str(DATA / "hubble_deep_field.jpg")], check=True,
                           capture_output=True, timeout=60).stdout
    assert there == here


def test_quality_and_format_are_configurable():
    data = (DATA / "coffee.jpg").read_bytes()
    low = imaging.thumbnail(data, format="jpeg", quality=30)[0]
    high = imaging.thumbnail(data, format="jpeg", quality=95)[0]
    webp = imaging.thumbnail(data, format="WEBP", quality=80)[0]
    assert len(low.data) < len(high.data)
    assert webp.format == "webp" and webp.ext == "webp" and webp.data[8:12] == b"WEBP"
    assert imaging.check_format("jpg") == "jpeg"


# -- bad input --------------------------------------------------------------------------------------
def code_of(data: bytes, **kw) -> str:
    with pytest.raises(PermanentJobError) as info:
        imaging.thumbnail(data, **kw)
    assert info.value.message  # a readable sentence, not just a code
    return info.value.code


def test_zero_byte_file():
    assert code_of(b"") == "corrupt_image"


@pytest.mark.parametrize("source", ["coffee.jpg", "chelsea.png"])
def test_truncated_file(source):
    data = (DATA / source).read_bytes()
    assert code_of(data[: len(data) // 2]) == "corrupt_image"


def test_garbage_after_a_valid_header_is_corrupt():
    data = bytearray((DATA / "chelsea.png").read_bytes())
    data[200:4000] = bytes(3800)
    assert code_of(bytes(data)) == "corrupt_image"


def test_html_named_jpg_is_not_an_image(tmp_path):
    page = tmp_path / "photo.jpg"
    page.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    assert code_of(imaging.read_source(page)) == "not_an_image"
    assert code_of(b"\x00\x01\x02 random bytes" * 10) == "not_an_image"


@pytest.mark.parametrize(("data", "kind"), [
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIF"),
    (save(Image.new("RGB", (8, 8)), "PCX"), "PCX"),  # Pillow reads it; we do not allow it
])
def test_unsupported_formats_are_named(data, kind):
    with pytest.raises(PermanentJobError) as info:
        imaging.thumbnail(data)
    assert info.value.code == "unsupported_format"
    assert kind in info.value.message


def test_decompression_bomb_error_above_twice_the_limit():
    assert code_of(png_header(30000, 30000)) == "too_large"


def test_decompression_bomb_warning_zone_is_refused_too():
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # not only under pytest's warnings-as-errors
        with pytest.raises(PermanentJobError) as info:
            imaging.thumbnail(png_header(10000, 10000))  # 100 Mpx: between 1x and 2x of Pillow's limit
    assert info.value.code == "too_large" and "bomb" in info.value.message


def test_max_pixels_is_configurable():
    data = (DATA / "coffee.jpg").read_bytes()
    assert code_of(data, max_pixels=600 * 400 - 1) == "too_large"
    assert imaging.thumbnail(data, max_pixels=600 * 400)[0].width == 250


def test_read_errors(tmp_path, monkeypatch):
    with pytest.raises(PermanentJobError) as info:
        imaging.read_source(tmp_path / "nope.jpg")
    assert info.value.code == "missing_file"
    with pytest.raises(PermanentJobError) as info:
        imaging.read_source(tmp_path)
    assert info.value.code == "unreadable"
    fifo = tmp_path / "pipe.jpg"
    import os

    os.mkfifo(fifo)
    with pytest.raises(PermanentJobError) as info:  # must not hang waiting for a writer
        imaging.read_source(fifo)
    assert info.value.code == "unreadable"
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(PermanentJobError) as info:
        imaging.read_source(big, max_bytes=1000)
    assert info.value.code == "too_large"
    with pytest.raises(PermanentJobError) as info:
        imaging.read_source("")
    assert info.value.code == "bad_argument"


@pytest.mark.parametrize("path", ["/proc/self/status", "/proc/self/mem", "/proc/self/cmdline"])
def test_kernel_files_are_unreadable_at_once(path):
    """/proc files say they hold 0 bytes, cannot seek to their end, or fail to read: no retry can help."""
    def probe(p: str) -> None:
        with imaging.open_source(p) as f:
            imaging.probe(f, name=p)

    for read in (imaging.read_source, probe):
        with pytest.raises(PermanentJobError) as info:
            read(path)
        assert info.value.code == "unreadable" and path in info.value.message


def test_read_error_kinds_by_errno(tmp_path, monkeypatch):
    """Tests run as root, which reads anything: the permission and I/O cases are injected at os.open."""
    import errno
    import os

    path = tmp_path / "x.jpg"
    path.write_bytes(b"x")

    def failing(code):
        def fake_open(*args, **kw):
            raise OSError(code, os.strerror(code))
        return fake_open

    monkeypatch.setattr(imaging.os, "open", failing(errno.EACCES))
    with pytest.raises(PermanentJobError) as info:
        imaging.read_source(path)
    assert info.value.code == "unreadable"
    monkeypatch.setattr(imaging.os, "open", failing(errno.EIO))
    with pytest.raises(TransientJobError) as tinfo:  # a disk or network-mount hiccup: retried
        imaging.read_source(path)
    assert tinfo.value.code == "read_error"


def test_decoding_from_the_open_file_equals_decoding_the_bytes():
    path = DATA / "retina.jpg"
    from_bytes = imaging.render(imaging.decode(path.read_bytes(), [(250, 200)]), (250, 200))
    with imaging.open_source(path) as f:
        info = imaging.probe(f)
        from_file = imaging.render(imaging.decode(f, [(250, 200)]), (250, 200))
    assert info["bytes"] == path.stat().st_size
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_file))


class FlakyFile(io.RawIOBase):
    """A file whose reads fail with EIO after ``ok`` bytes, as a failing disk or network mount does."""

    def __init__(self, inner, ok: int) -> None:
        self.inner, self.ok = inner, ok

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos, whence=0):
        return self.inner.seek(pos, whence)

    def tell(self):
        return self.inner.tell()

    def readinto(self, buf):
        import errno

        if self.inner.tell() >= self.ok:
            raise OSError(errno.EIO, "Input/output error")
        data = self.inner.read(min(len(buf), self.ok - self.inner.tell()))
        buf[: len(data)] = data
        return len(data)


def test_disk_error_while_decoding_is_a_transient_read_error():
    with pytest.raises(TransientJobError) as info:
        with imaging.open_source(DATA / "retina.jpg") as f:
            imaging.decode(io.BufferedReader(FlakyFile(f, 50_000)), [(250, 200)])
    assert info.value.code == "read_error" and "retina.jpg" in info.value.message


@pytest.mark.parametrize(("call", "argument"), [
    (lambda: imaging.check_format("gif"), "format"),
    (lambda: imaging.check_format(None), "format"),
    (lambda: imaging.check_quality(0), "quality"),
    (lambda: imaging.check_quality(101), "quality"),
    (lambda: imaging.check_quality(True), "quality"),
    (lambda: imaging.check_quality("90"), "quality"),
    (lambda: imaging.check_size("width", 0), "width"),
    (lambda: imaging.check_size("width", 10**6), "width"),
    (lambda: imaging.check_size("width", 2.5), "width"),
])
def test_bad_arguments(call, argument):
    with pytest.raises(PermanentJobError) as info:
        call()
    assert info.value.code == "bad_argument" and info.value.details["argument"] == argument


def test_broken_exif_block_does_not_cost_the_picture():
    data = save(Image.fromarray(quadrants(40, 20)), "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*garbage")
    out, info = imaging.thumbnail(data, (100, 100))
    assert info["orientation"] == 1 and (out.width, out.height) == (40, 20)


def test_probe_reads_only_the_header():
    info = imaging.probe(png_header(3000, 2000))  # no pixel data at all
    assert (info["width"], info["height"], info["format"]) == (3000, 2000, "png")
