"""IQDB similarity: signatures bit-compatible with the danbooru/iqdb server, hashes, an embedded
index shared through Redis, and a client for real IQDB servers (DESIGN.md section 4).

>>> import numpy as np
>>> from mediaq.iqdb import signature_from_rgb, parse_hash
>>> sig = signature_from_rgb(np.full((200, 250, 3), 90, np.uint8))
>>> parse_hash(sig.hash) == sig
True
"""

from mediaq.iqdb._errors import InvalidHashError, InvalidImageError, IqdbError, IqdbServerError, IqdbUnavailable
from mediaq.iqdb.hashes import format_hash, is_hash, parse_hash
from mediaq.iqdb.signature import (
    Signature,
    compute_signature,
    decode_rgb,
    mirror_signature,
    signature_from_rgb,
    to_jpeg_bytes,
)

__all__ = [
    "InvalidHashError",
    "InvalidImageError",
    "IqdbError",
    "IqdbServerError",
    "IqdbUnavailable",
    "Signature",
    "compute_signature",
    "decode_rgb",
    "format_hash",
    "is_hash",
    "mirror_signature",
    "parse_hash",
    "signature_from_rgb",
    "to_jpeg_bytes",
]
