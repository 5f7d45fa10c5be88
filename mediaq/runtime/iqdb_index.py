"""The embedded IQDB index, shared through Redis by every worker and notebook that reaches it.

Layout (queue database, prefix ``mediaq:iqdb:``):

* ``sigs``: a hash image id -> packed signature (264 bytes, see :func:`~mediaq.pure.iqdb.signature.pack_signature`);
* ``log``: a sorted set image id -> sequence number of its last change (an add, a replace or a
  removal; a removed id stays in the log, absent from ``sigs``);
* ``seq``: the last sequence number; ``epoch``: a random token of this index's lifetime (a flushed
  or cleared index gets a new one, and replicas reload).

Writes are single Lua scripts (atomic; one round trip per chunk of items). Queries run on a local
numpy replica (:class:`~mediaq.pure.iqdb.scoring.LocalIndex`) brought up to date first by one script
call that returns the changes since the replica's sequence number: a query costs one round trip
whatever the index size, plus one more per 5,000 changes to catch up.

>>> import redis.asyncio as aioredis                                   # doctest: +SKIP
>>> index = IqdbIndex(aioredis.Redis.from_url("redis://localhost/1"))  # doctest: +SKIP
>>> await index.add(42, "thumbs/42.jpg")                               # doctest: +SKIP
>>> await index.query("thumbs/42.jpg", limit=5)                        # doctest: +SKIP
[Match(image_id=42, score=99.99999, hash='iqdb_...')]
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from mediaq.errors import ConfigError, InvalidHashError
from mediaq.pure.iqdb.compute import ImageInput, as_signature
from mediaq.pure.iqdb.scoring import ImageId, LocalIndex, Match
from mediaq.pure.iqdb.signature import PACKED_SIZE, Signature, pack_signature, parse_hash, unpack_signature
from mediaq.runtime.iqdb_ids import decode_id, encode_id
from mediaq.runtime.keys import IQDB_PREFIX
from mediaq.runtime.settings import Settings

__all__ = ["IqdbIndex", "SyncIqdbIndex"]

SYNC_CHUNK = 5000
WRITE_CHUNK = 1000
_PACKED_DTYPE = np.dtype([("avglf", ">f8", (3,)), ("sig", ">i2", (3, 40))])

# KEYS: seq, sigs, log, epoch. ARGV: epoch candidate, then id, packed, id, packed...
_ADD = """
redis.call('SET', KEYS[4], ARGV[1], 'NX')
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
for i = 2, #ARGV, 2 do
  seq = seq + 1
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], seq, ARGV[i])
end
redis.call('SET', KEYS[1], seq)
return seq
"""

# KEYS: seq, sigs, log. ARGV: ids. Returns how many were indexed (and are now removed).
_REMOVE = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local removed = 0
for i = 1, #ARGV do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    removed = removed + 1
    seq = seq + 1
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
  end
end
redis.call('SET', KEYS[1], seq)
return removed
"""

# KEYS: seq, sigs, log, epoch. ARGV: since, max. Returns {epoch, seq, {id, score, ...}, {packed or nil, ...}}.
_CHANGES = """
local epoch = redis.call('GET', KEYS[4]) or ''
local seq = redis.call('GET', KEYS[1]) or '0'
local log = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local sigs = {}
for i = 1, #log, 2 do
  sigs[#sigs + 1] = redis.call('HGET', KEYS[2], log[i])
end
return {epoch, seq, log, sigs}
"""



def _check_client(redis: Any) -> None:
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ConfigError("the IQDB index stores binary signatures: give it a Redis client made with "
                          "decode_responses=False (as mediaq's client.redis and arq's ctx['redis'] are)")


