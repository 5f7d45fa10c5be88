"""The notebook client: ``client = await mediaq.connect()``.

>>> import mediaq
>>> client = await mediaq.connect()                                     # doctest: +SKIP
>>> batch = await client.enqueue_many("create_thumbnail",               # doctest: +SKIP
...     [{"image_id": p.stem, "source_path": str(p)} for p in paths], job_id="thumb:{image_id}")
>>> await batch.wait(progress=True)                                     # doctest: +SKIP
>>> df = await batch.results()                                          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, default_queue_name, result_key_prefix
from arq.jobs import DeserializationError, Job
from redis.exceptions import RedisError, ResponseError

from mediaq.client.batch import Batch, batch_key, new_batch_name
from mediaq.client.frames import FrameBuilder, gc_paused
from mediaq.errors import ConfigError, EnqueueError, JobError, RedisUnavailable
from mediaq.faces.progress import progress_bar
from mediaq.jobs.registry import load_jobs
from mediaq.runtime.connections import client_pool, with_db
from mediaq.runtime.scripts import ChunkSender, job_entry
from mediaq.runtime.serialization import get_serializer
from mediaq.runtime.server import resolve_redis_url
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["Client", "connect"]

class Client:
    """A connection to mediaq's queue (Redis db ``queue_db``) and cache (db ``cache_db``).

    Build it with :func:`connect`. Use as ``async with`` or call :meth:`close`.
    """

    def __init__(self, settings: Settings, url: str, redis: ArqRedis, cache: aioredis.Redis) -> None:
        self.settings = settings
        self.url = url
        self.redis = redis
        self.cache = cache
        self.dumps, self.loads = get_serializer(settings.serializer)
        self._jobs: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (f"<mediaq.Client {redact_url(with_db(self.url, self.settings.queue_db))} "
                f"queue={self.settings.queue_name!r} serializer={self.settings.serializer}>")

    async def close(self) -> None:
        """Close both connection pools."""
        await self.redis.aclose(close_connection_pool=True)
        await self.cache.aclose(close_connection_pool=True)

    aclose = close

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- registry ---------------------------------------------------------------------------
    @property
    def jobs(self) -> dict[str, Any]:
        """Registered job functions by name (built in plus ``MEDIAQ_JOB_MODULES``)."""
        if self._jobs is None:
            self._jobs = load_jobs(self.settings)
        return self._jobs

    def _check_function(self, function: str) -> None:
        from mediaq.jobs.registry import check_job_name

        if function not in self.jobs:
            check_job_name(function, self.settings)  # raises UnknownJobError with suggestions

    def signatures(self) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(spec.coroutine) for name, spec in self.jobs.items()}

    # -- single jobs ------------------------------------------------------------------------
    async def enqueue_job(
        self,
        function: str,
        *args: Any,
        _job_id: str | None = None,
        _defer_by: float | dt.timedelta | None = None,
        _defer_until: dt.datetime | None = None,
        _expires: float | dt.timedelta | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Enqueue one job by name; returns its id, or ``None`` if that id already exists (arq's rule).

        Keeps the seed helper's signature: ``await client.enqueue_job("create_thumbnail", 42, path)``.
        """
        self._check_function(function)
        try:
            job = await self.redis.enqueue_job(function, *args, _job_id=_job_id, _defer_by=_defer_by,
                                               _defer_until=_defer_until, _expires=_expires, **kwargs)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"could not enqueue {function!r}: {exc}") from exc
        return job.job_id if job else None

    def job(self, job_id: str) -> Job:
        """arq's own :class:`arq.jobs.Job` for ``job_id`` (``.status()``, ``.info()``, ``.result()``)."""
        return Job(job_id, self.redis, _queue_name=self.settings.queue_name, _deserializer=self.loads)

    async def result(self, job_id: str, timeout: float | None = 60.0, poll_delay: float = 0.1) -> Any:
        """Wait for job ``job_id`` and return its result; a failed job raises :class:`JobError`."""
        try:
            return await self.job(job_id).result(timeout=timeout, poll_delay=poll_delay)
        except JobError:
            raise
        except DeserializationError as exc:  # a malformed or foreign (pickle?) record: refused, not run
            reason = exc.__cause__ or exc
            raise JobError("mediaq.UnreadableRecord", f"cannot decode the result of {job_id!r}: {reason}. Is another "
                           "client writing with a different serializer (MEDIAQ_SERIALIZER)?") from None
        except asyncio.CancelledError as exc:  # aborted job in pickle mode
            raise JobError("asyncio.CancelledError", "job aborted") from exc
        except TimeoutError:
            raise TimeoutError(f"job {job_id!r} gave no result within {timeout} s; is a worker running? "
                               "(`mediaq doctor` checks)") from None

    async def abort_job(self, job_id: str) -> None:
        """Ask workers to abort ``job_id`` (queued: never started; running: cancelled)."""
        await self.redis.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})

    # -- bulk -------------------------------------------------------------------------------
    async def enqueue_many(
        self,
        function: str,
        items: Iterable[Any],
        *,
        job_id: str | Callable[[Any], str] | None = None,
        batch: str | None = None,
        defer_by: float | dt.timedelta | None = None,
        defer_until: dt.datetime | None = None,
        expires: float | dt.timedelta | None = None,
        chunk_size: int = 1000,
        progress: bool = False,
    ) -> Batch:
        """Enqueue one job per item, in atomic chunks, and return the :class:`~mediaq.client.batch.Batch`.

        ``items``: dicts (keyword arguments), tuples (positional arguments) or single values (one
        positional argument). ``job_id``: ``None`` (random ids), a template formatted with each
        item (``"thumb:{image_id}"``; positional items as ``{0}``), or a function of the item.
        Ids that exist as a job or a result are skipped, not overwritten (``batch.skipped``), so a
        rerun with deterministic ids does not duplicate work. ``batch`` names the batch (default: a
        new name); the same name again adds to that batch.
        """
        self._check_function(function)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size={chunk_size!r} must be >= 1")
        if defer_by is not None and defer_until is not None:
            raise ConfigError("use either defer_by or defer_until, not both")
        name = batch or new_batch_name(function)
        b = Batch(self, name)
        await b._register(function)
        already_there = await self.redis.zcard(b.ids_key)
        id_for = _job_id_maker(job_id)
        defer_ms = _to_ms(defer_by) or 0
        expires_ms = _to_ms(expires)
        queue = self.settings.queue_name
        seen: dict[str, None] = {}  # ordered
        skipped: list[str] = []
        bar = progress_bar(desc="enqueue") if progress else None
        entries = iter(enumerate(items))
        written = chunks = 0

        def next_chunk() -> list[tuple[str, int, int, bytes]]:
            chunk: list[tuple[str, int, int, bytes]] = []
            for index, item in entries:
                args, kwargs = _split_item(item)
                jid = id_for(item, args, kwargs, index)
                if jid in seen:
                    skipped.append(jid)
                    continue
                seen[jid] = None
                now = int(time.time() * 1000)
                score = _to_unix_ms(defer_until) if defer_until is not None else now + defer_ms
                try:
                    chunk.append(job_entry(self.dumps, jid, function, args, kwargs, name, score_ms=score,
                                           expires_ms=expires_ms, now_ms=now))
                except TypeError as exc:
                    raise ConfigError(f"item {index} ({item!r:.80}) cannot be enqueued: {exc}") from None
                if len(chunk) >= chunk_size:
                    break
            return chunk

        def failed(exc: Exception, size: int, sent: bool) -> EnqueueError:
            # an error reply means the script ran and wrote nothing (it checks before it writes); a
            # connection that broke after the chunk went out leaves it written whole or not at all
            in_doubt = size if sent and not isinstance(exc, ResponseError) else 0
            what = (f"the connection broke while the next chunk of {size} was in flight, so it was "
                    "written whole or not at all and which is unknown until Redis is back"
                    if in_doubt else f"the failed chunk of {size} was not written at all")
            return EnqueueError(
                f"Redis failed after {chunks} chunk(s) ({written} jobs) of batch {name!r} were written; "
                f"{what} ({exc}). Rerun the same call with deterministic job ids to complete the "
                "batch without duplicates.",
                written=written, chunks_written=chunks, batch=name, in_doubt=in_doubt)

        async def landed() -> None:
            nonlocal written, chunks
            size = sender.in_flight
            try:
                skipped.extend(await sender.landed())
            except (RedisError, OSError) as exc:
                raise failed(exc, size, sent=True) from exc
            written += size
            chunks += 1
            if bar is not None:
                bar.update(size)

        # one chunk in flight while the next is built (see ChunkSender)
        sender = ChunkSender(self.redis, queue, b.ids_key)
        try:
            while True:
                try:
                    with gc_paused():  # encoding allocates a burst of small containers
                        chunk = next_chunk()
                finally:
                    if sender.in_flight:
                        await landed()
                if not chunk:
                    break
                try:
                    await sender.send(chunk)
                except (RedisError, OSError) as exc:
                    raise failed(exc, len(chunk), sent=sender.in_flight > 0) from exc
        finally:
            await sender.aclose()
            if bar is not None:
                bar.close()
        b.skipped = skipped
        if already_there:
            await b.load()
        else:  # a new batch holds exactly what this call wrote, in order: no need to read it back
            b._ids = list(seen)
        return b

    async def reindex(
        self,
        source: Any,
        *,
        iqdb: bool = True,
        batch: str | None = None,
        pattern: str = "**/*",
        chunk_size: int = 1000,
    ) -> Batch:
        """Regenerate thumbnail, variants and IQDB entry for every image of a folder tree or DataFrame.

        ``source``: a folder (images found recursively; image id = path relative to it, without the
        suffix, ``/`` as ``__``) or a DataFrame with ``image_id`` and ``source_path`` columns. Each image
        gets one ``reindex_image`` job (id ``reindex:<image_id>``) that enqueues its ``add_to_iqdb``
        follow-up when the thumbnail exists; both are in the returned batch.
        """
        frame = image_frame(source, pattern) if not isinstance(source, pd.DataFrame) else source
        missing = {"image_id", "source_path"} - set(frame.columns)
        if missing:
            raise ConfigError(f"reindex needs columns image_id and source_path; missing {sorted(missing)}")
        name = batch or new_batch_name("reindex")
        items = [{"image_id": str(i), "source_path": str(p), "iqdb": iqdb, "batch": name}
                 for i, p in zip(frame["image_id"], frame["source_path"], strict=True)]
        return await self.enqueue_many("reindex_image", items, job_id="reindex:{image_id}", batch=name,
                                       chunk_size=chunk_size)

    def iqdb(self) -> Any:
        """The configured IQDB backend: the embedded index shared through this Redis, or the server
        at ``MEDIAQ_IQDB_URL``. Both have ``query(image_or_hash, limit, mirror=...)``; the embedded
        index also ``find_duplicates(threshold)`` as a DataFrame.

        >>> dupes = await client.iqdb().find_duplicates(90)     # doctest: +SKIP
        """
        if self.settings.iqdb_url:
            from mediaq.runtime.iqdb_server import RemoteIqdb

            return RemoteIqdb(self.settings.iqdb_url)
        from mediaq.runtime.iqdb_index import IqdbIndex

        return IqdbIndex(self.redis)

    def batch(self, name: str) -> Batch:
        """Reattach to a named batch stored in Redis (for example after a kernel restart)."""
        return Batch(self, name)

    async def batches(self) -> pd.DataFrame:
        """Every batch stored in Redis: name, function, created, jobs."""
        names = await self.redis.zrange("mediaq:batches", 0, -1)
        rows = []
        for raw in names:
            name = raw.decode()
            meta = await self.redis.hgetall(batch_key(name))
            rows.append({"batch": name, "function": meta.get(b"function", b"").decode(),
                         "created": pd.Timestamp(float(meta.get(b"created", 0)), unit="s", tz="UTC"),
                         "jobs": await self.redis.zcard(batch_key(name) + ":ids")})
        return pd.DataFrame(rows, columns=["batch", "function", "created", "jobs"])

    # -- whole-queue views ------------------------------------------------------------------
    async def queue_counts(self) -> dict[str, int]:
        """Jobs waiting in the whole queue: ``queued`` (due now) and ``deferred`` (one pipeline of two ZCOUNTs)."""
        now = int(time.time() * 1000)
        queue = self.settings.queue_name
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(queue, "-inf", now)
            pipe.zcount(queue, now + 1, "+inf")
            ready, deferred = await pipe.execute()
        return {"queued": ready, "deferred": deferred}

    async def results_frame(self, chunk: int = 2000) -> pd.DataFrame:
        """Every result in Redis as a DataFrame, oldest first (SCAN, then MGET in pipelined chunks)."""
        ids = [k.decode()[len(result_key_prefix):]
               async for k in self.redis.scan_iter(match=result_key_prefix + "*", count=5000)]
        builder = await FrameBuilder(signatures=self.signatures()).read(self.redis, ids, self.loads, chunk)
        return builder.frame().sort_values("enqueue_time", ignore_index=True)

    async def queue_frame(self, chunk: int = 2000) -> pd.DataFrame:
        """What is waiting in the queue (queued and deferred), in run order, with a ``run_at`` column."""
        entries = await self.redis.zrange(self.settings.queue_name, 0, -1, withscores=True)
        ids = [i.decode() for i, _ in entries]
        now = time.time() * 1000
        statuses = {i: ("deferred" if s > now else "queued") for i, (_, s) in zip(ids, entries, strict=True)}
        builder = await FrameBuilder(signatures=self.signatures()).read(self.redis, ids, self.loads, chunk,
                                                                        results=False)
        run_at = pd.to_datetime([s for _, s in entries], unit="ms", utc=True)
        return builder.frame(statuses=statuses, extra_columns={"run_at": run_at})


