"""Bulk batches beside live jobs (mediaq.runtime.bulk), on the real server with real workers.

The guarantee under test: at most ``W`` (the window) bulk jobs are in arq's queue at any time, and
a live job enqueued with arq's own ``enqueue_job`` sorts ahead of every bulk job released after
it, so at most ``W`` bulk jobs are claimed (started) ahead of it. What a test can observe is each
claim as the worker logs it when its claim call returns (tests/witness_worker.py), a moment after
the server ran it: in that moment the *other* workers may claim jobs after it. So the observed
count of bulk claims between a live job's arrival in the queue (``enqueue_job`` returned) and its
claim is bounded by ``W`` plus the other workers' slots, and that is what is asserted: structure,
not wall-clock time. (Start times, logged by ``on_job_start`` once the job's task runs, lag
further: a worker claims all its free slots in one call and their tasks log in any order.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import eventually, stop_process

import mediaq
from mediaq.client.snapshot import queue_snapshot
from mediaq.errors import ConfigError
from mediaq.faces.render import batch_summary
from mediaq.runtime import bulk, keys
from mediaq.runtime.connections import redis_settings_for
from mediaq.runtime.serialization import get_serializer

TESTS = Path(__file__).parent


async def _pending(client, batch) -> int:
    return await client.redis.zcard(batch.pending_key)


# -- no worker: where bulk jobs wait, and how they count ---------------------------------------------
async def test_bulk_jobs_wait_outside_the_queue_and_count_as_queued(client):
    client.settings = client.settings.replace(bulk_window=10)
    batch = await client.enqueue_many("noop", range(100), job_id="n{0}", priority="bulk")
    assert batch.priority == "bulk" and "bulk" in repr(batch)
    # the enqueue released the first window at once; the rest waits in the batch's pending set
    assert await client.redis.zcard(client.settings.queue_name) == 10
    assert await _pending(client, batch) == 90
    assert await client.redis.scard(keys.BULK_WINDOW) == 10
    status = await batch.status()
    assert status["queued"] == 100 and sum(status.values()) == 100
    states = await batch.job_states()
    assert set(states.values()) == {"queued"}
    frame = await batch.results()
    assert len(frame) == 100 and set(frame["status"]) == {"queued"}
    snap = await queue_snapshot(client, batch)
    assert (snap.queued, snap.held, snap.batches[0].held, snap.batches[0].bulk) == (100, 90, 90, True)
    # a top-up with a full window releases nothing; every job's record is there, arq's format
    done = await bulk.topup(client.redis, client.settings.queue_name, 10)
    assert (done.in_window, done.released, done.finished) == (10, 0, 0)
    assert await client.redis.exists(*(keys.JOB_PREFIX + f"n{i}" for i in range(100))) == 100


def test_a_workers_window_grows_with_the_bulk_throughput_and_shrinks_back():
    """The feeder's adaptive window (pure logic; its effect on throughput is in benchmarks/bench_priority.py)."""
    from mediaq.runtime.settings import Settings

    feeder = bulk.BulkFeeder(None, Settings(bulk_window=0, poll_delay=0.05))
    assert feeder.size == bulk.MIN_WINDOW
    feeder._measure(10.0, 1000)  # first sample: nothing measured yet
    feeder._measure(10.5, 1100)  # within a period: unchanged
    assert feeder.size == bulk.MIN_WINDOW
    feeder._measure(11.0, 1400)  # 400 jobs/s: 4 polls of 50 ms = 80 jobs
    assert (feeder.rate, feeder.size) == (400.0, 80)
    feeder._measure(12.0, 1405)  # slow jobs: back to twice the slots
    assert feeder.size == bulk.MIN_WINDOW
    feeder._measure(13.0, 10)  # the counter was reset (FLUSHDB): start measuring again
    assert feeder.size == bulk.MIN_WINDOW
    fixed = bulk.BulkFeeder(None, Settings(bulk_window=40, poll_delay=0.05))
    fixed._measure(0.0, 0)
    fixed._measure(1.0, 100_000)
    assert fixed.size == 40  # a window the user set is kept


def test_a_feeder_without_bulk_work_tops_up_rarely():
    """Jobs ending poke the feeder; with no bulk work a poke waits ``quiet`` seconds, not ``spacing``
    (issue 17: a top-up every few small live jobs was a script per five jobs)."""
    from mediaq.runtime.settings import Settings

    feeder = bulk.BulkFeeder(None, Settings())
    assert feeder.pause_after(bulk.Topup(0, 0, 7)) == feeder.quiet > feeder.spacing
    assert feeder.pause_after(bulk.Topup(20, 0, 7)) == feeder.spacing  # bulk jobs in the queue
    assert feeder.pause_after(bulk.Topup(3, 3, 7)) == feeder.spacing  # just released some


