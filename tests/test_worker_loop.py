"""Issue 17: the worker loop's three changes to arq 0.28 (:mod:`mediaq.runtime.worker_loop`), each
checked against arq's own code on a real server.

- the claim script's read of each job (``claim_jobs(fetch=True)``) leaves Redis as arq's ``run_job``
  read transaction does and returns what it returns; ``run_job`` gets it from
  :class:`PrefetchedPipeline`, which accepts exactly arq's calls;
- :class:`FinishWriter` leaves Redis as arq's ``finish_job`` does, for every kind of end (result,
  no result, a retry later, a job kept in progress), in one transaction for the jobs that end together;
- ``start_jobs`` reads the queue again within its poll once a full read is used up.

The end-to-end checks (a real worker subprocess, stock arq workers on the same queue, aborts, retries,
SIGKILLs) are in test_claim.py, test_reliability_*.py, test_batch.py and test_bulk.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from helpers import eventually
from redis.exceptions import ConnectionError as RedisConnectionError

from mediaq.runtime import keys
from mediaq.runtime.scripts import RETRY_TTL_S, Claimed, claim_jobs
from mediaq.runtime.worker_loop import (
    FinishWriter,
    PrefetchedPipeline,
    _claiming_start_jobs,
    _reads_like_arq_0_28,
)


def _now() -> int:
    return int(time.time() * 1000)


def _arq_worker_method(name: str):
    """arq's own method, also when this process has patched arq's Worker (harden_arq_worker)."""
    from arq.worker import Worker

    return getattr(Worker, "_mediaq_original", {}).get(name) or getattr(Worker, name)


async def _arq_read(r, job_id: str, abort: bool) -> list:
    """arq 0.28 run_job's first transaction, as arq writes it."""
    async with r.pipeline(transaction=True) as pipe:
        pipe.get(keys.JOB_PREFIX + job_id)
        pipe.incr(keys.RETRY_PREFIX + job_id)
        pipe.expire(keys.RETRY_PREFIX + job_id, 88400)
        if abort:
            pipe.zrem(keys.ABORT_SET, job_id)
        return await pipe.execute()


async def _state(r, queue: str, job_id: str) -> dict:
    """Every key arq keeps for ``job_id``: values, TTLs rounded to 10 s, queue score, abort request."""
    out = {}
    for prefix in (keys.JOB_PREFIX, keys.RETRY_PREFIX, keys.IN_PROGRESS_PREFIX, keys.RESULT_PREFIX):
        ttl = await r.pttl(prefix + job_id)
        out[prefix] = (await r.get(prefix + job_id), ttl if ttl < 0 else round(ttl / 10_000))
    out["queue"] = await r.zscore(queue, job_id)
    out["abort"] = await r.zscore(keys.ABORT_SET, job_id)
    return out


@pytest.mark.parametrize("abort", [True, False])
async def test_the_claims_read_is_arq_run_jobs_read(settings, queue_redis, abort):
    r, q, now = queue_redis, settings.queue_name, _now()
    # per job: a record and a try count of 2 and an abort request; a job whose record is gone
    for suffix in ("mq", "arq"):
        await r.psetex(keys.JOB_PREFIX + "a" + suffix, 60_000, b"record-a")
        await r.set(keys.RETRY_PREFIX + "a" + suffix, 2)
        await r.zadd(keys.ABORT_SET, {"a" + suffix: now})
        await r.zadd(q, {"a" + suffix: now - 5, "b" + suffix: now - 5})
    claimed = await claim_jobs(r, q, ["amq", "bmq"], now, 610_000, fetch=True, abort=abort)
    arq = {j: await _arq_read(r, j, abort) for j in ("aarq", "barq")}
    assert claimed == {"amq": Claimed(now - 5, b"record-a", 3, abort), "bmq": Claimed(now - 5, None, 1, False)}
    for mine, theirs in (("amq", "aarq"), ("bmq", "barq")):
        c = claimed[mine]
        want = [c.record, c.tries, True] + ([int(c.aborted)] if abort else [])
        assert arq[theirs] == want  # what arq's transaction returned, from the claim's reply
        ours, stock = await _state(r, q, mine), await _state(r, q, theirs)
        ours.pop(keys.IN_PROGRESS_PREFIX)  # the claim wrote it (test_claim.py); arq's claim is not run here
        stock.pop(keys.IN_PROGRESS_PREFIX)
        assert ours == stock
    assert await r.ttl(keys.RETRY_PREFIX + "amq") > RETRY_TTL_S - 10


