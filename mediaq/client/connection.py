"""The notebook client: ``client = await mediaq.connect()``.

>>> import mediaq
>>> client = await mediaq.connect()                                     # doctest: +SKIP
>>> frame = mediaq.image_frame("data/")                                 # doctest: +SKIP
>>> batch = await client.enqueue_many("create_thumbnail", frame.to_dict("records"),  # doctest: +SKIP
...                                   job_id="thumb:{image_id}")
>>> await batch.wait(progress=True)                                     # doctest: +SKIP
>>> df = await batch.results()                                          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.jobs import DeserializationError, Job
from redis.exceptions import RedisError

from mediaq.client.base import ClientBase, Views
from mediaq.client.batch import Batch, new_batch_name
from mediaq.client.enqueue import BulkEnqueue, EnqueueOptions
from mediaq.client.frames import FrameBuilder
from mediaq.client.library import image_frame, plain_id
from mediaq.errors import ConfigError, JobError, RedisUnavailable
from mediaq.runtime import bulk, keys
from mediaq.runtime.connections import client_pool, with_db
from mediaq.runtime.iqdb_ids import PostIdMap
from mediaq.runtime.iqdb_index import IqdbIndex
from mediaq.runtime.iqdb_server import RemoteIqdb
from mediaq.runtime.replication import Durability, durable_arq_redis
from mediaq.runtime.server import resolve_redis_url
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["Client", "connect"]


class Client(ClientBase):
    """A connection to mediaq's queue (Redis db ``queue_db``) and cache (db ``cache_db``).

    Build it with :func:`connect`. Use as ``async with`` or call :meth:`close`.
    """

    def __init__(self, settings: Settings, url: str, redis: ArqRedis, cache: aioredis.Redis,
                 views: Views | None = None) -> None:
        super().__init__(settings, url, views)
        self.redis = redis
        self.cache = cache
        try:  # the loop its connections belong to (a monitor runs every refresh and button action there)
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    async def close(self) -> None:
        """Close both connection pools."""
        await self.redis.aclose(close_connection_pool=True)
        await self.cache.aclose(close_connection_pool=True)

    aclose = close

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        The options are arq's, with its underscores (see :class:`~mediaq.client.enqueue.EnqueueOptions`).
        """
        self.check_function(function)
        options = EnqueueOptions.merge(_job_id=_job_id, _defer_by=_defer_by, _defer_until=_defer_until,
                                       _expires=_expires)
        if options.job_id is not None and not isinstance(options.job_id, str):
            raise ConfigError("enqueue_job takes a job id string; templates and functions are for enqueue_many")
        try:
            job = await self.redis.enqueue_job(function, *args, _job_id=options.job_id, _defer_by=options.defer_by,
                                               _defer_until=options.defer_until, _expires=options.expires,
                                               **kwargs)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"could not enqueue {function!r}: {exc}") from exc
        if job and options.defer_by is None and options.defer_until is None:
            await self._wake_workers()
        return job.job_id if job else None

    async def _wake_workers(self) -> None:
        """Tell idle workers a job is due now, so they poll at once rather than after ``poll_delay``
        (a hint: the job is queued either way, so a failure here is not the caller's)."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.publish(keys.wake_channel(self.settings.queue_name), 1)

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

    async def job_info(self, job_id: str) -> dict[str, Any]:
        """Everything about one job, as a dict: function, arguments by name, status, tries, times, and
        its result fields or error type, code, message and traceback (what ``HGETALL arq:job:<id>`` and
        ``GET arq:result:<id>`` hold, decoded). ``status`` is ``not_found`` for an unknown id.

        >>> info = await client.job_info("thumb:42")     # doctest: +SKIP
        >>> info["status"], info["error_message"]         # doctest: +SKIP
        ('failed', 'cannot identify image file')
        """
        from mediaq.runtime.scripts import STATES, status_codes

        builder = await FrameBuilder(signatures=self.signatures()).read(self.redis, [job_id], self.loads)
        statuses = {}
        if builder.pending_ids:
            (code,) = await status_codes(self.redis, self.settings.queue_name, [job_id], int(time.time() * 1000))
            statuses[job_id] = STATES[code] if code < len(STATES) else "complete"
        row = builder.frame(statuses=statuses).iloc[0].to_dict()
        return {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in row.items()}

    async def abort_job(self, job_id: str) -> None:
        """Ask workers to abort ``job_id`` (queued: never started; running: cancelled)."""
        await self.redis.zadd(keys.ABORT_SET, {job_id: int(time.time() * 1000)})

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
        force: bool = False,
        durable: int | bool | None = None,
        priority: str | None = None,
        _job_id: str | Callable[[Any], str] | None = None,
        _defer_by: float | dt.timedelta | None = None,
        _defer_until: dt.datetime | None = None,
        _expires: float | dt.timedelta | None = None,
    ) -> Batch:
        """Enqueue one job per item, in atomic chunks, and return the :class:`~mediaq.client.batch.Batch`.

        ``items``: dicts (keyword arguments), tuples (positional arguments) or single values (one
        positional argument). ``job_id``: ``None`` (random ids), a template formatted with each
        item (``"thumb:{image_id}"``; positional items as ``{0}``), or a function of the item.
        Ids that exist as a job or a result are skipped, not overwritten (``batch.skipped``), so a
        rerun with deterministic ids does not duplicate work; ``force=True`` runs the finished ones
        again (their old results are replaced), skipping only jobs still queued or running. ``batch``
        names the batch (default: a new name); the same name again adds to that batch. ``durable``:
        durable mode for this call (the number of replicas each chunk must reach before it counts as
        written; default: the ``durable_replicas`` setting, see :mod:`mediaq.runtime.replication`).
        ``priority``: ``"live"`` puts every job in the queue now, in enqueue order with the
        application's own jobs; ``"bulk"`` releases them a window at a time as the workers have
        room, so jobs enqueued meanwhile (an upload's thumbnail) wait for at most that window, and
        bulk batches take turns (:mod:`mediaq.runtime.bulk`; ``batch.pause()``/``resume()``).
        Default: the batch's priority when adding to one, else live.
        The options may also be spelled as
        ``enqueue_job`` spells them (``_job_id``, ``_defer_by``...; see
        :class:`~mediaq.client.enqueue.EnqueueOptions`).
        """
        self.check_function(function)
        options = EnqueueOptions.merge(job_id=job_id, defer_by=defer_by, defer_until=defer_until, expires=expires,
                                       _job_id=_job_id, _defer_by=_defer_by, _defer_until=_defer_until,
                                       _expires=_expires)
        if priority is None:
            stored = await self.redis.hget(keys.batch(batch), "priority") if batch else None
            priority = stored.decode() if stored else "live"
        view = self.views.progress(None, "enqueue") if progress else None
        made = await BulkEnqueue(self, function, items, options, batch=batch, chunk_size=chunk_size,
                                 progress=view, force=force, priority=priority,
                                 durability=Durability.from_settings(self.settings, durable)).run()
        if priority == "bulk":  # the first window now, without waiting for a worker's next top-up
            await bulk.release(self.redis, self.settings)
        return made

    async def reindex(
        self,
        source: Any,
        *,
        iqdb: bool = True,
        batch: str | None = None,
        pattern: str = "**/*",
        chunk_size: int = 1000,
        force: bool = False,
        priority: str = "bulk",
    ) -> Batch:
        """Regenerate thumbnail, variants and IQDB entry for every image of a folder tree or DataFrame.

        ``source``: a folder (images found recursively; image id = path relative to it, extension
        included, ``/`` as ``__``: see :func:`~mediaq.client.library.image_frame`) or a DataFrame with
        ``image_id`` and ``source_path`` columns (integer ids stay integers). Each image gets one
        ``reindex_image`` job (id ``reindex:<image_id>``) that enqueues its ``add_to_iqdb`` follow-up
        when the thumbnail exists; both are in the returned batch.

        A rerun within ``keep_result`` (a day) skips the images already done (``batch.skipped``);
        ``force=True`` does them all again, follow-ups included (after changing the thumbnail size or
        the IQDB server, say). Jobs still queued or running are never doubled. ``priority``: bulk by
        default, so the application's own jobs keep running first (see :meth:`enqueue_many`).
        """
        frame = image_frame(source, pattern) if not isinstance(source, pd.DataFrame) else source
        missing = {"image_id", "source_path"} - set(frame.columns)
        if missing:
            raise ConfigError(f"reindex needs columns image_id and source_path; missing {sorted(missing)}")
        name = batch or new_batch_name("reindex")
        redo = {"force": True} if force else {}
        items = [{"image_id": plain_id(i), "source_path": str(p), "iqdb": iqdb, "batch": name, **redo}
                 for i, p in zip(frame["image_id"], frame["source_path"], strict=True)]
        return await self.enqueue_many("reindex_image", items, job_id="reindex:{image_id}", batch=name,
                                       chunk_size=chunk_size, force=force, priority=priority)

    def iqdb(self) -> IqdbIndex | RemoteIqdb:
        """The configured IQDB backend: the embedded index shared through this Redis, or the server
        at ``MEDIAQ_IQDB_URL``. Both have ``query(image_or_hash, limit, mirror=...)``; the embedded
        index also ``find_duplicates(threshold)`` as a DataFrame.

        >>> dupes = await client.iqdb().find_duplicates(90)     # doctest: +SKIP
        """
        if self.settings.iqdb_url:
            return RemoteIqdb(self.settings.iqdb_url, ids=PostIdMap(self.redis))
        return IqdbIndex(self.redis)

    def batch(self, name: str) -> Batch:
        """Reattach to a named batch stored in Redis (for example after a kernel restart)."""
        return Batch(self, name)

    async def batches(self) -> pd.DataFrame:
        """Every batch stored in Redis: name, function, created, jobs."""
        names = await self.redis.zrange(keys.BATCHES, 0, -1)
        rows = []
        for raw in names:
            name = raw.decode()
            meta = await self.redis.hgetall(keys.batch(name))
            rows.append({"batch": name, "function": meta.get(b"function", b"").decode(),
                         "created": pd.Timestamp(float(meta.get(b"created", 0)), unit="s", tz="UTC"),
                         "jobs": await self.redis.zcard(keys.batch_ids(name))})
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
        ids = [k.decode()[len(keys.RESULT_PREFIX):]
               async for k in self.redis.scan_iter(match=keys.RESULT_PREFIX + "*", count=5000)]
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


async def connect(url: str | None = None, *, settings: Settings | None = None, views: Views | None = None,
                  **overrides: Any) -> Client:
    """Connect to the queue: ``url``, else ``MEDIAQ_REDIS_URL``, else the embedded server (started if needed).

    ``overrides`` are settings (``serializer="pickle"``, ``queue_db=3``). Fails fast with
    :class:`~mediaq.errors.RedisUnavailable` (never hangs) when Redis cannot be reached. ``views``:
    what draws progress and dashboards (:func:`mediaq.connect` passes the faces'; default: nothing).
    """
    settings = settings or Settings.load()
    if url is not None:
        overrides["redis_url"] = url
    if overrides:
        settings = settings.replace(**overrides)
    server_url = await asyncio.to_thread(resolve_redis_url, settings)
    client_base = ClientBase(settings, server_url)
    timeout = settings.connect_timeout
    redis = durable_arq_redis(  # in durable mode, enqueue_job waits for the replicas (see runtime.replication)
        client_pool(with_db(server_url, settings.queue_db), timeout), Durability.from_settings(settings),
        job_serializer=client_base.dumps, job_deserializer=client_base.loads,
        default_queue_name=settings.queue_name or keys.DEFAULT_QUEUE)
    cache = aioredis.Redis(
        connection_pool=client_pool(with_db(server_url, settings.cache_db, keep_explicit=False), timeout))
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose(close_connection_pool=True)
        await cache.aclose(close_connection_pool=True)
        hint = (" The TLS handshake failed: check the URL's ssl_ca_certs (and ssl_certfile/ssl_keyfile if the "
                "server asks for a client certificate)." if "SSL" in str(exc) or "certificate" in str(exc) else "")
        raise RedisUnavailable(f"cannot use Redis at {redact_url(server_url)}: {exc}.{hint} Check MEDIAQ_REDIS_URL, "
                               "or run `mediaq doctor`.") from None
    if await redis.exists(keys.BULK_ACTIVE):  # bulk batches wait: carry on where a crashed kernel left off
        await bulk.release(redis, settings)
    return Client(settings, server_url, redis, cache, views)
