"""The arq worker's settings and hooks for mediaq (``arq mediaq.worker.WorkerSettings`` builds them).

:func:`build_worker_settings` turns :class:`~mediaq.runtime.settings.Settings` and the registered job
specs into arq's ``WorkerSettings``: 3 tries, 300 s timeout (less for short jobs, see each ``@job``),
backoff 5 s x try, 10 jobs at once, queue on Redis db 1. The job specs are handed in by the entry
point (:mod:`mediaq.worker`), which sits above the jobs.

CPU-bound work runs in a process pool sized to the cores (:mod:`mediaq.runtime.procpool`: ``forkserver``
processes the event loop writes calls to directly, no executor threads), so one worker keeps every
core busy while its event loop still answers health checks and aborts.

Each worker claims the jobs it runs and runs a janitor (:mod:`mediaq.runtime.recovery`): the jobs of a worker
that died (SIGKILL, OOM) run again within seconds instead of after arq's in-progress timeout, and
the temporary files it was writing are removed. It also keeps bulk batches flowing
(:mod:`mediaq.runtime.bulk`: a bounded window of their jobs in the queue, topped up as jobs end).
Redis calls retry for about 11 s, so a restart of the server (the embedded one is restarted by the
worker's watchdog) does not stop the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mediaq.runtime import keys
from mediaq.runtime.connections import WORKER_RETRIES, client_pool, redis_settings_for, with_db
from mediaq.runtime.jobspec import JobSpec
from mediaq.runtime.settings import Settings

__all__ = ["LIFELINE_FD_ENV", "READY_FILE_ENV", "build_worker_settings", "checked_job_loads", "job_record_problem"]

logger = logging.getLogger("arq.mediaq")  # under "arq" so the arq CLI's log config shows it
READY_FILE_ENV = "MEDIAQ_WORKER_READY_FILE"
#: The read end of a pipe held open by the process that started this worker (mediaq.start_worker):
#: end-of-file means that process ended, however it ended, and the worker shuts down.
LIFELINE_FD_ENV = "MEDIAQ_WORKER_LIFELINE_FD"


async def _startup(ctx: dict[str, Any]) -> None:
    from mediaq.runtime.bulk import BulkFeeder
    from mediaq.runtime.connections import async_client
    from mediaq.runtime.jobspec import make_process_pool
    from mediaq.runtime.recovery import Claims, Janitor, WorkerIdentity
    from mediaq.runtime.worker_loop import Doorbell

    settings: Settings = ctx["mediaq_settings"]
    ctx["settings"] = settings
    ctx["pool"] = make_process_pool(settings.processes)
    ctx["resources"] = {}  # what jobs keep per process (mediaq.jobs.resources): arq copies ctx per job
    ctx["cache"] = async_client(with_db(ctx["mediaq_url"], settings.cache_db, keep_explicit=False),
                                settings.connect_timeout, retries=WORKER_RETRIES)
    if settings.redis_url is None:  # embedded: bring the server back if it dies under us
        ctx["watchdog"] = asyncio.create_task(_watch_embedded(settings))
    ctx["stats"] = {"ongoing": 0}
    # recovery: free the jobs of dead workers (a predecessor with our pid too) before claiming any
    identity = ctx["identity"] = WorkerIdentity.current(storage=settings.storage)
    ctx["heartbeat"] = asyncio.create_task(_heartbeat(ctx))
    claims = ctx["claims"] = Claims(ctx["redis"], identity)
    interval = settings.health_check_interval
    janitor = ctx["janitor_obj"] = Janitor(ctx["redis"], identity, interval=interval, heartbeat_ttl=3 * interval,
                                           claims=claims)
    dead: dict[str, Any] = {}
    try:
        dead = await janitor.free_dead()
    except Exception:  # Redis away: the janitor's loop tries again
        logger.warning("could not check for dead workers at start", exc_info=True)
    await claims.register()
    ctx["claims_writer"] = asyncio.create_task(claims.run())
    ctx["janitor"] = asyncio.create_task(janitor.run(startup_dead=dead))
    ctx["stats_flush"] = asyncio.create_task(_flush_stats(ctx))
    feeder = ctx["bulk_feeder"] = BulkFeeder(ctx["redis"], settings)  # keeps bulk batches flowing: runtime.bulk
    ctx["bulk"] = asyncio.create_task(feeder.run())
    bell = Doorbell(ctx["redis"], keys.wake_channel(settings.queue_name))
    ctx["doorbell"] = asyncio.create_task(bell.run())
    bell.install()  # arq's poll loop runs next, in this task: its sleep ends when a client rings
    _watch_lifeline()
    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        Path(ready).write_text(str(os.getpid()))
    logger.info("mediaq worker ready: pid=%d, %d processes, max_jobs=%d", os.getpid(), settings.processes,
                settings.max_jobs)


async def _shutdown(ctx: dict[str, Any]) -> None:
    for name in ("watchdog", "heartbeat", "stats_flush", "janitor", "claims_writer", "bulk", "doorbell"):
        task = ctx.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    with contextlib.suppress(Exception):
        await ctx["worker_stats"].flush(ctx["redis"])
    with contextlib.suppress(Exception):
        await ctx["redis"].delete(_heartbeat_key())
        await ctx["redis"].zrem(keys.WORKERS, _heartbeat_key())
    if "claims" in ctx:
        await ctx["claims"].unregister()
    pool = ctx.pop("pool", None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    cache = ctx.pop("cache", None)
    if cache is not None:
        await cache.aclose()
    await _close_resources(ctx.pop("resources", {}))


async def _close_resources(resources: dict[str, Any]) -> None:
    """Close what jobs kept in ``resources(ctx)``: executors, DB engines and stores, clients.
    ctx itself is left alone: its Redis pool is arq's, closed by arq after this hook."""
    from concurrent.futures import Executor

    for value in resources.values():
        if isinstance(value, dict):
            await _close_resources(value)
            continue
        if isinstance(value, Executor):
            value.shutdown(wait=True, cancel_futures=True)
            continue
        closer = getattr(value, "aclose", None) or getattr(value, "close", None) or getattr(value, "dispose", None)
        if callable(closer) and not isinstance(value, type):
            with contextlib.suppress(Exception):
                result = closer()
                if asyncio.iscoroutine(result):
                    await result