async def test_run_jobs_read_is_answered_from_the_claim_and_nothing_else_is():
    p = PrefetchedPipeline("j", Claimed(1, b"rec", 2, True))
    async with p as pipe:
        pipe.get(keys.JOB_PREFIX + "j")
        pipe.incr(keys.RETRY_PREFIX + "j")
        pipe.expire(keys.RETRY_PREFIX + "j", 88400)
        pipe.zrem(keys.ABORT_SET, "j")
        assert await pipe.execute() == [b"rec", 2, True, 1]
    for calls in ([("get", keys.JOB_PREFIX + "other")], [("incr", keys.RETRY_PREFIX + "j")], []):
        p = PrefetchedPipeline("j", Claimed(1, b"rec", 2, False))
        for name, *args in calls:
            getattr(p, name)(*args)
        with pytest.raises(RuntimeError, match="arq's run_job has changed"):
            await p.execute()


def test_the_installed_arqs_run_job_reads_as_the_prefetch_expects():
    """If this fails, arq was upgraded: the worker then reads each job in its own round trip (it logs a
    warning); check arq's new run_job against ``worker_loop._RUN_JOB_READ`` before changing it."""
    assert _reads_like_arq_0_28(_arq_worker_method("run_job"))

    async def other(self, job_id, score):
        await self.pool.get(job_id)

    assert not _reads_like_arq_0_28(other)


class _Self:
    def __init__(self, pool, queue_name):
        self.pool, self.queue_name = pool, queue_name


#: (finish, has a result, result TTL s, keep forever, retry later by ms, keep in progress s)
ENDS = {
    "done": (True, True, 3600, False, None, None),
    "done-forever": (True, True, 3600, True, None, None),
    "done-no-result": (True, False, 3600, False, None, None),
    "retry-later": (False, False, None, False, 5000, None),
    "kept-in-progress": (False, False, None, False, None, 30.0),
}


async def test_the_finish_writer_leaves_redis_as_arqs_finish_job_does(settings, queue_redis):
    r, q, now = queue_redis, settings.queue_name, _now()
    for name in ENDS:
        for suffix in ("mq", "arq"):
            j = name + suffix
            await r.psetex(keys.JOB_PREFIX + j, 60_000, b"record")
            await r.set(keys.RETRY_PREFIX + j, 1)
            await r.psetex(keys.IN_PROGRESS_PREFIX + j, 610_000, b"1")
            await r.zadd(q, {j: now - 5})
            await r.zadd(keys.ABORT_SET, {j: now})
    arq_finish = _arq_worker_method("finish_job")
    writer = FinishWriter(r, q)

    def args(j, end):
        finish, has_result, ttl, forever, incr, keep = end
        return (j, finish, b"result-" + j.encode() if has_result else None, ttl, forever, incr, keep)

    await asyncio.gather(*(writer.finish(*args(name + "mq", end)) for name, end in ENDS.items()))
    for name, end in ENDS.items():
        await arq_finish(_Self(r, q), *args(name + "arq", end))
    assert writer.writes == 1  # all five ended together: one transaction
    for name in ENDS:
        ours, stock = await _state(r, q, name + "mq"), await _state(r, q, name + "arq")
        result = ours[keys.RESULT_PREFIX][0]
        if result is not None:
            assert result == b"result-" + name.encode() + b"mq"
            ours[keys.RESULT_PREFIX] = (b"result-" + name.encode() + b"arq", ours[keys.RESULT_PREFIX][1])
        assert ours == stock, name


async def test_a_failed_group_write_fails_every_finish_in_it_and_the_next_write_goes_on(settings, queue_redis):
    dead = aioredis.Redis(host="127.0.0.1", port=1)  # nothing listens: refused at once
    writer = FinishWriter(dead, settings.queue_name)
    outcomes = await asyncio.gather(*(writer.finish(f"j{i}", True, b"r", 60, False, None, None) for i in range(3)),
                                    return_exceptions=True)
    assert all(isinstance(o, RedisConnectionError) for o in outcomes)
    await dead.aclose()
    writer.redis = queue_redis  # the server is back: the next finish is written
    await queue_redis.zadd(settings.queue_name, {"k": _now()})
    await writer.finish("k", True, b"r", 60, False, None, None)
    assert await queue_redis.get(keys.RESULT_PREFIX + "k") == b"r"
    assert await queue_redis.zscore(settings.queue_name, "k") is None