async def connect(url: str | None = None, *, settings: Settings | None = None, **overrides: Any) -> Client:
    """Connect to the queue: ``url``, else ``MEDIAQ_REDIS_URL``, else the embedded server (started if needed).

    ``overrides`` are settings (``serializer="pickle"``, ``queue_db=3``). Fails fast with
    :class:`~mediaq.errors.RedisUnavailable` (never hangs) when Redis cannot be reached.
    """
    settings = settings or Settings.load()
    if url is not None:
        overrides["redis_url"] = url
    if overrides:
        settings = settings.replace(**overrides)
    server_url = await asyncio.to_thread(resolve_redis_url, settings)
    dumps, loads = get_serializer(settings.serializer)
    timeout = settings.connect_timeout
    redis = ArqRedis(client_pool(with_db(server_url, settings.queue_db), timeout), job_serializer=dumps,
                     job_deserializer=loads, default_queue_name=settings.queue_name or default_queue_name)
    cache = aioredis.Redis(
        connection_pool=client_pool(with_db(server_url, settings.cache_db, keep_explicit=False), timeout))
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose(close_connection_pool=True)
        await cache.aclose(close_connection_pool=True)
        raise RedisUnavailable(f"cannot use Redis at {redact_url(server_url)}: {exc}. Check MEDIAQ_REDIS_URL, "
                               "or run `mediaq doctor`.") from None
    return Client(settings, server_url, redis, cache)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def image_frame(folder: Any, pattern: str = "**/*") -> pd.DataFrame:
    """``image_id``, ``source_path`` for every image file under ``folder`` (sorted, recursive)."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a folder of images")
    paths = sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    ids = [str(p.relative_to(root).with_suffix("")).replace("/", "__") for p in paths]
    return pd.DataFrame({"image_id": ids, "source_path": [str(p.absolute()) for p in paths]})


def _split_item(item: Any) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(item, dict):
        return [], dict(item)
    if isinstance(item, (tuple, list)):
        return list(item), {}
    return [item], {}


def _job_id_maker(job_id: str | Callable[[Any], str] | None) -> Callable[[Any, list[Any], dict[str, Any], int], str]:
    if job_id is None:
        return lambda item, args, kwargs, index: uuid.uuid4().hex
    if callable(job_id):
        return lambda item, args, kwargs, index: str(job_id(item))
    if isinstance(job_id, str):
        def fmt(item: Any, args: list[Any], kwargs: dict[str, Any], index: int) -> str:
            try:
                return job_id.format(*args, index=index, **kwargs)
            except (KeyError, IndexError) as exc:
                raise ConfigError(f"job_id template {job_id!r} needs {exc} but item {item!r} has no such "
                                  "field") from None
        return fmt
    raise ConfigError(f"job_id must be None, a template string or a function, not {type(job_id).__name__}")


def _to_ms(value: float | dt.timedelta | None) -> int | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if seconds < 0:
        raise ConfigError(f"a duration must be >= 0, got {value!r}")
    return round(seconds * 1000)


def _to_unix_ms(when: dt.datetime) -> int:
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1000)

