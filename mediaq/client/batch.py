"""A named set of jobs, stored in Redis so a restarted kernel can reattach: ``client.batch(name)``.

Keys: ``mediaq:batch:<name>`` (hash: function, created, priority), ``mediaq:batch:<name>:ids`` (sorted set
of every job id, scored by enqueue order), ``mediaq:batch:<name>:retries`` (hash: original id -> retry id),
``mediaq:batch:<name>:pending`` (a bulk batch's jobs not in the queue yet: :mod:`mediaq.runtime.bulk`),
and the sorted set ``mediaq:batches``. A retried job is replaced by its retry in counts and results
(``results(all_attempts=True)`` shows both, linked by ``retry_of``).

>>> batch = client.batch("thumbs-2026-11-30")        # doctest: +SKIP
>>> await batch.status()                             # doctest: +SKIP
{'queued': 10, 'deferred': 0, 'in_progress': 10, 'complete': 980, 'failed': 0, 'aborted': 0, 'not_found': 0}
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import pandas as pd

from mediaq.client.base import QueueClient
from mediaq.client.frames import FrameBuilder, fetch_records
from mediaq.errors import ConfigError, WaitInterrupted
from mediaq.runtime import keys
from mediaq.runtime.bulk import MIN_WINDOW, abort_pending, drop_pending, topup, window_size
from mediaq.runtime.connections import honour_cancel
from mediaq.runtime.heartbeat import read_workers
from mediaq.runtime.replication import Durability
from mediaq.runtime.scripts import STATES, batch_counts, enqueue_chunk, job_entry, status_codes
from mediaq.runtime.serialization import result_outcome

__all__ = ["Batch", "new_batch_name"]

_FINAL = ("complete", "failed", "aborted")
#: The largest share of the time :meth:`Batch.wait` spends reading the batch's status. A status read
#: walks every id on the server (0.13-0.24 s for 100k jobs, bench_queue): polled every 0.5 s it would
#: keep Redis a quarter to a half busy, beside the workers and the live application.
WAIT_READ_SHARE = 0.05


def poll_gap(poll_interval: float, took: float, share: float = WAIT_READ_SHARE) -> float:
    """Seconds to sleep after a status read that took ``took`` s: ``poll_interval``, or longer when the
    reads would otherwise take more than ``share`` of the time.

    >>> poll_gap(0.5, 0.002)   # a small batch: the interval asked for
    0.5
    >>> round(poll_gap(0.5, 0.2), 2)  # 100k jobs: 5% of the time in reads
    3.8
    """
    return max(poll_interval, took * (1.0 / share - 1.0))


def _done(counts: dict[str, int]) -> int:
    return counts.get("complete", 0) + counts.get("failed", 0) + counts.get("aborted", 0) + counts.get("not_found", 0)


def _interrupted_in_kernel() -> bool:
    """Whether a cancelled wait is a Jupyter kernel's interrupt (the kernel cancels the cell's task on its
    main thread); elsewhere a cancellation is someone's program logic and stays a cancellation."""
    import sys
    import threading

    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell" and threading.current_thread() is threading.main_thread()


