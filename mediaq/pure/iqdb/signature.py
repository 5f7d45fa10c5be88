"""The IQDB signature (:class:`Signature`) and its hash: ``"iqdb_"`` + 3 avglf doubles (16 hex digits
each, IEEE bits, most significant first) + 120 coefficients (Y's 40, then I's, then Q's; 16-bit two's
complement, 4 hex digits each), lowercase: 533 characters, exactly as the server's
``HaarSignature::to_string``.

>>> import numpy as np
>>> sig = Signature((0.5, 0.0, -0.0), np.tile(np.arange(-40, 0, dtype=np.int16), (3, 1)))
>>> text = format_hash(sig)
>>> text[:21], len(text), parse_hash(text) == sig
('iqdb_3fe0000000000000', 533, True)
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from mediaq.errors import InvalidHashError

__all__ = ["GRAYSCALE_LIMIT", "HASH_LENGTH", "HASH_PREFIX", "NUM_COEFS", "NUM_PIXELS", "Signature", "format_hash",
           "is_hash", "looks_like_hash", "pack_signature", "parse_hash", "unpack_signature"]

NUM_PIXELS = 128
NUM_COEFS = 40
GRAYSCALE_LIMIT = 6.0 / 1000
HASH_PREFIX = "iqdb_"
HASH_LENGTH = len(HASH_PREFIX) + 3 * 16 + 3 * NUM_COEFS * 4  # 533
_HASH_RE = re.compile(r"iqdb_[0-9a-f]{528}")
PACKED_SIZE = 3 * 8 + 3 * NUM_COEFS * 2  # 264 bytes: big-endian doubles and int16s, the hash's bytes


@dataclass(frozen=True, eq=False)
class Signature:
    """An IQDB signature: the 3 DC terms (``avglf``, doubles) and 3 x 40 signed coefficient indices.

    ``sig[c]`` holds channel c's (Y, I, Q) kept indices, +i for a positive coefficient and -i
    otherwise, sorted ascending as int16. Two signatures are equal when their hashes are.

    >>> s = Signature.from_hash(format_hash(Signature((0.0, 0.0, 0.0), -np.arange(1, 121).reshape(3, 40))))
    >>> s.avglf, s.num_colors
    ((0.0, 0.0, 0.0), 1)
    """

    avglf: tuple[float, float, float]
    sig: np.ndarray

    def __post_init__(self) -> None:
        sig = np.asarray(self.sig)
        if sig.shape != (3, NUM_COEFS):
            raise ValueError(f"a signature has 3 x {NUM_COEFS} coefficients, got shape {sig.shape}")
        if np.any(sig == 0) or np.any(np.abs(sig.astype(np.int32)) >= NUM_PIXELS * NUM_PIXELS):
            raise ValueError("coefficient indices must be +-1..16383")
        sig = np.sort(sig.astype(np.int16), axis=1)
        sig.setflags(write=False)
        object.__setattr__(self, "sig", sig)
        object.__setattr__(self, "avglf", tuple(float(v) for v in self.avglf))
        if len(self.avglf) != 3:
            raise ValueError("avglf has 3 values (Y, I, Q)")

    @property
    def is_grayscale(self) -> bool:
        """The server's rule: ``|avglf_I| + |avglf_Q| < 0.006``; then only Y is indexed and scored."""
        return abs(self.avglf[1]) + abs(self.avglf[2]) < GRAYSCALE_LIMIT

    @property
    def num_colors(self) -> int:
        return 1 if self.is_grayscale else 3

    @property
    def hash(self) -> str:
        """The server's 533-character ``iqdb_...`` hash."""
        return format_hash(self)

    @classmethod
    def from_hash(cls, text: str) -> Signature:
        return parse_hash(text)

    def to_dict(self) -> dict[str, Any]:
        """The server's JSON shape: ``{"avglf": [3 floats], "sig": [[40 ints] x 3]}``."""
        return {"avglf": list(self.avglf), "sig": self.sig.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(tuple(data["avglf"]), np.asarray(data["sig"], dtype=np.int16))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[bytes, bytes]:
        return struct.pack("<3d", *self.avglf), self.sig.tobytes()

    def __repr__(self) -> str:
        y, i, q = self.avglf
        return f"Signature(avglf=({y:.6g}, {i:.6g}, {q:.6g}), grayscale={self.is_grayscale})"



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
