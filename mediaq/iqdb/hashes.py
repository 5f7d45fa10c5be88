"""The IQDB hash: ``"iqdb_"`` + 3 avglf doubles (16 hex digits each, IEEE bits, most significant
first) + 120 coefficients (Y's 40, then I's, then Q's; 16-bit two's complement, 4 hex digits each),
lowercase: 533 characters, exactly as the server's ``HaarSignature::to_string``.

>>> import numpy as np
>>> from mediaq.iqdb.signature import Signature
>>> sig = Signature((0.5, 0.0, -0.0), np.tile(np.arange(-40, 0, dtype=np.int16), (3, 1)))
>>> text = format_hash(sig)
>>> text[:21], len(text), parse_hash(text) == sig
('iqdb_3fe0000000000000', 533, True)
"""

from __future__ import annotations

import re
import struct

import numpy as np

from mediaq.iqdb._errors import InvalidHashError
from mediaq.iqdb.signature import NUM_COEFS, ImageInput, Signature, compute_signature

__all__ = ["HASH_LENGTH", "HASH_PREFIX", "as_signature", "format_hash", "is_hash", "looks_like_hash", "pack_signature",
           "parse_hash", "unpack_signature"]

HASH_PREFIX = "iqdb_"
HASH_LENGTH = len(HASH_PREFIX) + 3 * 16 + 3 * NUM_COEFS * 4  # 533
_HASH_RE = re.compile(r"iqdb_[0-9a-f]{528}")
PACKED_SIZE = 3 * 8 + 3 * NUM_COEFS * 2  # 264 bytes: big-endian doubles and int16s, the hash's bytes


def pack_signature(sig: Signature) -> bytes:
    """The hash's content as 264 raw bytes (big-endian): a compact form for storage."""
    return struct.pack(">3d", *sig.avglf) + sig.sig.astype(">i2").tobytes()


def unpack_signature(data: bytes) -> Signature:
    """Inverse of :func:`pack_signature`."""
    if len(data) != PACKED_SIZE:
        raise InvalidHashError(f"a packed signature has {PACKED_SIZE} bytes, got {len(data)}")
    avglf = struct.unpack(">3d", data[:24])
    sig = np.frombuffer(data, dtype=">i2", offset=24).astype(np.int16).reshape(3, NUM_COEFS)
    try:
        return Signature(avglf, sig)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidHashError(f"invalid packed signature: {exc}") from exc


def format_hash(sig: Signature) -> str:
    """The server's hash of a signature (533 lowercase characters)."""
    return HASH_PREFIX + pack_signature(sig).hex()


def is_hash(text: object) -> bool:
    """Whether ``text`` looks like an IQDB hash (right prefix, length and lowercase hex)."""
    return isinstance(text, str) and _HASH_RE.fullmatch(text) is not None


def looks_like_hash(value: object) -> bool:
    """A str with the hash's prefix and length: treated as a hash (and validated) rather than a path."""
    return isinstance(value, str) and len(value) == HASH_LENGTH and value.startswith(HASH_PREFIX)


def parse_hash(text: str) -> Signature:
    """The signature a hash encodes; :class:`InvalidHashError` with the reason otherwise.

    Uppercase hex is accepted (the server itself only writes lowercase).
    """
    if not isinstance(text, str):
        raise InvalidHashError(f"an IQDB hash is a str, got {type(text).__name__}")
    text = text.strip()
    if not text.startswith(HASH_PREFIX):
        raise InvalidHashError(f"an IQDB hash starts with {HASH_PREFIX!r}: {text[:20]!r}...")
    if len(text) != HASH_LENGTH:
        raise InvalidHashError(f"an IQDB hash has {HASH_LENGTH} characters, got {len(text)}")
    try:
        raw = bytes.fromhex(text[len(HASH_PREFIX):])
    except ValueError:
        raise InvalidHashError("an IQDB hash is hexadecimal after 'iqdb_'") from None
    return unpack_signature(raw)


def as_signature(value: Signature | str | ImageInput) -> Signature:
    """A signature from a :class:`Signature`, an ``iqdb_`` hash, or an image (bytes, path, PIL)."""
    if isinstance(value, Signature):
        return value
    if looks_like_hash(value):
        return parse_hash(value)  # type: ignore[arg-type]
    return compute_signature(value)
