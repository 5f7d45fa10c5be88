"""A plain, read-only snapshot of the queue for dashboards, read at a fixed cost whatever the queue length.

:func:`queue_snapshot` reads only O(1) things: ``ZCOUNT`` on the queue, the workers' heartbeats
(:func:`mediaq.runtime.heartbeat.read_workers`), the outcome counters workers keep (:mod:`mediaq.runtime.stats`)
and the sizes of the bulk batches' pending sets (:func:`mediaq.runtime.bulk.bulk_state`). It
never lists job keys and never reads job bodies, so a refresh costs the same number of Redis round
trips (10 for one batch, 13 for the whole queue) with ten jobs queued or ten million.

The counts are for display: ``in_progress`` comes from heartbeats (up to one health-check interval
old) and complete/failed from counters flushed every second. ``batch.status()`` is the exact answer.

Faces draw it (:mod:`mediaq.faces.render` turns a snapshot into HTML or text); the monitor
(:mod:`mediaq.client.monitor`) reads one per refresh.

>>> snap = await queue_snapshot(client, batch)       # doctest: +SKIP
>>> snap.queued, snap.in_progress, snap.batches[0].fraction   # doctest: +SKIP
(120, 10, 0.42)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mediaq.runtime import keys
from mediaq.runtime.bulk import bulk_state
from mediaq.runtime.heartbeat import read_workers
from mediaq.runtime.stats import (
    MAX_FAILURES,
    read_batch_counts,
    read_errors,
    read_failures,
    read_queue_stats,
    read_throughput,
)

if TYPE_CHECKING:
    from mediaq.client.batch import Batch
    from mediaq.client.connection import Client

__all__ = [
    "RATE_WINDOW",
    "BatchCounts",
    "ErrorGroup",
    "Failure",
    "LocalWorkerInfo",
    "Snapshot",
    "WorkerInfo",
    "queue_snapshot",
    "throughput_rate",
]

#: Seconds of throughput history a snapshot carries (the chart's width).
DEFAULT_WINDOW = 120
#: Seconds over which rates are averaged.
RATE_WINDOW = 30


# -- the snapshot -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerInfo:
    """One live worker, from its heartbeat."""

    host: str
    pid: int
    #: Seconds since its last heartbeat.
    age: float
    #: Jobs running in it at its last heartbeat.
    ongoing: int
    #: Jobs it finished since it started.
    finished: int
    max_jobs: int | None = None


@dataclass(frozen=True)
class LocalWorkerInfo:
    """The notebook's own worker subprocess (a :class:`mediaq.LocalWorker`)."""

    alive: bool
    pid: int | None
    returncode: int | None = None


@dataclass(frozen=True)
class BatchCounts:
    """A batch's progress from its counters: ``pending`` is queued, deferred or running."""

    name: str
    function: str | None
    total: int
    complete: int
    failed: int
    #: ``{function: {"complete": n, "failed": n, "aborted": n}}``
    by_function: dict[str, dict[str, int]] = field(default_factory=dict)
    #: jobs stopped by ``batch.abort()`` (not failures: nothing to retry or look into)
    aborted: int = 0
    #: a bulk batch's jobs not released into the queue yet (part of ``pending``; see mediaq.runtime.bulk)
    held: int = 0
    #: a bulk batch that ``batch.pause()`` holds
    paused: bool = False
    #: a bulk batch (released a window at a time, see mediaq.runtime.bulk)
    bulk: bool = False

    @property
    def done(self) -> int:
        return min(self.total, self.complete + self.failed + self.aborted)

    @property
    def pending(self) -> int:
        return max(0, self.total - self.complete - self.failed - self.aborted)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.pending == 0


