"""Issue 17, part 1: a mediaq worker claims the jobs it starts in one script call
(:func:`mediaq.runtime.scripts.claim_jobs`), doing what arq's per-job start transaction does.

Real server throughout. The script itself: what it claims and skips, and that a stock arq worker's
``WATCH`` on the in-progress key still sees our claim. Then real worker subprocesses: a mediaq worker
and a stock arq worker sharing one queue run every job exactly once (each logs its job starts: see
tests/witness_worker.py and tests/stock_arq_worker.py); a deferred job does not start before its
time; a job whose in-progress key is held is skipped until the key goes.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from helpers import eventually, stop_process
from redis.exceptions import WatchError

import mediaq
from mediaq.runtime import keys
from mediaq.runtime.recovery import WorkerIdentity
from mediaq.runtime.scripts import claim_jobs

TESTS = Path(__file__).parent
TTL_MS = 610_000  # what a worker with sleep's 600 s timeout writes: 600 s + 10 s


def _now() -> int:
    return int(time.time() * 1000)


async def test_claim_takes_due_free_jobs_as_arq_does(settings, queue_redis):
    r, q, now = queue_redis, settings.queue_name, _now()
    await r.zadd(q, {"due": now - 5, "later": now + 60_000, "held": now - 5, "zero": 0, "due2": now - 1})
    await r.psetex(keys.IN_PROGRESS_PREFIX + "held", 5_000, b"x")
    claimed = await claim_jobs(r, q, ["due2", "later", "held", "gone", "zero", "due"], now, TTL_MS)
    assert [(j, c.score) for j, c in claimed.items()] == [("due2", now - 1), ("due", now - 5)]  # in the order asked
    assert all(c.record is None and c.tries is None for c in claimed.values())  # not read: fetch=False
    for job_id in ("due", "due2"):
        assert await r.get(keys.IN_PROGRESS_PREFIX + job_id) == b"1"
        assert TTL_MS - 5_000 < await r.pttl(keys.IN_PROGRESS_PREFIX + job_id) <= TTL_MS
    assert await r.get(keys.IN_PROGRESS_PREFIX + "held") == b"x"  # left alone, TTL too
    assert await r.pttl(keys.IN_PROGRESS_PREFIX + "held") <= 5_000
    for job_id in ("later", "gone", "zero"):  # arq skips a score of 0 too (`not score`)
        assert await r.exists(keys.IN_PROGRESS_PREFIX + job_id) == 0
    # a second claim of the same ids: all in progress now
    assert await claim_jobs(r, q, ["due", "due2"], now, TTL_MS) == {}
    assert await claim_jobs(r, q, [], now, TTL_MS) == {}


async def test_a_stock_arq_workers_start_transaction_loses_to_our_claim(settings, queue_redis):
    """arq's start: WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC; our claim in between makes EXEC fail."""
    r, q, now = queue_redis, settings.queue_name, _now()
    await r.zadd(q, {"j": now - 5})
    key = keys.IN_PROGRESS_PREFIX + "j"
    async with r.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        assert not await pipe.exists(key) and await pipe.zscore(q, "j")
        assert {j: c.score for j, c in (await claim_jobs(r, q, ["j"], now, TTL_MS)).items()} == {"j": now - 5}
        pipe.multi()
        pipe.psetex(key, TTL_MS, b"1")
        with pytest.raises(WatchError):
            await pipe.execute()
    # and the other way round: arq's transaction first, our claim then skips the job
    await r.zadd(q, {"k": now - 5})
    async with r.pipeline(transaction=True) as pipe:
        pipe.psetex(keys.IN_PROGRESS_PREFIX + "k", TTL_MS, b"1")
        await pipe.execute()
    assert await claim_jobs(r, q, ["k"], now, TTL_MS) == {}