class _PollingWorker:
    """The parts of arq's Worker that start_jobs uses, with a queue read limit; each job ends at once
    and leaves the queue, as a finished job does."""

    def __init__(self, pool, queue_name: str, max_jobs: int, read_limit: int, poll_delay: float) -> None:
        self.pool, self.queue_name, self.max_jobs = pool, queue_name, max_jobs
        self.sem, self.job_counter, self.tasks, self.ctx = asyncio.BoundedSemaphore(max_jobs + 1), 0, {}, {}
        self.in_progress_timeout_s, self.poll_delay_s = 610, poll_delay
        self.queue_read_limit, self._queue_read_offset = read_limit, 0
        self.burst, self.max_burst_jobs = False, -1
        self.loop = asyncio.get_running_loop()
        self.ran: list[str] = []

    async def run_job(self, job_id: str, score: int) -> None:
        self.ran.append(job_id)
        await self.pool.zrem(self.queue_name, job_id)
        await self.pool.delete(keys.IN_PROGRESS_PREFIX + job_id)

    def _release_sem_dec_counter_on_complete(self) -> None:
        self.job_counter -= 1
        self.sem.release()


async def test_start_jobs_reads_the_queue_again_within_its_poll(settings, queue_redis):
    """arq reads ``queue_read_limit`` ids a poll and then waits ``poll_delay``, which caps a busy worker at
    limit / delay jobs a second; here a full read used up within the poll is followed by another."""
    r, q, now = queue_redis, settings.queue_name, _now()
    ids = [f"x{i:02d}" for i in range(23)]
    await r.zadd(q, {j: now - 100 + i for i, j in enumerate(ids)})
    w = _PollingWorker(r, q, max_jobs=3, read_limit=5, poll_delay=60.0)
    first = await r.zrangebyscore(q, min="-inf", max=_now(), start=0, num=5)
    await _claiming_start_jobs(w, first)
    await asyncio.gather(*w.tasks.values())
    assert w.ran == ids  # all of them, in order, in one call: reads of 5, 5, 5, 5, 3 (not full: back to the loop)
    assert await r.zcard(q) == 0
    # with the poll's time spent, one read is all, as in arq
    more = [f"y{i:02d}" for i in range(12)]
    await r.zadd(q, {j: now - 50 + i for i, j in enumerate(more)})
    w.poll_delay_s, w.ran = 0.0, []
    await _claiming_start_jobs(w, await r.zrangebyscore(q, min="-inf", max=_now(), start=0, num=5))
    await asyncio.gather(*w.tasks.values())
    assert w.ran == more[:3]  # the slots filled at once; the rest wait for the next poll


# -- the doorbell ----------------------------------------------------------------------------------------
async def _subscribers(r, channel: str) -> int:
    return dict(await r.pubsub_numsub(channel)).get(channel.encode(), 0)


@pytest.mark.parametrize("how", ["enqueue_job", "enqueue_many", "bulk"])
async def test_an_idle_worker_starts_a_new_job_at_once_not_at_its_next_poll(settings, queue_redis, client,
                                                                           start_worker, how):
    """poll_delay 600 s: after its first (empty) poll the worker would sleep ten minutes; the job runs
    because the enqueue rang its doorbell (the test allows 60 s)."""
    from mediaq.runtime.keys import wake_channel

    start_worker(poll_delay=600)
    channel = wake_channel(settings.queue_name)
    await eventually(lambda: _subscribers(queue_redis, channel), lambda n: n >= 1, timeout=60,
                     what="the worker subscribed to its doorbell")
    # arq writes its health line at the end of each poll: once it exists, the first poll is over and the
    # worker sleeps (else the first poll could find the job, and the test would not be about the doorbell)
    await eventually(lambda: queue_redis.exists(keys.health_check(settings.queue_name)), timeout=60,
                     what="the worker's first poll")
    if how == "enqueue_job":
        job_id = await client.enqueue_job("noop", 1, _job_id="rung")
        assert await client.result(job_id, timeout=60) == 1
    else:
        batch = await client.enqueue_many("noop", [[i] for i in range(5)], priority="bulk" if how == "bulk" else None)
        counts = await batch.wait(timeout=60, progress=False)
        assert counts["complete"] == 5


async def test_the_poll_sleep_ends_when_the_doorbell_rings_and_lasts_step_otherwise():
    from mediaq.runtime.worker_loop import Doorbell, _poll

    bell = Doorbell(None, "test")
    bell.install()  # this task's poll loop
    loop = asyncio.get_running_loop()
    ticks = _poll(600.0)
    await anext(ticks)  # the first iteration comes at once, as in arq
    loop.call_later(0.05, bell.rung.set)
    await asyncio.wait_for(anext(ticks), 60)  # the ring ends the 600 s sleep
    bell.rung.set()  # a ring during an iteration (after its read): the next one comes at once
    await asyncio.wait_for(anext(ticks), 60)
    short = _poll(0.01)  # no ring: arq's behaviour, one step a poll
    await anext(short)
    await asyncio.wait_for(anext(short), 60)
    await ticks.aclose()
    await short.aclose()