@dataclass(frozen=True)
class Failure:
    """One recent failure (newest first in :attr:`Snapshot.failures`)."""

    job_id: str
    function: str
    type: str
    message: str
    code: str | None = None
    time: float | None = None
    batch: str | None = None

    @property
    def short_type(self) -> str:
        """``mediaq.errors.ConfigError`` -> ``ConfigError``."""
        return self.type.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ErrorGroup:
    """Failures with the same function, error type and code, counted over every attempt."""

    function: str
    type: str
    code: str | None
    count: int

    @property
    def short_type(self) -> str:
        return self.type.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Snapshot:
    """What the queue and its workers are doing, at :attr:`time` (epoch seconds)."""

    time: float
    queue_name: str = keys.DEFAULT_QUEUE
    #: Whole queue: ready to run and not running (ZCOUNT up to now, less the jobs running), bulk
    #: batches' jobs not released into arq's queue yet included (:attr:`held`).
    queued: int = 0
    #: Of :attr:`queued`: bulk jobs held back so live jobs go first (:mod:`mediaq.runtime.bulk`).
    held: int = 0
    #: Whole queue: scheduled later (deferred, or waiting for a retry).
    deferred: int = 0
    #: Whole queue: running now, from the workers' heartbeats.
    in_progress: int = 0
    #: Whole queue: finished since the counters were created.
    complete: int = 0
    failed: int = 0
    aborted: int = 0
    #: Whole queue, finished jobs by function: ``{function: {"complete": n, "failed": n, "aborted": n}}``.
    by_function: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The dashboard's batch, or the most recent batches when it watches the whole queue.
    batches: tuple[BatchCounts, ...] = ()
    workers: tuple[WorkerInfo, ...] = ()
    local_worker: LocalWorkerInfo | None = None
    #: The last failures, newest first (only the batch's when a batch is watched).
    failures: tuple[Failure, ...] = ()
    #: Failures grouped by function, error type and code, most first (the batch's when a batch is watched).
    errors: tuple[ErrorGroup, ...] = ()
    #: ``(epoch second, complete, failed)`` for every second of the window, oldest first.
    throughput: tuple[tuple[int, int, int], ...] = ()
    #: Why this snapshot is empty (Redis unreachable...), else ``None``.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> dict[str, int]:
        """The whole queue's counts by state."""
        return {"queued": self.queued, "deferred": self.deferred, "in_progress": self.in_progress,
                "complete": self.complete, "failed": self.failed, "aborted": self.aborted}

    @property
    def waiting(self) -> int:
        """Jobs that need a worker: queued now, or running (the whole queue)."""
        return self.queued + self.in_progress

    @property
    def stranded(self) -> bool:
        """Jobs are waiting and no worker is alive to take them."""
        return not self.error and not self.workers and self.queued > 0

    def rate(self, window: int = RATE_WINDOW) -> float:
        """Jobs finished per second over the last ``window`` whole seconds (see :func:`throughput_rate`)."""
        return throughput_rate(self.throughput, self.time, window)


def throughput_rate(throughput: tuple[tuple[int, int, int], ...], now: float, window: int = RATE_WINDOW) -> float:
    """Jobs/s over the ``window`` seconds before the last whole second (workers flush counters every
    second, so the current and previous seconds are still filling). Averaged from the first busy
    second when activity started inside the window, so a burst is not diluted.

    >>> throughput_rate(((98, 0, 0), (99, 5, 1), (100, 6, 0), (101, 2, 0)), now=102.5, window=30)
    6.0
    """
    end = int(now) - 1  # seconds before `end` are complete
    busy = [(s, c + f) for s, c, f in throughput if end - window <= s < end and c + f]
    if not busy:
        return 0.0
    return sum(n for _, n in busy) / max(1, end - busy[0][0])