def new_batch_name(function: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{function}-{stamp}-{time.time_ns() % 1_000_000:06d}"


class Batch:
    """Jobs enqueued together. ``len(batch)``, ``batch.ids``, ``await batch.status()``, ``wait()``,
    ``results()``, ``failed()``, ``retry_failed()``, ``abort()``."""

    def __init__(self, client: QueueClient, name: str) -> None:
        self.client = client
        self.name = name
        self.skipped: list[str] = []  # ids skipped at the last enqueue because they already existed
        self._ids: list[str] | None = None
        self._retries: dict[str, str] = {}
        self._final: dict[str, str] = {}  # id -> complete/failed: results never change, cache them
        self.function: str | None = None
        self.priority: str | None = None  # "live" or "bulk" (see mediaq.runtime.bulk), once known

    @property
    def key(self) -> str:
        return keys.batch(self.name)

    @property
    def ids_key(self) -> str:
        return keys.batch_ids(self.name)

    @property
    def pending_key(self) -> str:
        """The sorted set where a bulk batch's jobs wait until they are released into the queue."""
        return keys.batch_pending(self.name)

    def __repr__(self) -> str:
        n = len(self._ids) if self._ids is not None else "?"
        bulk = " bulk" if self.priority == "bulk" else ""
        return f"<Batch {self.name!r} {self.function or ''}{bulk} jobs={n}>"

    def __len__(self) -> int:
        if self._ids is None:
            raise RuntimeError("the batch's ids are not loaded yet: `await batch.load()` first "
                               "(enqueue_many and every other method load them)")
        return len(self.active_ids)

    async def register(self, function: str, priority: str = "live") -> None:
        """Record the batch in Redis (its function and creation time are kept from the first call, its
        priority is the last call's)."""
        redis = self.client.redis
        self.function, self.priority = function, priority
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(self.key, "function", function)
            pipe.hsetnx(self.key, "created", str(time.time()))
            pipe.hset(self.key, "priority", priority)
            pipe.zadd(keys.BATCHES, {self.name: time.time()}, nx=True)
            await pipe.execute()

    async def load(self) -> Batch:
        """Read the batch's ids and retry links from Redis."""
        redis = self.client.redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.ids_key, 0, -1)
            pipe.hgetall(keys.batch_retries(self.name))
            pipe.hmget(self.key, ["function", "priority"])
            raw_ids, retries, (function, priority) = await pipe.execute()
        if not raw_ids and function is None:
            raise ConfigError(f"no batch named {self.name!r} in Redis; `await client.batches()` lists them")
        self._ids = [i.decode() for i in raw_ids]
        self._retries = {k.decode(): v.decode() for k, v in retries.items()}
        self.function = function.decode() if function else None
        self.priority = priority.decode() if priority else "live"
        return self

    def set_ids(self, ids: list[str]) -> None:
        """Take ``ids`` as the batch's (its enqueue wrote exactly these), without reading them back."""
        self._ids = ids

    @property
    def ids(self) -> list[str]:
        """Every job id in the batch (latest attempt of each item)."""
        return self.active_ids

    @property
    def active_ids(self) -> list[str]:
        if self._ids is None:
            return []
        return [i for i in self._ids if i not in self._retries]

    # -- state ------------------------------------------------------------------------------
    async def job_states(self) -> dict[str, str]:
        """State of each job: queued, deferred, in_progress, complete, failed, aborted or not_found."""
        await self.load()  # other processes may have added jobs or retries
        ids = self.active_ids
        todo = [i for i in ids if i not in self._final]
        codes = await status_codes(self.client.redis, self.client.settings.queue_name, todo,
                                   int(time.time() * 1000), pending=self.pending_key)
        unknown = [i for i, c in zip(todo, codes, strict=True) if c >= len(STATES)]
        states = {i: STATES[c] for i, c in zip(todo, codes, strict=True) if c < len(STATES)}
        if unknown:  # pickle mode: read the success flag in Python
            for job_id, result, _ in await fetch_records(self.client.redis, unknown, self.client.loads):
                states[job_id] = result_outcome(result) if result else "failed"
        for job_id, state in states.items():
            if state in _FINAL:
                self._final[job_id] = state
        return {i: self._final.get(i) or states[i] for i in ids}

    async def status(self) -> dict[str, int]:
        """Counts by state, computed on the server over the batch's ids (one script call per 10k jobs)."""
        counts, unknown = await batch_counts(self.client.redis, self.client.settings.queue_name, self.ids_key,
                                             keys.batch_retries(self.name), int(time.time() * 1000),
                                             pending=self.pending_key)
        out = dict(zip(STATES, counts, strict=True))
        if unknown:  # pickle mode: read the success flag in Python
            for _, result, _ in await fetch_records(self.client.redis, unknown, self.client.loads):
                out[result_outcome(result) if result else "failed"] += 1
        if self._ids is None and not any(out.values()) and not await self.client.redis.exists(self.key):
            raise ConfigError(f"no batch named {self.name!r} in Redis; `await client.batches()` lists them")
        return {state: out[state] for state in STATES[1:] + STATES[:1]}

    async def wait(self, *, progress: bool = True, timeout: float | None = None,
                   poll_interval: float = 0.5) -> dict[str, int]:
        """Wait until every job is complete, failed or aborted; returns the counts.

        ``progress`` shows a ``tqdm.auto`` bar (a widget in Jupyter, text in a terminal), noting when
        no worker is alive to run the jobs. Interrupting (Ctrl-C, the kernel's stop button) stops
        waiting only, with one line (:class:`~mediaq.errors.WaitInterrupted`): the batch keeps
        running in Redis. A job that vanished (``not_found``: expired, or its result expired) counts
        as done.

        The status is read every ``poll_interval`` s, or less often for a batch so large that
        reading it would take more than 5% of the time (:func:`poll_gap`; 100k jobs: every 3-5 s),
        so waiting never loads Redis much beside the workers and the live application.
        """
        view = self.client.views.progress(None, self.name) if progress else None
        start = time.monotonic()
        counts: dict[str, int] = {}
        alive: bool | None = None
        next_look = 0.0
        window = MIN_WINDOW
        try:
            if self.priority is None:
                self.priority = (await self.client.redis.hget(self.key, "priority") or b"live").decode()
            while True:
                if self.priority == "bulk":  # keep it flowing even when only stock arq workers run it
                    await topup(self.client.redis, self.client.settings.queue_name, window)
                read_at = time.monotonic()
                counts = await self.status()
                took = time.monotonic() - read_at
                honour_cancel()  # a stop that redis-py let slip (see honour_cancel): obeyed here
                done, total = _done(counts), sum(counts.values())
                if view is not None:
                    view.show(done, total, failed=counts["failed"], running=counts["in_progress"])
                if done >= total:
                    return counts
                now = time.monotonic()
                if now >= next_look:  # is anyone working? (two round trips, every 2 s)
                    workers = await read_workers(self.client.redis)
                    alive, next_look = bool(workers), now + 2.0
                    window = window_size(self.client.settings, workers)
                    if view is not None:
                        view.note(None if alive else "no live worker: start one")
                if timeout is not None and now - start > timeout:
                    raise TimeoutError(self._timeout_message(timeout, counts, alive))
                gap = poll_gap(poll_interval, took)
                if timeout is not None:  # one last read at the deadline, not a gap past it
                    gap = min(gap, max(0.0, start + timeout - now) + 0.001)
                await self._pause(gap, poll_interval, window)
        except asyncio.CancelledError:
            if not _interrupted_in_kernel():
                raise
            if not counts:  # interrupted before the first count came back
                with contextlib.suppress(Exception):
                    counts = await asyncio.wait_for(self.status(), 5)
            raise WaitInterrupted(self.interrupted_message(counts)) from None
        finally:
            if view is not None:
                view.close()

    async def _pause(self, gap: float, poll_interval: float, window: int) -> None:
        """Sleep ``gap`` s between two status reads; a bulk batch is still topped up every
        ``poll_interval`` meanwhile (with only stock arq workers, these top-ups set its pace)."""
        if self.priority != "bulk":
            await asyncio.sleep(gap)
            return
        end = time.monotonic() + gap
        while (left := end - time.monotonic()) > poll_interval:
            await asyncio.sleep(poll_interval)
            await topup(self.client.redis, self.client.settings.queue_name, window)
        await asyncio.sleep(max(0.0, left))

    def interrupted_message(self, counts: dict[str, int]) -> str:
        """``"stopped waiting; batch X continues, 50/300 done"``."""
        return f"stopped waiting; batch {self.name} continues, {_done(counts)}/{sum(counts.values())} done"

    def _timeout_message(self, timeout: float, counts: dict[str, int], alive: bool | None) -> str:
        where = f"batch {self.name!r} not finished after {timeout:g} s: {_done(counts)}/{sum(counts.values())} done"
        if not alive:
            return (f"{where}, and no worker is alive: the jobs wait in Redis until one starts "
                    "(mediaq.start_worker(), `mediaq worker`; `mediaq doctor` checks)")
        return f"{where} ({counts}). It keeps running; wait again, or check workers with `mediaq doctor`."

    # -- results ----------------------------------------------------------------------------
    async def results(self, *, all_attempts: bool = False) -> pd.DataFrame:
        """One row per job (see :mod:`mediaq.client.frames`); pending jobs have their state and no timings."""
        await self.load()
        ids = list(self._ids or []) if all_attempts else self.active_ids
        builder = await FrameBuilder(batch=self.name, signatures=self.client.signatures()).read(
            self.client.redis, ids, self.client.loads)
        pending = builder.pending_ids  # only these need a state
        codes = await status_codes(self.client.redis, self.client.settings.queue_name, pending,
                                   int(time.time() * 1000), pending=self.pending_key)
        states = {i: STATES[c] for i, c in zip(pending, codes, strict=True) if c < len(STATES)}
        origin = {new: old for old, new in self._retries.items()}
        retry_of = pd.array([origin.get(i) for i in ids], dtype="string")
        return builder.frame(statuses=states, extra_columns={"retry_of": retry_of})

    async def failed(self) -> pd.DataFrame:
        """The failed jobs' rows (error type, code, message, traceback)."""
        df = await self.results()
        return df[df["status"] == "failed"].reset_index(drop=True)

    async def retry_failed(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Enqueue failed jobs again under a new id (``<id>~r<n>``), linked to the original.

        ``job_ids``: only these (for example the failures you fixed; skip the rest); default all.
        Returns the new ids; the batch now counts the retries instead of those failures.
        """
        states = await self.job_states()
        failed = [i for i, s in states.items() if s == "failed"]
        if job_ids is not None:
            wanted = set(job_ids)
            unknown = wanted - set(states)
            if unknown:
                    raise ConfigError(f"not in batch {self.name!r}: {sorted(unknown)[:5]}")
            failed = [i for i in failed if i in wanted]
        records = await fetch_records(self.client.redis, failed, self.client.loads)
        entries, links = [], {}
        for job_id, result, _ in records:
            if not result:
                continue
            base, _, n = job_id.partition("~r")
            new_id = f"{base}~r{int(n or 0) + 1}"
            entries.append(job_entry(self.client.dumps, new_id, result["f"], result.get("a") or [],
                                     result.get("k") or {}, self.name))
            links[job_id] = new_id
        new_ids = list(links.values())
        if entries:
            # ids that exist already (a rerun of retry_failed) are skipped, and still linked
            pending = self.pending_key if self.priority == "bulk" else ""
            await enqueue_chunk(self.client.redis, self.client.settings.queue_name, entries, self.ids_key,
                                Durability.from_settings(self.client.settings), pending=pending)
            await self.client.redis.hset(keys.batch_retries(self.name), mapping=links)
        await self.load()
        return new_ids

    async def abort(self) -> int:
        """Abort every job not finished yet (queued ones never start; running ones are cancelled).
        Returns how many were asked to abort. A bulk batch's jobs that were not released into the
        queue yet get their aborted result at once, here."""
        settings = self.client.settings
        aborted = await abort_pending(self.client.redis, self.pending_key, loads=self.client.loads,
                                      dumps=self.client.dumps, queue_name=settings.queue_name,
                                      keep_result_ms=int(settings.keep_result * 1000))
        states = await self.job_states()
        pending = [i for i, s in states.items() if s in ("queued", "deferred", "in_progress")]
        if pending:
            now = int(time.time() * 1000)
            for start in range(0, len(pending), 5000):
                await self.client.redis.zadd(keys.ABORT_SET, {i: now for i in pending[start:start + 5000]})
        return aborted + len(pending)

    async def pause(self) -> None:
        """Stop releasing this bulk batch's jobs into the queue (the ones already there still run:
        at most the window). Other bulk batches get the room. :meth:`resume` undoes it."""
        await self._check_bulk("paused")
        await self.client.redis.sadd(keys.BULK_PAUSED, self.pending_key)

    async def resume(self) -> None:
        """Release this bulk batch's jobs again (after :meth:`pause`)."""
        await self._check_bulk("resumed")
        await self.client.redis.srem(keys.BULK_PAUSED, self.pending_key)
        await topup(self.client.redis, self.client.settings.queue_name, window_size(
            self.client.settings, await read_workers(self.client.redis)))

    async def is_paused(self) -> bool:
        """Whether :meth:`pause` holds this batch."""
        return bool(await self.client.redis.sismember(keys.BULK_PAUSED, self.pending_key))

    async def _check_bulk(self, what: str) -> None:
        priority = (await self.client.redis.hget(self.key, "priority") or b"").decode()
        if priority != "bulk":
            hint = "no such batch" if not priority else f"its jobs went into the queue at once (priority={priority!r})"
            raise ConfigError(f"batch {self.name!r} cannot be {what}: {hint}. Only bulk batches "
                              "(enqueue_many(..., priority='bulk'), reindex) are released a window at a time.")

    def __bool__(self) -> bool:  # a batch is a handle, truthy even before its ids are loaded
        return True

    def dashboard(self, interval: float = 1.0, local_worker: Any = None, **options: Any) -> Any:
        """A live dashboard of this batch (see :func:`mediaq.dashboard`)."""
        return self.client.views.dashboard(self.client, self, interval=interval, local_worker=local_worker,
                                           **options)

    async def delete(self) -> None:
        """Forget the batch (its jobs and results stay until they expire). A bulk batch's jobs that
        were not released into the queue yet are dropped: they would never run (abort or wait first
        to keep a record of them)."""
        await drop_pending(self.client.redis, self.pending_key)
        await self.client.redis.delete(self.key, self.ids_key, keys.batch_retries(self.name),
                                       keys.batch_counts(self.name), keys.batch_errors(self.name))
        await self.client.redis.zrem(keys.BATCHES, self.name)