async def test_window_releases_as_jobs_leave_the_queue(client):
    """The top-up counts only window jobs still in the queue (arq removes a job when it finishes)."""
    queue = client.settings.queue_name
    client.settings = client.settings.replace(bulk_window=10)
    batch = await client.enqueue_many("noop", range(30), job_id="w{0}", priority="bulk")
    await bulk.topup(client.redis, queue, 10)
    first = sorted(i.decode() for i in await client.redis.zrange(queue, 0, -1))
    assert len(first) == 10
    await client.redis.zrem(queue, *first[:4])  # as arq's finish does
    done = await bulk.topup(client.redis, queue, 10)
    assert (done.in_window, done.released, done.finished) == (10, 4, 4)  # 4 finished: counted once
    now = sorted(i.decode() for i in await client.redis.zrange(queue, 0, -1))
    assert set(first[4:]) <= set(now) and len(set(now) - set(first)) == 4
    assert await _pending(client, batch) == 16


async def test_live_job_sorts_ahead_of_later_releases(client):
    """A job the application enqueues sorts before every bulk job released after it."""
    queue = client.settings.queue_name
    await client.enqueue_many("noop", range(50), job_id="b{0}", priority="bulk")
    await client.redis.delete(queue, keys.BULK_WINDOW)  # as if the first window had finished
    await client.redis.delete(*(keys.JOB_PREFIX + f"b{i}" for i in range(10)))
    live = await client.enqueue_job("noop", "live", _job_id="live-1")
    assert live is not None
    await bulk.topup(client.redis, queue, 20)
    order = [i.decode() for i in await client.redis.zrange(queue, 0, -1)]
    assert order[0] == "live-1" and len(order) == 21  # and the 10 with no record were skipped, not released


async def test_a_follow_up_goes_first_in_its_bulk_batch(client):
    """What reindex_image does for its add_to_iqdb job in a bulk batch: first in the pending line."""
    from mediaq.runtime.scripts import enqueue_chunk, job_entry

    batch = await client.enqueue_many("noop", range(50), job_id="p{0}", priority="bulk", batch="pipe")
    entry = job_entry(client.dumps, "p7:iqdb", "noop", [], {}, "pipe")
    await enqueue_chunk(client.redis, client.settings.queue_name, [entry], batch.ids_key, pending=batch.pending_key,
                        first=True)
    assert (await client.redis.zrange(batch.pending_key, 0, 0))[0] == b"p7:iqdb"
    assert await client.redis.zscore(client.settings.queue_name, "p7:iqdb") is None
    assert (await batch.status())["queued"] == 51


async def test_wrong_priority_and_deferred_bulk_are_refused(client):
    with pytest.raises(ConfigError, match="priority='urgent'"):
        await client.enqueue_many("noop", range(3), priority="urgent")
    with pytest.raises(ConfigError, match="cannot be deferred"):
        await client.enqueue_many("noop", range(3), priority="bulk", defer_by=5)
    live = await client.enqueue_many("noop", range(3))
    with pytest.raises(ConfigError, match="Only bulk batches"):
        await live.pause()
    assert await client.redis.zcard(client.settings.queue_name) == 3  # the refused calls wrote nothing


async def test_batch_priority_is_kept_when_adding_to_it(client):
    batch = await client.enqueue_many("noop", range(5), batch="grow", priority="bulk")
    more = await client.enqueue_many("noop", range(5, 10), batch="grow")  # no priority: the batch's
    assert more.priority == "bulk"
    again = client.batch("grow")
    await again.load()
    assert again.priority == "bulk" and len(again) == 10
    assert await batch.status() == {"queued": 10, "deferred": 0, "in_progress": 0, "complete": 0, "failed": 0,
                                    "aborted": 0, "not_found": 0}


async def test_abort_and_delete_a_held_batch(client):
    batch = await client.enqueue_many("noop", range(300), job_id="a{0}", priority="bulk")
    released = await client.redis.zcard(client.settings.queue_name)
    assert await batch.abort() == 300
    assert await _pending(client, batch) == 0
    # the held ones have arq's aborted result at once; the released ones are aborted by a worker
    status = await batch.status()
    assert status["aborted"] == 300 - released and status["queued"] == released
    frame = await batch.results()
    assert set(frame.loc[frame["status"] == "aborted", "error_type"]) == {"asyncio.CancelledError"}
    doomed = await client.enqueue_many("noop", range(100), job_id="d{0}", priority="bulk")
    held = await _pending(client, doomed)
    await doomed.delete()
    assert await client.redis.exists(doomed.pending_key) == 0
    left = await client.redis.exists(*(keys.JOB_PREFIX + f"d{i}" for i in range(100)))
    assert left == 100 - held  # the held jobs' records went with them; the released ones stay to run
    assert not await client.redis.sismember(keys.BULK_ACTIVE, doomed.pending_key)