def _pairs_frame(pairs: list[tuple[ImageId, ImageId, float]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["image_id", "match_id", "score"]).astype({"score": "float64"})


class _IndexBase:
    """I/O-free logic shared by the async and sync faces."""

    def __init__(self, redis: Any, *, prefix: str = IQDB_PREFIX) -> None:
        _check_client(redis)
        self.redis = redis
        self.prefix = prefix
        self.keys = [f"{prefix}seq", f"{prefix}sigs", f"{prefix}log", f"{prefix}epoch"]
        self.local = LocalIndex()
        self._seq = 0
        self._epoch: bytes | None = None
        self._owns_client = False
        self._add = redis.register_script(_ADD)
        self._remove = redis.register_script(_REMOVE)
        self._changes = redis.register_script(_CHANGES)

    @staticmethod
    def _write_chunks(items: Iterable[tuple[ImageId, Signature | str]]) -> Iterable[list[Any]]:
        args: list[Any] = []
        for image_id, sig in items:
            sig = parse_hash(sig) if isinstance(sig, str) else sig
            args += [encode_id(image_id), pack_signature(sig)]
            if len(args) >= 2 * WRITE_CHUNK:
                yield args
                args = []
        if args:
            yield args

    def _apply(self, reply: list[Any], pending: dict[ImageId, bytes | None], since: int) -> tuple[bool, int]:
        """Take one change-set reply into ``pending``; returns (more may be waiting, new ``since``).

        A changed epoch (the index was cleared or the database flushed) empties the replica and
        ``pending`` and starts again from sequence 0. ``self._seq`` moves only once changes are
        applied, so a failed refresh is retried whole by the next one.
        """
        epoch, _seq, log, sigs = reply
        epoch = epoch or b""
        if epoch != self._epoch:
            reload = self._epoch is not None or len(self.local) > 0 or bool(pending)
            self._epoch = epoch
            if reload:
                self.local.clear()
                pending.clear()
                self._seq = 0
                return True, 0
        for k in range(0, len(log), 2):
            pending[decode_id(log[k])] = None if sigs[k // 2] is None else bytes(sigs[k // 2])
            since = max(since, int(float(log[k + 1])))
        return len(log) // 2 >= SYNC_CHUNK, since

    def _commit(self, pending: dict[ImageId, bytes | None]) -> None:
        """Apply collected changes to the replica at once (vectorised unpacking, one rebuild)."""
        removed = [image_id for image_id, packed in pending.items() if packed is None]
        for image_id in removed:
            self.local.remove(image_id)
        added = [(image_id, packed) for image_id, packed in pending.items() if packed is not None]
        if not added:
            return
        bad = [image_id for image_id, packed in added if len(packed) != PACKED_SIZE]
        if bad:
            raise InvalidHashError(f"corrupt signatures in {self.keys[1]} for ids {bad[:5]}")
        raw = np.frombuffer(b"".join(packed for _, packed in added), dtype=_PACKED_DTYPE)
        try:
            self.local.add_arrays([image_id for image_id, _ in added], raw["avglf"].astype(np.float64),
                                  raw["sig"].astype(np.int16))
        except ValueError as exc:
            raise InvalidHashError(f"corrupt signatures in {self.keys[1]}: {exc}") from None

    def _local_query(self, query: Signature | str | ImageInput, limit: int, mirror: bool,
                     mirror_margin: float) -> list[Match]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be an integer >= 1, got {limit!r}")
        return self.local.query(as_signature(query), limit, mirror=mirror, mirror_margin=mirror_margin)

    def __len__(self) -> int:
        """Images in the local replica (as of the last refresh)."""
        return len(self.local)


def _queue_url(settings: Settings | None) -> str:
    from mediaq.runtime.connections import with_db
    from mediaq.runtime.server import resolve_redis_url

    settings = settings or Settings.load()
    return with_db(resolve_redis_url(settings), settings.queue_db, keep_explicit=False)


class IqdbIndex(_IndexBase):
    """The embedded index on an async Redis client (``redis.asyncio``; arq's ``ctx['redis']``;
    a mediaq client's ``client.redis``), or on its own connection with :meth:`from_settings`.

    Every method that reads refreshes the local replica first (one round trip) unless
    ``refresh=False``. Adding an existing id replaces it, as on the server. Image ids are ints or
    strs; a str of plain decimal digits is the same id as that int (and reads back as the int).
    """

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, prefix: str = IQDB_PREFIX) -> IqdbIndex:
        """An index on its own connection to the queue database of ``settings`` (close with :meth:`aclose`)."""
        from mediaq.runtime.connections import async_client

        settings = settings or Settings.load()
        index = cls(async_client(_queue_url(settings), settings.connect_timeout), prefix=prefix)
        index._owns_client = True
        return index

    async def aclose(self) -> None:
        """Close the connection if :meth:`from_settings` opened it."""
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> IqdbIndex:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def add(self, image_id: ImageId, image: Signature | str | ImageInput) -> Signature:
        """Index an image (bytes, path, PIL image), a hash or a signature; returns the signature."""
        sig = as_signature(image)
        await self.add_many([(image_id, sig)])
        return sig

    async def add_many(self, items: Iterable[tuple[ImageId, Signature | str]]) -> int:
        """Bulk add of (id, signature or hash) pairs, one script call per 1,000; returns how many."""
        count = 0
        for args in self._write_chunks(items):
            await self._add(keys=self.keys, args=[uuid.uuid4().hex, *args])
            count += len(args) // 2
        return count

    async def remove(self, image_id: ImageId) -> bool:
        """Remove an image; False if it was not indexed."""
        return bool(await self._remove(keys=self.keys[:3], args=[encode_id(image_id)]))

    async def refresh(self) -> int:
        """Bring the local replica up to date; returns the number of images it holds."""
        pending: dict[ImageId, bytes | None] = {}
        more, since = True, self._seq
        while more:
            more, since = self._apply(await self._changes(keys=self.keys, args=[since, SYNC_CHUNK]), pending, since)
        self._commit(pending)
        self._seq = since
        return len(self.local)

    async def get(self, image_id: ImageId) -> Signature | None:
        """The stored signature of an image (read from Redis), or None."""
        packed = await self.redis.hget(self.keys[1], encode_id(image_id))
        return None if packed is None else unpack_signature(bytes(packed))

    async def count(self) -> int:
        """Images in the shared index (read from Redis)."""
        return int(await self.redis.hlen(self.keys[1]))

    async def query(self, query: Signature | str | ImageInput, limit: int = 10, *, mirror: bool = False,
                    mirror_margin: float = 0.0, refresh: bool = True) -> list[Match]:
        """Best matches first, scored as the reference server does (``mirror=True``: flips too; see
        :func:`~mediaq.pure.iqdb.scoring.merge_mirrored` for ``mirror_margin``)."""
        if refresh:
            await self.refresh()
        return self._local_query(query, limit, mirror, mirror_margin)

    async def find_duplicates(self, threshold: float = 90.0, *, limit: int = 10, mirror: bool = False,
                              refresh: bool = True) -> pd.DataFrame:
        """Pairs of indexed images scoring at least ``threshold``: columns image_id, match_id, score."""
        if refresh:
            await self.refresh()
        return _pairs_frame(self.local.find_duplicates(threshold, limit=limit, mirror=mirror))

    async def clear(self) -> None:
        """Delete the whole shared index (every replica reloads, empty, at its next refresh)."""
        await self.redis.unlink(*self.keys)
        self.local.clear()
        self._seq, self._epoch = 0, None


class SyncIqdbIndex(_IndexBase):
    """The same index on a synchronous ``redis.Redis`` client, method for method."""

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, prefix: str = IQDB_PREFIX) -> SyncIqdbIndex:
        from mediaq.runtime.connections import sync_client

        index = cls(sync_client(_queue_url(settings)), prefix=prefix)
        index._owns_client = True
        return index

    def close(self) -> None:
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> SyncIqdbIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, image_id: ImageId, image: Signature | str | ImageInput) -> Signature:
        sig = as_signature(image)
        self.add_many([(image_id, sig)])
        return sig

    def add_many(self, items: Iterable[tuple[ImageId, Signature | str]]) -> int:
        count = 0
        for args in self._write_chunks(items):
            self._add(keys=self.keys, args=[uuid.uuid4().hex, *args])
            count += len(args) // 2
        return count

    def remove(self, image_id: ImageId) -> bool:
        return bool(self._remove(keys=self.keys[:3], args=[encode_id(image_id)]))

    def refresh(self) -> int:
        pending: dict[ImageId, bytes | None] = {}
        more, since = True, self._seq
        while more:
            more, since = self._apply(self._changes(keys=self.keys, args=[since, SYNC_CHUNK]), pending, since)
        self._commit(pending)
        self._seq = since
        return len(self.local)

    def get(self, image_id: ImageId) -> Signature | None:
        packed = self.redis.hget(self.keys[1], encode_id(image_id))
        return None if packed is None else unpack_signature(bytes(packed))

    def count(self) -> int:
        return int(self.redis.hlen(self.keys[1]))

    def query(self, query: Signature | str | ImageInput, limit: int = 10, *, mirror: bool = False,
              mirror_margin: float = 0.0, refresh: bool = True) -> list[Match]:
        if refresh:
            self.refresh()
        return self._local_query(query, limit, mirror, mirror_margin)

    def find_duplicates(self, threshold: float = 90.0, *, limit: int = 10, mirror: bool = False,
                        refresh: bool = True) -> pd.DataFrame:
        if refresh:
            self.refresh()
        return _pairs_frame(self.local.find_duplicates(threshold, limit=limit, mirror=mirror))

    def clear(self) -> None:
        self.redis.unlink(*self.keys)
        self.local.clear()
        self._seq, self._epoch = 0, None