def _heartbeat_key() -> str:
    import socket

    return keys.heartbeat(socket.gethostname(), os.getpid())


async def _heartbeat(ctx: dict[str, Any]) -> None:
    """Write this worker's heartbeat every second, so its running and finished figures are live; it
    expires after three health-check intervals. It carries the process identity (start time, boot
    and pid namespace), so readers on the same machine tell a killed worker at once."""
    import json
    import socket
    import time

    settings: Settings = ctx["settings"]
    identity = ctx["identity"]
    key, started = _heartbeat_key(), time.time()
    while True:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "last": time.time(),
                  "max_jobs": settings.max_jobs, "processes": settings.processes, **ctx["stats"],
                  "finished": ctx["worker_stats"].finished, "created": identity.created,
                  "boot_id": identity.boot_id, "pidns": identity.pidns}
        try:
            async with ctx["redis"].pipeline(transaction=False) as pipe:
                pipe.set(key, json.dumps(record), px=int(settings.health_check_interval * 3000))
                pipe.zadd(keys.WORKERS, {key: time.time()})
                await pipe.execute()
        except Exception:  # Redis away: the next beat will tell
            logger.debug("heartbeat failed", exc_info=True)
        await asyncio.sleep(min(1.0, settings.health_check_interval))


async def _flush_stats(ctx: dict[str, Any], interval: float = 1.0) -> None:
    """Write the outcome counters (see :mod:`mediaq.runtime.stats`) every second."""
    while True:
        await asyncio.sleep(interval)
        try:
            await ctx["worker_stats"].flush(ctx["redis"])
        except Exception:  # kept for the next flush
            logger.debug("stats flush failed", exc_info=True)


async def _job_start(ctx: dict[str, Any]) -> None:
    ctx["stats"]["ongoing"] += 1
    ctx["claims"].claim(ctx["job_id"])  # no I/O: written in batches (see mediaq.runtime.recovery.Claims)


async def _job_end(ctx: dict[str, Any]) -> None:
    ctx["stats"]["ongoing"] -= 1
    ctx["claims"].release(ctx["job_id"])
    ctx["bulk_feeder"].poke()  # a slot is free: release the next bulk jobs (no I/O here)


def _watch_lifeline() -> None:
    """Shut down (as on SIGTERM) when the process that started this worker ends (see LIFELINE_FD_ENV)."""
    import signal

    fd = os.environ.pop(LIFELINE_FD_ENV, None)
    if not fd:
        return
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        try:
            if os.read(int(fd), 1):  # nobody writes; anything but end-of-file is ignored
                return
        except OSError:
            pass
        loop.remove_reader(int(fd))
        logger.warning("the process that started this worker ended: shutting down")
        os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(int(fd), parent_gone)


async def _watch_embedded(settings: Settings, interval: float = 1.0) -> None:
    from mediaq.runtime.server import EmbeddedServer

    server = EmbeddedServer(settings.state_dir, settings.redis_server, settings.redis_bind)
    while True:
        await asyncio.sleep(interval)
        try:
            status = await asyncio.to_thread(server.status)
            if not status["running"]:
                logger.warning("embedded Redis server is down; starting it again")
                await asyncio.to_thread(server.ensure_running)
        except Exception:  # never let the watchdog kill the worker
            logger.exception("could not restart the embedded Redis server")