# -- real workers ---------------------------------------------------------------------------------------
async def test_pause_holds_and_resume_releases(client, start_worker):
    client.settings = client.settings.replace(bulk_window=10)
    start_worker(bulk_window=10)
    batch = await client.enqueue_many("sleep", [0.01] * 400, priority="bulk")
    await eventually(batch.status, lambda s: s["complete"] >= 20)
    await batch.pause()
    assert await batch.is_paused()
    # the window drains: what was in the queue finishes, nothing more is released
    await eventually(lambda: client.redis.zcard(client.settings.queue_name), lambda n: n == 0)
    held = await _pending(client, batch)
    assert held > 0
    assert (await bulk.release(client.redis, client.settings)).released == 0  # a top-up skips it
    status = await batch.status()
    assert status["queued"] == held and status["complete"] == 400 - held
    snap = await queue_snapshot(client, batch)
    assert snap.batches[0].paused and "paused" in batch_summary(snap.batches[0])
    await batch.resume()
    assert not await batch.is_paused()
    assert (await batch.wait(progress=False, timeout=120))["complete"] == 400


async def test_two_bulk_batches_share_the_workers(client, start_worker):
    """Round robin: the second batch does not wait for the first to drain."""
    start_worker(bulk_window=20)
    client.settings = client.settings.replace(bulk_window=20)
    first = await client.enqueue_many("noop", range(1000), job_id="first-{0}", priority="bulk")
    second = await client.enqueue_many("noop", range(1000), job_id="second-{0}", priority="bulk")
    await first.wait(progress=False, timeout=180)
    # when the first batch is done, the second has had about as many turns
    assert (await second.status())["complete"] >= 800
    await second.wait(progress=False, timeout=180)
    frames = [await b.results() for b in (first, second)]
    starts = sorted([(t, "first") for t in frames[0]["start_time"]] + [(t, "second") for t in frames[1]["start_time"]])
    early = [who for _, who in starts[:1000]]
    assert 400 <= early.count("second") <= 600


async def test_reindex_is_bulk_and_runs_its_follow_ups(client, start_worker, tmp_path):
    """reindex defaults to bulk; its add_to_iqdb follow-ups join the batch and run too."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        Image.new("RGB", (64 + i, 48), (i * 20, 100, 50)).save(src / f"img{i}.png")
    batch = await client.reindex(src)
    assert batch.priority == "bulk"
    start_worker(bulk_window=4)
    counts = await batch.wait(progress=False, timeout=120)
    assert counts["complete"] == 24
    frame = await batch.results()
    assert (frame["function"] == "add_to_iqdb").sum() == 12


@pytest.mark.timeout(600)
async def test_live_jobs_start_within_one_window_of_a_20k_bulk_batch(client, settings, tmp_path, monkeypatch):
    """The issue's test: a 20k-job bulk batch runs; a live job is enqueued with arq's own
    ``enqueue_job`` every 100 ms; every live job starts with at most W (+ the race slack in the
    module doc) bulk jobs starting between its arrival in the queue and its own start, and every
    bulk job runs exactly once."""
    window, max_jobs = 40, 10
    log = tmp_path / "witness.log"
    monkeypatch.setenv("WITNESS_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    workers = [mediaq.LocalWorker(settings.replace(bulk_window=window, max_jobs=max_jobs),
                                  arq_settings="witness_worker.WorkerSettings") for _ in range(2)]
    try:
        await _live_beside_bulk(client, settings, workers, log, window, max_jobs)
    finally:
        for worker in workers:
            worker.stop(timeout=10)


async def _live_beside_bulk(client, settings, workers, log, window, max_jobs) -> None:
    from arq.connections import create_pool

    n_bulk = 20_000
    for worker in workers:
        worker.start()
    slots = len(workers) * max_jobs
    client.settings = client.settings.replace(bulk_window=window)
    dumps, loads = get_serializer(settings.serializer)
    app = await create_pool(redis_settings_for(settings, client.url), job_serializer=dumps,
                            job_deserializer=loads, default_queue_name=settings.queue_name)
    batch = await client.enqueue_many("noop", range(n_bulk), job_id="bulk-{0}", priority="bulk", chunk_size=2000)
    enq: dict[str, float] = {}
    held_at_enqueue: list[int] = []
    with open(log, "a", buffering=1) as witness:
        for i in range(6000):  # bounded: 10 minutes at most
            held_at_enqueue.append(await app.zcard(batch.pending_key))
            job_id = f"live-{i}"
            assert await app.enqueue_job("noop", "live", _job_id=job_id) is not None
            # from when it is in the queue: until arq's transaction lands no worker can see it (on a
            # busy machine the call's four round trips take a while, and bulk jobs start meanwhile)
            enq[job_id] = time.monotonic()
            witness.write(f"enq {job_id} {enq[job_id]:.6f}\n")
            await asyncio.sleep(0.1)
            if i % 10 == 9 and (await batch.status())["complete"] == n_bulk:
                break
    await app.aclose()
    for job_id in enq:
        await client.result(job_id, timeout=60)
    assert (await batch.status())["complete"] == n_bulk
    assert max(held_at_enqueue) >= n_bulk // 2  # live jobs really arrived behind most of the batch

    events = [line.split() for line in log.read_text().splitlines()]
    starts = [(float(t), j) for kind, j, t in events if kind == "start"]
    ran = {}
    for _, j in starts:
        ran[j] = ran.get(j, 0) + 1
    assert sum(1 for j in ran if j.startswith("bulk-")) == n_bulk
    assert max(ran.values()) == 1  # every job ran once
    # the order that counts is the workers' claims (a claimed job's task may log its start later)
    claims = [(float(t), j) for kind, j, t in events if kind == "claim"]
    assert len(claims) == len(starts)
    bulk_claims = sorted(t for t, j in claims if j.startswith("bulk-"))
    live_claim = {j: t for t, j in claims if j.startswith("live-")}
    import bisect

    ahead = {j: bisect.bisect_left(bulk_claims, live_claim[j]) - bisect.bisect_right(bulk_claims, enq[j])
             for j in enq}
    worst = max(ahead, key=ahead.get)
    print(f"{len(enq)} live jobs; bulk jobs claimed ahead of one: max {ahead[worst]} ({worst}), "
          f"window {window}, slots {slots}")
    assert ahead[worst] <= window + slots, (worst, ahead[worst])


# -- a crash of the process that enqueues and tops up -----------------------------------------------
_ENQUEUER = """
import asyncio, sys
import mediaq
from mediaq.runtime.settings import Settings