# -- reading it -------------------------------------------------------------------------------------
async def queue_snapshot(client: Client, batch: Batch | str | None = None, local_worker: Any = None, *,
                         window: int = DEFAULT_WINDOW, failures: int = 10, recent_batches: int = 3,
                         timeout: float = 5.0) -> Snapshot:
    """Read a :class:`Snapshot` in a fixed number of round trips (never raises for Redis errors:
    they come back as :attr:`Snapshot.error`).

    ``batch``: a :class:`~mediaq.client.batch.Batch` or batch name to follow (its failures only); ``None``
    follows the whole queue and the ``recent_batches`` newest batches. ``local_worker``: a
    :class:`~mediaq.LocalWorker` whose state to include. ``window``: seconds of throughput history.

    >>> snap = await queue_snapshot(client)     # doctest: +SKIP
    >>> snap.counts()                           # doctest: +SKIP
    {'queued': 120, 'deferred': 0, 'in_progress': 10, 'complete': 870, 'failed': 2}
    """
    redis = client.redis
    queue = client.settings.queue_name
    name = getattr(batch, "name", batch)
    local = _local_info(local_worker)
    now = time.time()
    try:
        async with asyncio.timeout(timeout):
            ready_deferred, stats, workers, raw_failures, per_second, batches, errors, bulk = await asyncio.gather(
                _zcounts(redis, queue, now),
                read_queue_stats(redis),
                read_workers(redis),
                read_failures(redis, MAX_FAILURES if name else failures),
                read_throughput(redis, window),
                _batch_counts(redis, name, recent_batches),
                read_errors(redis, name),
                bulk_state(redis),
            )
    except TimeoutError:
        return Snapshot(time=now, queue_name=queue, local_worker=local,
                        error=f"Redis unreachable: no answer within {timeout:g} s")
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        return Snapshot(time=now, queue_name=queue, local_worker=local, error=f"Redis unreachable: {exc}")
    except RedisError as exc:
        return Snapshot(time=now, queue_name=queue, local_worker=local,
                        error=f"Redis error: {type(exc).__name__}: {exc}")
    ready, deferred = ready_deferred
    held, paused = bulk
    batches = tuple(replace(b, held=held.get(keys.batch_pending(b.name), 0),
                            paused=keys.batch_pending(b.name) in paused) for b in batches)
    infos = tuple(_worker_info(w, now) for w in workers)
    in_progress = sum(w.ongoing for w in infos)
    fails = [_failure(f) for f in raw_failures]
    if name:
        fails = [f for f in fails if f.batch == name]
    first = int(now) - window + 1
    return Snapshot(
        time=now, queue_name=queue,
        queued=max(0, ready - in_progress) + sum(held.values()),  # arq keeps a running job in the queue
        held=sum(held.values()),
        deferred=deferred, in_progress=in_progress,
        complete=sum(c.get("complete", 0) for c in stats.values()),
        failed=sum(c.get("failed", 0) for c in stats.values()),
        aborted=sum(c.get("aborted", 0) for c in stats.values()),
        errors=tuple(ErrorGroup(*g) for g in errors), by_function=stats, batches=batches, workers=infos,
        local_worker=local, failures=tuple(fails[:failures]),
        throughput=tuple((s, per_second.get(s, {}).get("complete", 0), per_second.get(s, {}).get("failed", 0))
                         for s in range(first, int(now) + 1)),
    )


async def _zcounts(redis: Any, queue: str, now: float) -> tuple[int, int]:
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zcount(queue, f"({now_ms}", "+inf")
        ready, deferred = await pipe.execute()
    return int(ready), int(deferred)


async def _batch_counts(redis: Any, name: str | None, recent: int) -> tuple[BatchCounts, ...]:
    if name:
        names = [name]
    elif recent > 0:
        names = [n.decode() for n in await redis.zrevrange(keys.BATCHES, 0, recent - 1)]
    else:
        names = []
    if not names:
        return ()
    async with redis.pipeline(transaction=False) as pipe:
        for n in names:
            pipe.hmget(keys.batch(n), ["function", "priority"])
        meta = await pipe.execute()
    counts = await asyncio.gather(*(read_batch_counts(redis, n) for n in names))
    out = []
    for n, (f, priority), c in zip(names, meta, counts, strict=True):
        by_function = c["by_function"]
        if len(by_function) == 1:  # its failures less the retried ones, as the batch's own figures
            by_function = {next(iter(by_function)): {"complete": c["complete"], "failed": c["failed"],
                                                      "aborted": c["aborted"]}}
        out.append(BatchCounts(name=n, function=f.decode() if f else None, total=c["total"],
                               complete=c["complete"], failed=c["failed"], aborted=c["aborted"],
                               by_function=by_function, bulk=priority == b"bulk"))
    return tuple(out)


def _worker_info(beat: dict[str, Any], now: float) -> WorkerInfo:
    return WorkerInfo(host=str(beat.get("host", "?")), pid=int(beat.get("pid", 0)),
                      age=max(0.0, now - float(beat.get("last", now))), ongoing=int(beat.get("ongoing", 0)),
                      finished=int(beat.get("finished", 0)), max_jobs=beat.get("max_jobs"))


def _failure(raw: dict[str, Any]) -> Failure:
    return Failure(job_id=str(raw.get("job_id")), function=str(raw.get("function")), type=str(raw.get("type") or "?"),
                   message=str(raw.get("message") or ""), code=raw.get("code"), time=raw.get("time"),
                   batch=raw.get("batch"))


def _local_info(worker: Any) -> LocalWorkerInfo | None:
    if worker is None:
        return None
    return LocalWorkerInfo(alive=bool(worker.alive), pid=worker.pid, returncode=getattr(worker, "returncode", None))
