"""IQDB similarity (DESIGN.md section 4): signatures and hashes bit-compatible with the danbooru/iqdb
server, an embedded index shared through Redis, and a client for real IQDB servers.

* :func:`compute_signature` / :class:`Signature` / :func:`parse_hash`: pure numpy and Pillow;
* :class:`LocalIndex`: the server's index and scoring in memory (pure numpy);
* :class:`IqdbIndex` (async) and :class:`SyncIqdbIndex`: the embedded index in Redis, queried on a
  local replica refreshed incrementally (one round trip per query);
* :class:`RemoteIqdb` (async) and :class:`SyncRemoteIqdb`: danbooru/iqdb and iqdb-rs over HTTP;
* ``mirror=True`` on any query also finds horizontally flipped copies (beyond the reference server).

>>> import numpy as np
>>> from mediaq.iqdb import LocalIndex, signature_from_rgb, parse_hash
>>> sig = signature_from_rgb(np.full((200, 250, 3), 90, np.uint8))
>>> parse_hash(sig.hash) == sig
True
"""

from mediaq.iqdb._errors import InvalidHashError, InvalidImageError, IqdbError, IqdbServerError, IqdbUnavailable
from mediaq.iqdb.hashes import format_hash, is_hash, parse_hash
from mediaq.iqdb.index import IqdbIndex, SyncIqdbIndex
from mediaq.iqdb.local import LocalIndex, Match
from mediaq.iqdb.remote import AddResult, RemoteIqdb, SyncRemoteIqdb
from mediaq.iqdb.signature import (
    Signature,
    compute_signature,
    decode_rgb,
    mirror_signature,
    signature_from_rgb,
    to_jpeg_bytes,
)

__all__ = [
    "AddResult",
    "InvalidHashError",
    "InvalidImageError",
    "IqdbError",
    "IqdbIndex",
    "IqdbServerError",
    "IqdbUnavailable",
    "LocalIndex",
    "Match",
    "RemoteIqdb",
    "Signature",
    "SyncIqdbIndex",
    "SyncRemoteIqdb",
    "compute_signature",
    "decode_rgb",
    "format_hash",
    "is_hash",
    "mirror_signature",
    "parse_hash",
    "signature_from_rgb",
    "to_jpeg_bytes",
]