async def main():
    client = await mediaq.connect(settings=Settings.load(redis_url=sys.argv[1], state_dir=sys.argv[2],
                                                         serializer=sys.argv[3], bulk_window=10))
    await client.enqueue_many("noop", range(200_000), job_id="k{0}", batch="crashy", priority="bulk",
                              chunk_size=500)

asyncio.run(main())
"""


def _kill_mid_enqueue(settings, redis_server, tmp_path, serializer: str = "msgpack") -> None:
    """Start a process bulk-enqueuing 200k jobs and SIGKILL it once 2,000 are written."""
    import redis as sync_redis

    from mediaq.runtime.connections import with_db

    script = tmp_path / "enqueuer.py"
    script.write_text(_ENQUEUER)
    proc = subprocess.Popen([sys.executable, str(script), redis_server.url, str(settings.state_dir), serializer])
    r = sync_redis.Redis.from_url(with_db(redis_server.url, settings.queue_db))
    try:
        for _ in range(6000):  # bounded: 60 s
            if r.zcard(keys.batch_ids("crashy")) >= 2000 or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the enqueuer ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        r.close()


async def test_kernel_crash_mid_enqueue_loses_nothing_workers_carry_on(client, settings, redis_server,
                                                                       start_worker, tmp_path):
    start_worker(bulk_window=10)
    _kill_mid_enqueue(settings, redis_server, tmp_path)
    batch = client.batch("crashy")
    written = len((await batch.load()).ids)
    assert 2000 <= written < 200_000
    # nobody calls wait() or connect(): the worker's own top-ups run the whole batch
    await eventually(batch.status, lambda s: s["complete"] == written, timeout=180)
    assert await client.redis.zcard(batch.pending_key) == 0


async def test_stock_arq_worker_and_next_connect_continue_a_crashed_enqueue(settings, redis_server, tmp_path):
    """Only a stock arq worker runs the queue (no mediaq top-ups): the next ``connect()`` releases a
    window, and ``wait()`` keeps releasing until the batch is done."""
    settings = settings.replace(serializer="pickle")  # arq's own format: a stock worker reads it
    _kill_mid_enqueue(settings, redis_server, tmp_path, "pickle")
    # wait() releases a window per poll (0.5 s): with only stock workers, the window sets the pace
    settings = settings.replace(bulk_window=500)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "STOCK_REDIS_URL": redis_server.url, "STOCK_QUEUE_DB": str(settings.queue_db)}
    worker = subprocess.Popen([sys.executable, "-m", "arq", "stock_arq_worker.WorkerSettings"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a pipe nobody reads would fill
    try:
        client = await mediaq.connect(settings=settings)
        try:
            assert await client.redis.scard(keys.BULK_WINDOW) == 500  # connect() released the first window
            batch = client.batch("crashy")
            written = len((await batch.load()).ids)
            counts = await batch.wait(progress=False, timeout=100)
            assert counts["complete"] == written
        finally:
            await client.close()
    finally:
        stop_process(worker, signal.SIGINT)