def _starts(*logs: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for log in logs:
        if log.exists():
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "start":
                    counts[parts[1]] += 1
    return counts


async def _enqueue_noops(r, queue: str, ids: list[str], score: int) -> None:
    """arq's job records (pickle), written as ``enqueue_job`` does, made due by one ZADD."""
    async with r.pipeline(transaction=False) as pipe:
        for i, job_id in enumerate(ids):
            pipe.psetex(keys.JOB_PREFIX + job_id, 86_400_000,
                        pickle.dumps({"t": None, "f": "noop", "a": [i], "k": {}, "et": _now()}))
        await pipe.execute()
    await r.zadd(queue, dict.fromkeys(ids, score))


def _stock_worker(settings, witness: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "STOCK_REDIS_URL": settings.redis_url, "STOCK_QUEUE_DB": str(settings.queue_db),
           "STOCK_WITNESS_LOG": str(witness)}
    return subprocess.Popen([sys.executable, "-m", "arq", "stock_arq_worker.WorkerSettings"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
async def test_mediaq_and_stock_arq_workers_share_a_queue_each_job_runs_once(settings, queue_redis, tmp_path,
                                                                             monkeypatch):
    n = 3000
    settings = settings.replace(serializer="pickle")  # arq's own format: the stock worker reads it
    ours, theirs = tmp_path / "mediaq.log", tmp_path / "stock.log"
    monkeypatch.setenv("WITNESS_LOG", str(ours))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    worker = mediaq.LocalWorker(settings, arq_settings="witness_worker.WorkerSettings")
    stock = _stock_worker(settings, theirs)
    try:
        worker.start()
        # the stock worker is up once it has run a probe job
        await _enqueue_noops(queue_redis, settings.queue_name, ["probe"], _now())
        await eventually(lambda: queue_redis.exists(keys.RESULT_PREFIX + "probe"), timeout=60, what="probe ran")
        ids = [f"j{i}" for i in range(n)]
        await _enqueue_noops(queue_redis, settings.queue_name, ids, _now())
        await eventually(lambda: queue_redis.zcard(settings.queue_name), lambda c: c == 0, timeout=180,
                         what="queue empty")
        results = {}
        for job_id in ids:
            raw = await eventually(lambda j=job_id: queue_redis.get(keys.RESULT_PREFIX + j), timeout=10,
                                   what=f"result of {job_id}")
            results[job_id] = pickle.loads(raw)  # our own records on our own test server
    finally:
        worker.stop(timeout=10)
        stop_process(stock, signal.SIGINT)
    mine, stocks = _starts(ours), _starts(theirs)
    both = mine + stocks
    assert {j: c for j, c in both.items() if c != 1 and j != "probe"} == {}  # nothing ran twice
    assert set(ids) <= set(both)
    assert mine and stocks and set(mine) & set(ids) and set(stocks) & set(ids)  # both really worked the queue
    assert all(r["s"] and r["t"] == 1 and r["r"] == int(j[1:]) for j, r in results.items())  # one try each
    assert await queue_redis.keys(keys.IN_PROGRESS_PREFIX + "*") == []


async def test_a_deferred_job_does_not_start_early(settings, queue_redis, start_worker):
    settings = settings.replace(serializer="pickle")
    start_worker(serializer="pickle")
    due = _now() + 1500
    await _enqueue_noops(queue_redis, settings.queue_name, ["later"], due)
    await _enqueue_noops(queue_redis, settings.queue_name, ["now"], _now())
    await eventually(lambda: queue_redis.exists(keys.RESULT_PREFIX + "now"), timeout=30, what="the due job ran")
    raw = await eventually(lambda: queue_redis.get(keys.RESULT_PREFIX + "later"), timeout=30,
                           what="the deferred job ran")
    assert pickle.loads(raw)["st"] >= due  # arq's start time (epoch ms): not before its score


async def test_a_job_in_progress_elsewhere_is_skipped(settings, queue_redis, start_worker, tmp_path, monkeypatch):
    """The in-progress key is held (and claimed, by a live process: this one, so the janitor leaves it):
    the worker runs the jobs queued around it, not it, until the key is gone."""
    settings = settings.replace(serializer="pickle")
    witness = tmp_path / "witness.log"
    monkeypatch.setenv("WITNESS_LOG", str(witness))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    me = WorkerIdentity.current(storage=settings.storage)
    await queue_redis.hset(keys.CLAIMANTS, me.name, me.to_json())
    await queue_redis.sadd(keys.claims(me.name), "held")
    await queue_redis.psetex(keys.IN_PROGRESS_PREFIX + "held", 600_000, b"1")
    worker = mediaq.LocalWorker(settings, arq_settings="witness_worker.WorkerSettings")
    try:
        worker.start()
        now = _now()
        await _enqueue_noops(queue_redis, settings.queue_name, ["held"], now - 10)
        await _enqueue_noops(queue_redis, settings.queue_name, ["first"], now - 5)
        await eventually(lambda: queue_redis.exists(keys.RESULT_PREFIX + "first"), timeout=30, what="first ran")
        # polls go on: a job queued after it runs too, and "held" is still skipped
        await _enqueue_noops(queue_redis, settings.queue_name, ["second"], _now())
        await eventually(lambda: queue_redis.exists(keys.RESULT_PREFIX + "second"), timeout=30, what="second ran")
        assert _starts(witness)["held"] == 0
        assert await queue_redis.zscore(settings.queue_name, "held") is not None
        assert await queue_redis.exists(keys.RESULT_PREFIX + "held") == 0
        await queue_redis.delete(keys.IN_PROGRESS_PREFIX + "held")  # the other worker let go
        await eventually(lambda: queue_redis.exists(keys.RESULT_PREFIX + "held"), timeout=30, what="held ran")
        assert _starts(witness)["held"] == 1
    finally:
        worker.stop(timeout=10)
        await queue_redis.hdel(keys.CLAIMANTS, me.name)


class _FakeWorker:
    """The parts of arq's Worker that start_jobs uses."""

    def __init__(self, pool, queue_name: str, max_jobs: int = 3) -> None:
        import asyncio

        self.pool, self.queue_name, self.max_jobs = pool, queue_name, max_jobs
        # as arq: one more slot than max_jobs, the counter stops at max_jobs
        self.sem, self.job_counter, self.tasks, self.ctx = asyncio.BoundedSemaphore(max_jobs + 1), 0, {}, {}
        self.in_progress_timeout_s, self.poll_delay_s = 610, 0.05
        self.loop = asyncio.get_running_loop()
        self.ran: list[tuple[str, int]] = []

    async def run_job(self, job_id: str, score: int) -> None:
        self.ran.append((job_id, score))

    def _release_sem_dec_counter_on_complete(self) -> None:
        self.job_counter -= 1
        self.sem.release()


async def test_start_jobs_fills_free_slots_and_gives_back_skipped_ones(settings, queue_redis):
    import asyncio

    from mediaq.runtime.worker_loop import _claiming_start_jobs

    r, q, now = queue_redis, settings.queue_name, _now()
    await r.zadd(q, {"a": now - 3, "b": now + 60_000, "c": now - 2, "d": now - 1, "e": now})
    w = _FakeWorker(r, q, max_jobs=3)
    await _claiming_start_jobs(w, [b"a", b"b", b"c", b"d"])  # b is deferred: a, c, d fill the 3 slots
    assert sorted(w.tasks) == ["a", "c", "d"]
    await asyncio.gather(*w.tasks.values())
    await asyncio.sleep(0)  # done callbacks
    assert sorted(w.ran) == [("a", now - 3), ("c", now - 2), ("d", now - 1)]
    assert w.job_counter == 0 and w.sem._value == 4
    assert await r.pttl(keys.IN_PROGRESS_PREFIX + "a") > 600_000
    await _claiming_start_jobs(w, [b"a", b"e"])  # a is in progress now: skipped, its slot given back
    await asyncio.gather(*w.tasks.values())
    await asyncio.sleep(0)
    assert w.ran[-1] == ("e", now) and len(w.ran) == 4 and w.job_counter == 0 and w.sem._value == 4


async def test_start_jobs_goes_on_as_slots_free_within_its_poll(settings, queue_redis):
    """More read ids than slots: as jobs end, their slots take the next ids, in order, in the same call."""
    import asyncio

    from mediaq.runtime.worker_loop import _claiming_start_jobs

    r, q, now = queue_redis, settings.queue_name, _now()
    ids = [f"x{i:02d}" for i in range(12)]
    await r.zadd(q, dict.fromkeys(ids, now - 5))
    w = _FakeWorker(r, q, max_jobs=3)
    w.poll_delay_s = 60.0  # ample: each slot frees as soon as its job's task runs
    await _claiming_start_jobs(w, [i.encode() for i in ids])
    await asyncio.gather(*w.tasks.values())
    await asyncio.sleep(0)
    assert [j for j, _ in w.ran] == ids and w.job_counter == 0 and w.sem._value == 4
    # with no time left in the poll it returns once the slots are full, as arq does
    more = [f"y{i:02d}" for i in range(5)]
    await r.zadd(q, dict.fromkeys(more, now - 5))
    w.poll_delay_s = 0.0
    await _claiming_start_jobs(w, [i.encode() for i in more])
    assert sorted(w.tasks) == sorted(ids + more[:3]) and w.job_counter == 3
    assert await r.exists(*[keys.IN_PROGRESS_PREFIX + j for j in more[3:]]) == 0  # not claimed
    await asyncio.gather(*w.tasks.values())


async def test_start_jobs_gives_every_slot_back_when_the_claim_fails(settings):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from mediaq.runtime.connections import worker_retry
    from mediaq.runtime.worker_loop import _claiming_start_jobs

    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=worker_retry(),
                          retry_on_error=[RedisConnectionError])
    w = _FakeWorker(dead, settings.queue_name, max_jobs=3)
    with pytest.raises(RedisConnectionError):
        await _claiming_start_jobs(w, [b"a", b"b"])
    assert w.job_counter == 0 and w.sem._value == 4 and w.tasks == {}
    await dead.aclose()
