"""Bulk work beside the live application: a bounded window of bulk jobs in the queue, topped up as they finish.

arq runs jobs in the order of their queue score (the enqueue time), so a live job (the application's
``enqueue_job`` for an upload) enqueued behind a million-job reindex would wait for all of it. A
bulk batch (``enqueue_many(..., priority="bulk")``, ``reindex``) therefore does not go into the
queue: its job records are written as usual (``arq:job:<id>``), but their ids wait in the batch's
*pending set* (``mediaq:batch:<name>:pending``, scored by their place in the batch). A *top-up*
(:data:`TOPUP_LUA`, one atomic script) keeps at most ``W`` bulk jobs in the queue:

1. it drops from the *window* (``mediaq:bulk:window``) the bulk jobs no longer in the queue
   (arq removes a job from the queue when it finishes, for good or after its last try);
2. it moves up to ``W - (what is left)`` ids from the pending sets into the queue, scored with the
   server's clock, taking turns between the batches (round robin, from a different batch each
   time) and skipping paused ones (``mediaq:bulk:paused``).

The application and stock arq workers are unchanged: a released bulk job is an ordinary arq job. A
live job enqueued at time ``t`` sorts ahead of every bulk job released after ``t``, so at most ``W``
bulk jobs start ahead of it. ``W`` is the ``bulk_window`` setting when set; by default the workers
size it (:class:`BulkFeeder`): twice their slots (``max_jobs``), grown to four polls' worth of the
bulk jobs' measured throughput when that is more (arq takes new jobs only when it polls, so a
smaller window would slow small jobs down). A live job then waits for about two bulk jobs per slot
or four polls (0.2 s with the default ``poll_delay``), whichever is longer.

Who tops up: every mediaq worker (:class:`BulkFeeder`, when its jobs end and every half second),
the client right after a bulk enqueue, while it waits on a batch, and at ``connect()``. Any of them
will do and several at once are harmless (the script is atomic), so the process that enqueued can
crash at any point: what it wrote is in Redis and the workers carry on.

>>> window_size(Settings(bulk_window=0), [{"max_jobs": 10}, {"max_jobs": 4}])
28
>>> window_size(Settings(bulk_window=50), [])
50
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mediaq.runtime.keys import (
    BULK_ACTIVE,
    BULK_FINISHED,
    BULK_PAUSED,
    BULK_TURN,
    BULK_WINDOW,
    JOB_PREFIX,
    RESULT_PREFIX,
    WAKE_PREFIX,
)
from mediaq.runtime.scripts import DAY_MS, script
from mediaq.runtime.settings import Settings

__all__ = [
    "MAX_WINDOW",
    "MIN_WINDOW",
    "PENDING_TTL_MS",
    "BulkFeeder",
    "Topup",
    "abort_pending",
    "adaptive_window",
    "bulk_state",
    "drop_pending",
    "release",
    "topup",
    "window_size",
]

logger = logging.getLogger("arq.mediaq")

#: How long a bulk job's record lives from its enqueue unless ``expires`` says otherwise: a week, so a
#: paused or long batch keeps its jobs (arq's default, a day, is for jobs that are in the queue).
PENDING_TTL_MS = 7 * DAY_MS
#: The window when no live worker tells its slots (stock arq workers only): 2 x arq's default max_jobs.
MIN_WINDOW = 20
#: An adaptive window (:class:`BulkFeeder`) holds this many polls' worth of bulk jobs, at most MAX_WINDOW.
WINDOW_POLLS = 4
MAX_WINDOW = 10_000
#: Seconds between two measurements of the bulk jobs' throughput.
RATE_PERIOD = 1.0

# Scores: the server's clock in ms, + 2, so that a job released after a live job was enqueued sorts
# after it even when the application rounds its clock up (arq: round(time.time() * 1000)).
TOPUP_LUA = f"""
local queue, size = ARGV[1], tonumber(ARGV[2])
local left = 0
local window = redis.call('SMEMBERS', '{BULK_WINDOW}')
for s = 1, #window, 500 do
  local sub = {{unpack(window, s, math.min(s + 499, #window))}}
  local scores = redis.call('ZMSCORE', queue, unpack(sub))
  local gone = {{}}
  for j = 1, #sub do
    if scores[j] then left = left + 1 else gone[#gone + 1] = sub[j] end
  end
  if #gone > 0 then
    redis.call('SREM', '{BULK_WINDOW}', unpack(gone))
    redis.call('INCRBY', '{BULK_FINISHED}', #gone)
  end
end
local finished = tonumber(redis.call('GET', '{BULK_FINISHED}') or '0')
local free, moved = size - left, 0
if free <= 0 then return {{left, 0, finished}} end
local order = {{}}
local active = redis.call('SMEMBERS', '{BULK_ACTIVE}')
table.sort(active)
for _, key in ipairs(active) do
  if redis.call('SISMEMBER', '{BULK_PAUSED}', key) == 0 then order[#order + 1] = key end
end
if #order == 0 then return {{left, 0, finished}} end
local turn = redis.call('INCR', '{BULK_TURN}') % #order
local rotated = {{}}
for i = 1, #order do rotated[i] = order[(i - 1 + turn) % #order + 1] end
order = rotated
local now = redis.call('TIME')
local score = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + 2
while free > 0 and #order > 0 do
  local quantum = math.max(1, math.floor(free / #order))
  local still = {{}}
  for _, key in ipairs(order) do
    if free > 0 then
      local popped = redis.call('ZPOPMIN', key, math.min(quantum, free))
      local released = {{}}
      for i = 1, #popped, 2 do
        local id = popped[i]
        if redis.call('EXISTS', '{JOB_PREFIX}' .. id) == 1 then  -- else it expired while it waited
          released[#released + 1] = score
          released[#released + 1] = id
          redis.call('SADD', '{BULK_WINDOW}', id)
          free, moved = free - 1, moved + 1
        end
      end
      if #released > 0 then
        redis.call('ZADD', queue, unpack(released))
        redis.call('PUBLISH', '{WAKE_PREFIX}' .. queue, '1')  -- wake idle workers
      end
      if redis.call('EXISTS', key) == 1 then still[#still + 1] = key else redis.call('SREM', '{BULK_ACTIVE}', key) end
    else
      still[#still + 1] = key
    end
  end
  order = still
end
return {{left + moved, moved, finished}}
"""

# Drop up to ARGV[1] pending jobs of one batch (KEYS are not used: the key is built by the caller):
# their records go too, as they never ran. Returns how many were dropped.
DROP_LUA = f"""
local pending, n = ARGV[1], tonumber(ARGV[2])
local popped = redis.call('ZPOPMIN', pending, n)
local jobs = {{}}
for i = 1, #popped, 2 do jobs[#jobs + 1] = '{JOB_PREFIX}' .. popped[i] end
if #jobs > 0 then redis.call('DEL', unpack(jobs)) end
if redis.call('EXISTS', pending) == 0 then
  redis.call('SREM', '{BULK_ACTIVE}', pending)
  redis.call('SREM', '{BULK_PAUSED}', pending)
end
return #jobs
"""


@dataclass(frozen=True)
class Topup:
    """The outcome of one top-up: ``in_window`` bulk jobs are in the queue now, ``released`` of them
    just now; ``finished``: how many bulk jobs ever left the queue (a counter every top-up advances,
    whoever runs it: its rate is the bulk jobs' throughput)."""

    in_window: int
    released: int
    finished: int = 0


def window_size(settings: Settings, workers: Iterable[Mapping[str, Any]]) -> int:
    """``W``: ``settings.bulk_window`` when set, else twice the slots (``max_jobs``) of the live workers'
    heartbeats, at least :data:`MIN_WINDOW`."""
    if settings.bulk_window > 0:
        return settings.bulk_window
    slots = sum(int(w.get("max_jobs") or 0) for w in workers)
    return max(MIN_WINDOW, 2 * slots)


async def topup(redis: Any, queue_name: str, size: int) -> Topup:
    """Release bulk jobs into the queue until ``size`` of them are in it (see the module doc)."""
    in_window, released, finished = await script(redis, "bulk-topup", TOPUP_LUA)(args=[queue_name, size])
    return Topup(int(in_window), int(released), int(finished))


async def drop_pending(redis: Any, pending: str, chunk: int = 5000) -> int:
    """Remove every job still in the pending set ``pending`` (and its record); returns how many."""
    dropped = 0
    while True:
        n = int(await script(redis, "bulk-drop", DROP_LUA)(args=[pending, chunk]))
        dropped += n
        if n < chunk:
            return dropped


async def abort_pending(redis: Any, pending: str, *, loads: Any, dumps: Any, queue_name: str, keep_result_ms: int,
                        chunk: int = 2000) -> int:
    """Abort every job still in the pending set ``pending``: write the result arq's worker writes for a
    job aborted before it started, drop the job, a chunk per transaction (a crash half way leaves
    each job pending or aborted, never lost). The batch is paused meanwhile, so no top-up takes
    from it. Returns how many were aborted."""
    from arq.jobs import serialize_result
    from redis.exceptions import WatchError

    if not await redis.exists(pending):
        return 0
    await redis.sadd(BULK_PAUSED, pending)
    done = 0
    try:
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.watch(pending)
                ids = [i.decode() for i in await pipe.zrange(pending, 0, chunk - 1)]
                if not ids:
                    return done
                records = await pipe.mget([JOB_PREFIX + i for i in ids])
                now = int(time.time() * 1000)
                pipe.multi()
                for job_id, raw in zip(ids, records, strict=True):
                    if raw is None:  # expired while it waited
                        continue
                    job = loads(raw)
                    result = serialize_result(job["f"], tuple(job["a"]), job["k"], 0, job["et"], False,
                                              asyncio.CancelledError(), now, now, f"{job_id}:{job['f']}", queue_name,
                                              job_id=job_id, serializer=dumps)
                    if result is not None:
                        pipe.psetex(RESULT_PREFIX + job_id, keep_result_ms, result)
                    pipe.delete(JOB_PREFIX + job_id)
                pipe.zrem(pending, *ids)
                try:
                    await pipe.execute()
                except WatchError:  # a top-up that was already running took some: read again
                    continue
                done += len(ids)
    finally:
        await redis.srem(BULK_PAUSED, pending)
        await redis.srem(BULK_ACTIVE, pending)


STATE_LUA = f"""
local out = {{}}
for _, key in ipairs(redis.call('SMEMBERS', '{BULK_ACTIVE}')) do
  out[#out + 1] = key
  out[#out + 1] = redis.call('ZCARD', key)
  out[#out + 1] = redis.call('SISMEMBER', '{BULK_PAUSED}', key)
end
return out
"""


async def bulk_state(redis: Any) -> tuple[dict[str, int], set[str]]:
    """``({pending set: jobs held in it}, {paused pending sets})`` over the active bulk batches, in one
    round trip whatever their size."""
    flat = await script(redis, "bulk-state", STATE_LUA)(args=[])
    held: dict[str, int] = {}
    paused: set[str] = set()
    for i in range(0, len(flat), 3):
        key = flat[i].decode()
        held[key] = int(flat[i + 1])
        if int(flat[i + 2]):
            paused.add(key)
    return held, paused


class BulkFeeder:
    """A worker's top-up loop: after its jobs end (:meth:`poke`, no I/O) and at least every
    ``idle`` seconds, it runs a :func:`topup`. At most one top-up every ``spacing`` seconds: the jobs
    ending in between share it.

    The window it keeps (``size``) is ``settings.bulk_window`` when that is set. Otherwise it adapts:
    at least :func:`window_size` (twice the live workers' slots, read again every ``recount``
    seconds), and enough for :data:`WINDOW_POLLS` polls of the bulk jobs' measured throughput
    (:func:`adaptive_window`). arq's worker takes new jobs only when it polls (``poll_delay``),
    so a window of two slots' worth would hold small jobs to ``W / poll_delay`` a second; measured
    every second, a window that limits the rate doubles, one that does not settles at
    ``WINDOW_POLLS`` polls' worth, which is also about how long a live job waits behind it.

    While the last top-up found no bulk work (nothing in the window, nothing released), top-ups are
    at least ``quiet`` seconds apart instead of ``spacing``: a queue of small live jobs then costs
    about ten scripts a second, not one every few jobs. New bulk work is released by the client that
    enqueues it, and the feeder is back to ``spacing`` within ``quiet`` seconds.
    """

    def __init__(self, redis: Any, settings: Settings, *, idle: float = 0.5, spacing: float = 0.005,
                 quiet: float = 0.1, recount: float = 5.0) -> None:
        self.redis = redis
        self.settings = settings
        self.idle = idle
        self.spacing = spacing
        self.quiet = quiet
        self.recount = recount
        self.base = self.size = window_size(settings, [])
        self.rate = 0.0  # bulk jobs finished per second, all workers, last measurement
        self.topups = 0
        self._wake = asyncio.Event()
        self._counted = float("-inf")
        self._sample: tuple[float, int] | None = None

    def __repr__(self) -> str:
        return f"<BulkFeeder window={self.size} rate={self.rate:.0f}/s topups={self.topups}>"

    def poke(self) -> None:
        """A job ended: top up soon."""
        self._wake.set()

    async def step(self) -> Topup:
        from mediaq.runtime.heartbeat import read_workers

        now = time.monotonic()
        if now - self._counted > self.recount:
            self.base = window_size(self.settings, await read_workers(self.redis))
            self._counted = now
        self.topups += 1
        done = await topup(self.redis, self.settings.queue_name, self.size)
        self._measure(now, done.finished)
        return done

    def _measure(self, now: float, finished: int) -> None:
        if self.settings.bulk_window > 0:
            self.size = self.settings.bulk_window
            return
        if self._sample is None or finished < self._sample[1]:  # first, or the counter was reset
            self._sample = (now, finished)
        elif now - self._sample[0] >= RATE_PERIOD:
            self.rate = (finished - self._sample[1]) / (now - self._sample[0])
            self._sample = (now, finished)
            self.size = adaptive_window(self.base, self.rate, self.settings.poll_delay)
        else:
            self.size = max(self.size, self.base)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.idle)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                done = await self.step()
            except Exception:  # Redis away: the next round tries again
                logger.debug("bulk top-up failed", exc_info=True)
                await asyncio.sleep(self.idle)
                continue
            await asyncio.sleep(self.pause_after(done))

    def pause_after(self, done: Topup) -> float:
        """Seconds before the next top-up may run: ``spacing`` while there is bulk work, else ``quiet``."""
        return self.spacing if done.in_window or done.released else self.quiet


def adaptive_window(base: int, rate: float, poll_delay: float) -> int:
    """The window for bulk jobs finishing at ``rate`` a second: :data:`WINDOW_POLLS` polls' worth,
    at least ``base``, at most :data:`MAX_WINDOW`.

    >>> adaptive_window(20, 0.0, 0.05), adaptive_window(20, 1000.0, 0.05), adaptive_window(20, 1e9, 0.05)
    (20, 200, 10000)
    """
    return max(base, min(MAX_WINDOW, math.ceil(WINDOW_POLLS * rate * poll_delay)))


async def release(redis: Any, settings: Settings) -> Topup:
    """One top-up from a client (a notebook): the window sized from the live workers' heartbeats."""
    from mediaq.runtime.heartbeat import read_workers

    return await topup(redis, settings.queue_name, window_size(settings, await read_workers(redis)))
