"""Tiny ICC v2 profiles written byte by byte (ICC.1:2001-04), for tests of the colour paths.

No CMYK or greyscale profile with a free licence ships in a wheel, so these are built here, and made
*distinctive*, so a test sees at once whether a conversion used them or ignored them: the CMYK one
maps every ink mix to one colour, the grey one is linear light.

>>> from PIL import ImageCms
>>> import io
>>> ImageCms.ImageCmsProfile(io.BytesIO(gray_profile(1.0))).profile.xcolor_space
'GRAY'
"""

from __future__ import annotations

import struct

__all__ = ["cmyk_profile", "gray_profile"]

D50 = (0.9642, 1.0, 0.8249)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table = struct.pack(">I", len(tags))
    offset = 128 + 4 + 12 * len(tags)
    body = b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + device_class + space
              + pcs + struct.pack(">6H", 2026, 11, 30, 0, 0, 0) + b"acsp" + b"\0" * 4 + struct.pack(">I", 0)
              + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0) + _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2])
              + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + table + body


def gray_profile(gamma: float) -> bytes:
    """A greyscale display profile with a pure power tone curve: grey level v means luminance
    (v/255) ** gamma. With ``gamma=1`` (linear light) the sRGB value of a grey is far from the grey
    itself (64 becomes about 137), so a conversion that used the profile is easy to tell apart."""
    curve = b"curv\0\0\0\0" + struct.pack(">I", 1) + struct.pack(">H", round(gamma * 256))
    return _profile(b"mntr", b"GRAY", b"XYZ ", [(b"desc", _desc("mediaq test grey")), (b"wtpt", _xyz(*D50)),
                                                (b"kTRC", curve)])


def cmyk_profile(lab: tuple[float, float, float]) -> bytes:
    """A CMYK output profile whose A2B0 table (lut8, 2 grid points a channel) sends every ink mix to
    the CIELAB colour ``lab``."""
    L, a, b = lab
    encoded = bytes([round(L * 255 / 100), round(a + 128), round(b + 128)])
    identity = bytes(range(256))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = (b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + matrix + identity * 4 + encoded * 2**4 + identity * 3)
    return _profile(b"prtr", b"CMYK", b"Lab ", [(b"desc", _desc("mediaq test cmyk")), (b"wtpt", _xyz(*D50)),
                                                (b"A2B0", lut)])