_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31: what datetime can hold


def job_record_problem(record: Any) -> str | None:
    """What is wrong with a decoded arq job record, or ``None`` when arq can run it safely.

    arq trusts the record's shape: an enqueue time that is text, ``None`` or out of range, a try
    count that is text, or a function name that is a list raise *outside* its per-job error handling
    and end the worker's main loop. A worker must survive whatever someone wrote into Redis.

    >>> job_record_problem({"t": None, "f": "noop", "a": [1], "k": {}, "et": 1700000000000}) is None
    True
    >>> job_record_problem({"t": None, "f": "noop", "a": [], "k": {}, "et": "yesterday"})
    "enqueue time 'et' must be epoch milliseconds, not 'yesterday'"
    """
    if not isinstance(record, dict):
        return f"a job record is a map, not {type(record).__name__}"
    missing = [k for k in ("f", "a", "k", "et") if k not in record]
    if missing:
        return f"missing field(s) {missing}"
    f, a, k, t, et = record["f"], record["a"], record["k"], record.get("t"), record["et"]
    if not isinstance(f, str):
        return f"function name 'f' must be text, not {type(f).__name__}"
    if not isinstance(a, (list, tuple)):
        return f"arguments 'a' must be a list, not {type(a).__name__}"
    if not isinstance(k, dict) or not all(isinstance(key, str) for key in k):
        return "keyword arguments 'k' must be a map with text keys"
    if t is not None and (isinstance(t, bool) or not isinstance(t, int)):
        return f"try 't' must be an integer or null, not {t!r:.50}"
    if isinstance(et, bool) or not isinstance(et, (int, float)) or not 0 <= et <= _MAX_EPOCH_MS:
        return f"enqueue time 'et' must be epoch milliseconds, not {et!r:.50}"
    return None


def checked_job_loads(loads: Any) -> Any:
    """Wrap a deserializer so that a malformed job record fails that job alone: arq reports it as
    ``unable to deserialize job`` (see :func:`job_record_problem`)."""
    def checked(data: bytes) -> Any:
        record = loads(data)
        problem = job_record_problem(record)
        if problem:
            raise ValueError(f"malformed job record: {problem}")
        return record

    return checked


def worker_redis(settings: Settings, url: str, *, job_serializer: Any, job_deserializer: Any) -> Any:
    """The worker's ``ArqRedis`` on the queue db: a :func:`~mediaq.runtime.connections.client_pool` with the
    worker's retry budget, for a single server and for Sentinels alike (arq's own Sentinel path has
    neither timeouts nor retries), in the durable mode of ``settings`` (:mod:`mediaq.runtime.replication`:
    a result counts as written once the replicas have it)."""
    from mediaq.runtime.replication import Durability, durable_arq_redis

    pool = client_pool(with_db(url, settings.queue_db), settings.connect_timeout, retries=WORKER_RETRIES)
    return durable_arq_redis(pool, Durability.from_settings(settings), job_serializer=job_serializer,
                             job_deserializer=job_deserializer, default_queue_name=settings.queue_name)


def build_worker_settings(settings: Settings, jobs: Mapping[str, JobSpec]) -> type:
    """A ``WorkerSettings`` class for ``settings`` running ``jobs`` (arq reads its attributes)."""
    from arq.worker import func

    from mediaq.runtime.serialization import get_serializer
    from mediaq.runtime.server import resolve_redis_url
    from mediaq.runtime.worker_loop import harden_arq_worker

    harden_arq_worker()
    url = resolve_redis_url(settings)
    from mediaq.runtime.stats import WorkerStats

    stats = WorkerStats(*get_serializer(settings.serializer))
    loads = checked_job_loads(stats.loads)
    functions = [
        func(spec.coroutine, name=spec.name, timeout=spec.timeout, max_tries=spec.max_tries,
             keep_result=spec.keep_result)
        for spec in jobs.values()
    ]
    attrs = {
        "functions": functions,
        "redis_settings": redis_settings_for(settings, url),  # for `arq --check`; the worker runs on redis_pool
        "redis_pool": worker_redis(settings, url, job_serializer=stats.dumps, job_deserializer=loads),
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout,
        "max_tries": settings.max_tries,
        "keep_result": settings.keep_result,
        "health_check_interval": settings.health_check_interval,
        "poll_delay": settings.poll_delay,
        "allow_abort_jobs": True,
        "job_serializer": stats.dumps,
        "job_deserializer": loads,
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        "on_job_start": _job_start,
        "after_job_end": _job_end,
        "ctx": {"mediaq_settings": settings, "mediaq_url": url, "worker_stats": stats},
    }
    return type("WorkerSettings", (), attrs)

