"""Bulk enqueue and batches against the real server and a real worker."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from arq.jobs import Job, JobStatus
from arq.worker import Worker, func
from helpers import eventually

import mediaq
from mediaq.jobs.util import noop, sleep
from mediaq.runtime.serialization import get_serializer


async def test_enqueue_many_dedups_and_reruns_skip(client, start_worker):
    items = [{"value": i} for i in range(250)] + [{"value": 3}]  # one duplicate id inside the call
    batch = await client.enqueue_many("noop", items, job_id="n:{value}", chunk_size=100, batch="b1")
    assert batch.skipped == ["n:3"]
    await batch.load()
    assert len(batch) == 250
    assert (await batch.status())["queued"] == 250
    start_worker()
    counts = await batch.wait(progress=False, timeout=60)
    assert counts["complete"] == 250 and counts["failed"] == 0
    again = await client.enqueue_many("noop", [{"value": i} for i in range(260)], job_id="n:{value}", batch="b1")
    assert len(again.skipped) == 250  # results exist: not run twice
    counts = await again.wait(progress=False, timeout=60)
    assert counts["complete"] == 260


async def test_mixed_batch_results_frame(client, start_worker):
    start_worker()
    items = [{"seconds": 0}, {"seconds": 0.01}, {"seconds": -1}, {"seconds": "x"}]
    batch = await client.enqueue_many("sleep", items, job_id="s{index}")
    await batch.wait(progress=False, timeout=60)
    df = await batch.results()
    assert list(df["job_id"]) == ["s0", "s1", "s2", "s3"]
    assert list(df["status"]) == ["complete", "complete", "failed", "failed"]
    assert df["success"].dtype == "boolean" and df["tries"].dtype == "Int64"
    for col in ("enqueue_time", "start_time", "finish_time"):
        assert str(df[col].dtype) == "datetime64[ns, UTC]"
    assert (df["run_seconds"] >= 0).all() and (df["queue_seconds"] >= 0).all()
    assert list(df.loc[:1, "result"]) == [0.0, 0.01]
    assert df.loc[2, "error_type"] == "mediaq.errors.ConfigError"
    assert "seconds must be a number" in df.loc[3, "error_message"]
    assert df.columns.get_loc("seconds") < df.columns.get_loc("status")  # arguments come first
    failed = await batch.failed()
    assert list(failed["job_id"]) == ["s2", "s3"]


async def test_reattach_after_reconnect(client, settings, start_worker):
    batch = await client.enqueue_many("noop", range(20), batch="reattach-me")
    await client.close()
    other = await mediaq.connect(settings=settings)
    try:
        again = await other.batch("reattach-me").load()
        assert len(again) == 20 and again.function == "noop"
        start_worker()
        assert (await again.wait(progress=False, timeout=60))["complete"] == 20
        assert set((await again.results())["job_id"]) == set(batch.ids or (await batch.load()).ids)
    finally:
        await other.close()


async def test_unknown_batch_is_a_clear_error(client):
    with pytest.raises(mediaq.ConfigError, match="no batch named"):
        await client.batch("nope").load()


async def test_retry_failed_links_to_original(client, start_worker):
    start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": -1}, {"seconds": 0}], job_id="r{index}")
    await batch.wait(progress=False, timeout=30)
    new = await batch.retry_failed()
    assert new == ["r0~r1"]
    await batch.wait(progress=False, timeout=30)
    df = await batch.results()
    assert set(df["job_id"]) == {"r0~r1", "r1"}
    assert df.set_index("job_id").loc["r0~r1", "retry_of"] == "r0"
    everything = await batch.results(all_attempts=True)
    assert len(everything) == 3


async def test_abort_queued_and_running(client, start_worker):
    batch = await client.enqueue_many("sleep", [{"seconds": 30}] * 3 + [{"seconds": 0}] * 2, chunk_size=2)
    start_worker(max_jobs=2)
    for _ in range(200):
        if (await batch.status())["in_progress"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert await batch.abort() >= 3
    counts = await batch.wait(progress=False, timeout=30)
    # aborted is its own state: not a failure to retry or look into
    assert counts["aborted"] >= 3 and counts["failed"] == 0, counts
    assert (await batch.failed()).empty
    assert await batch.retry_failed() == []
    df = await batch.results()
    aborted = df[df["status"] == "aborted"]
    assert len(aborted) == counts["aborted"] and set(aborted["error_type"]) == {"asyncio.CancelledError"}
    states = await batch.job_states()
    assert sorted(states.values()).count("aborted") == counts["aborted"]
    # the workers' counters agree (they flush every second)
    from mediaq.runtime.stats import read_batch_counts

    live = await eventually(lambda: read_batch_counts(client.redis, batch.name),
                            lambda c: c["aborted"] == counts["aborted"])
    assert live["failed"] == 0


async def test_defer_and_deferred_state(client):
    batch = await client.enqueue_many("noop", [1, 2], defer_by=60)
    assert (await batch.status())["deferred"] == 2


async def test_sync_forms_work_inside_a_running_loop(settings, start_worker):
    start_worker()
    loop_running = asyncio.get_running_loop()  # this test *is* a running loop, like a kernel
    assert loop_running.is_running()
    client = mediaq.connect_sync(settings=settings)
    try:
        batch = client.enqueue_many("noop", range(5))
        counts = batch.wait(progress=False, timeout=30)
        assert counts["complete"] == 5
        df = batch.results()
        assert isinstance(df, pd.DataFrame) and sorted(df["result"]) == [0, 1, 2, 3, 4]
    finally:
        client.close()


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
async def test_stock_arq_worker_and_job_read_bulk_jobs(settings, serializer):
    """Unmodified arq consumes mediaq's bulk-enqueued jobs, and arq's Job reads their results."""
    settings = settings.replace(serializer=serializer)
    client = await mediaq.connect(settings=settings)
    try:
        batch = await client.enqueue_many("noop", [{"value": i} for i in range(30)], job_id="a{value}")
        dumps, loads = get_serializer(serializer)
        worker = Worker([func(noop, name="noop"), func(sleep, name="sleep")], redis_pool=client.redis, burst=True,
                        handle_signals=False, job_serializer=dumps, job_deserializer=loads, poll_delay=0.01,
                        queue_name=settings.queue_name)
        await worker.main()
        assert worker.jobs_complete == 30
        job = Job("a7", client.redis, _queue_name=settings.queue_name, _deserializer=loads)
        assert await job.status() == JobStatus.complete
        assert await job.result(timeout=5) == 7
        assert (await batch.status())["complete"] == 30
    finally:
        await client.close()


async def test_wait_interrupted_keeps_the_batch(client, start_worker):
    batch = await client.enqueue_many("noop", range(10), batch="interrupted")
    waiter = asyncio.create_task(batch.wait(progress=True, poll_interval=0.05))
    await asyncio.sleep(0.2)
    waiter.cancel()  # what the kernel's stop button does to an awaiting cell
    with pytest.raises(asyncio.CancelledError):
        await waiter
    start_worker()
    again = client.batch("interrupted")
    assert (await again.wait(progress=False, timeout=30))["complete"] == 10


async def test_wait_timeout_says_what_is_true(client, start_worker):
    batch = await client.enqueue_many("sleep", [{"seconds": 5}] * 3)
    with pytest.raises(TimeoutError, match="0/3 done, and no worker is alive: the jobs wait in Redis until one"):
        await batch.wait(progress=False, timeout=0.3, poll_interval=0.1)
    assert (await batch.status())["queued"] == 3
    start_worker()
    with pytest.raises(TimeoutError, match="keeps running"):
        await batch.wait(progress=False, timeout=0.3, poll_interval=0.1)


async def test_wait_notes_on_its_bar_that_no_worker_is_alive(client):
    notes: list[str | None] = []

    class Bar:
        def show(self, done, total, **info):
            pass

        def note(self, text):
            notes.append(text)

        def close(self):
            pass

    client.views.progress = lambda total, desc, unit="job": Bar()
    batch = await client.enqueue_many("noop", range(2))
    with pytest.raises(TimeoutError):
        await batch.wait(timeout=0.2, poll_interval=0.05)
    assert notes == ["no live worker: start one"]


async def test_results_frame_and_queue_frame(client, start_worker):
    await client.enqueue_many("noop", [{"value": i} for i in range(4)], job_id="q{value}")
    waiting = await client.queue_frame()
    assert list(waiting["job_id"]) == ["q0", "q1", "q2", "q3"]
    assert set(waiting["status"]) == {"queued"} and list(waiting["value"]) == [0, 1, 2, 3]
    start_worker()
    await client.batch((await client.batches())["batch"].iloc[-1]).wait(progress=False, timeout=30)
    done = await client.results_frame()
    assert sorted(done["job_id"]) == ["q0", "q1", "q2", "q3"]
    assert (done["status"] == "complete").all() and sorted(done["result"]) == [0, 1, 2, 3]


async def test_bad_enqueue_arguments_are_clear(client):
    with pytest.raises(mediaq.ConfigError, match="needs 'image_id'"):
        await client.enqueue_many("noop", [{"value": 1}], job_id="t:{image_id}")
    with pytest.raises(mediaq.ConfigError, match="not both"):
        await client.enqueue_many("noop", [1], defer_by=1, defer_until=__import__("datetime").datetime.now())
    with pytest.raises(mediaq.ConfigError, match="chunk_size"):
        await client.enqueue_many("noop", [1], chunk_size=0)
    with pytest.raises(mediaq.ConfigError, match=r"item 0 .* plain data"):
        await client.enqueue_many("noop", [{"value": object()}])
    assert await client.queue_counts() == {"queued": 0, "deferred": 0}


async def test_expires_drops_jobs_not_started_in_time(client, start_worker):
    batch = await client.enqueue_many("noop", range(3), expires=0.2, job_id="e{0}")
    await asyncio.sleep(0.5)
    start_worker()
    counts = await batch.wait(progress=False, timeout=30)
    assert counts["complete"] == 0  # arq fails expired jobs ("job expired") or they vanish
    assert counts["failed"] + counts["not_found"] == 3


async def test_retry_failed_only_the_chosen_ones(client, start_worker):
    start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": -1}, {"seconds": -2}], job_id="c{index}")
    await batch.wait(progress=False, timeout=30)
    assert await batch.retry_failed(["c1"]) == ["c1~r1"]
    with pytest.raises(mediaq.ConfigError, match="not in batch"):
        await batch.retry_failed(["nope"])
    await batch.wait(progress=False, timeout=30)
    assert sorted((await batch.results())["job_id"]) == ["c0", "c1~r1"]


async def test_enqueue_keeps_order_and_survives_a_script_cache_flush(client):
    """Chunks go out one in flight while the next is built (ChunkSender); a server that forgets its
    scripts between two chunks (SCRIPT FLUSH, or a restart) gets the script again, nothing is lost."""
    import redis

    from mediaq.runtime.connections import with_db
    from mediaq.runtime.server import resolve_redis_url

    flusher = redis.Redis.from_url(with_db(resolve_redis_url(client.settings), client.settings.queue_db))

    def items(n, flush_at=None, start=0):
        for i in range(start, n):
            if i == flush_at:
                flusher.script_flush()
            yield {"value": i}

    try:
        batch = await client.enqueue_many("noop", items(2500, flush_at=1500), job_id="o:{value}", batch="ordered",
                                          chunk_size=400)
    finally:
        flusher.close()
    assert batch.skipped == []
    assert await client.redis.zcard(client.settings.queue_name) == 2500
    # the same batch again, overlapping: old ids keep their place, new ones follow in order
    more = await client.enqueue_many("noop", items(3000, start=2000), job_id="o:{value}", batch="ordered",
                                      chunk_size=400)
    assert more.skipped == [f"o:{i}" for i in range(2000, 2500)]
    assert more.ids == [f"o:{i}" for i in range(3000)]
    assert (await more.status())["queued"] == 3000


async def test_state_codes_agree_with_arq_for_every_state(client):
    """The server-side classifier (bulk.STATUS_LUA / COUNT_LUA) against arq's own Job.status() on
    planted keys, several of each state, mixed, so every branch of the batched lookups is used."""
    import time

    from mediaq.runtime.scripts import STATES, status_codes

    r, queue, dumps = client.redis, client.settings.queue_name, client.dumps
    now = int(time.time() * 1000)
    want: dict[str, str] = {}
    for i in range(1400):  # > 2 slices of 500
        state = ["queued", "deferred", "in_progress", "complete", "failed", "aborted", "not_found"][i % 7]
        job_id = f"s{i}"
        want[job_id] = state
        record = {"t": 1, "f": "noop", "a": [], "k": {"value": i}, "et": now}
        if state in ("queued", "deferred", "in_progress"):
            await r.psetex(f"arq:job:{job_id}", 60_000, dumps(record))
            await r.zadd(queue, {job_id: now - 1000 if state != "deferred" else now + 60_000})
            if state == "in_progress":
                await r.set(f"arq:in-progress:{job_id}", b"1", px=60_000)
        elif state in ("complete", "failed", "aborted"):
            ok = state == "complete"
            error = asyncio.CancelledError() if state == "aborted" else ValueError("x")
            await r.set(f"arq:result:{job_id}", dumps({"s": ok, **record, "r": 1 if ok else error,
                                                         "st": now, "ft": now, "q": queue, "id": job_id}))
    codes = await status_codes(r, queue, list(want), now)
    got = dict(zip(want, (STATES[c] for c in codes), strict=True))
    assert got == want
    for job_id in ("s0", "s1", "s2", "s3", "s4", "s5", "s6"):  # arq agrees (it calls failed jobs complete too)
        arq_state = (await client.job(job_id).status()).value
        assert arq_state == {"failed": "complete", "aborted": "complete"}.get(want[job_id], want[job_id]), job_id
    batch = await client.enqueue_many("noop", [], batch="planted")
    await r.zadd(batch.ids_key, {job_id: n for n, job_id in enumerate(want)})
    counts = await client.batch("planted").status()
    assert counts == {state: 200 for state in STATES[1:] + STATES[:1]}


async def test_enqueue_into_a_queue_key_of_another_type_writes_nothing(client, settings):
    """A script that fails part way keeps what it wrote, so the enqueue script checks first: a queue
    key some other program made a string is a clear error, with no job keys left behind."""
    await client.redis.set(settings.queue_name, "not a queue")
    with pytest.raises(mediaq.EnqueueError) as info:
        await client.enqueue_many("noop", [{"value": i} for i in range(30)], job_id="wt{value}",
                                  chunk_size=10, batch="wrongtype")
    err = info.value
    assert (err.written, err.chunks_written, err.in_doubt) == (0, 0, 0)
    assert await client.redis.keys("arq:job:wt*") == []
    assert "was not written at all" in str(err) and "holds a string, not a sorted set" in str(err)
    await client.redis.delete(settings.queue_name)
    batch = await client.enqueue_many("noop", [{"value": i} for i in range(30)], job_id="wt{value}",
                                      chunk_size=10, batch="wrongtype")
    assert batch.skipped == [] and await client.redis.zcard(settings.queue_name) == 30


@pytest.mark.parametrize("cancel_at", [5, 2500])
async def test_enqueue_cancelled_with_a_chunk_in_flight_leaves_the_client_usable(client, settings, cancel_at):
    """The kernel's stop button while chunks are being built or sent: the call raises CancelledError
    (even when a library swallowed the cancellation on the way: redis-py's ``wait_for`` on Python
    3.11 does when the write it waits for completes in the same loop turn, which is what the cancel
    at item 5 hits every time), nothing is sent after it, no unread reply is left on a pooled
    connection, and a rerun completes the batch without duplicates. Nothing here depends on how
    fast the server answers: the chunk sent before the cancel may land before or after the rerun."""
    chunk = 1000

    def items(cancel_at=None):
        for i in range(5000):
            if i == cancel_at:
                asyncio.current_task().cancel()  # honoured before the next chunk is sent, at the latest
            yield {"value": i}

    task = asyncio.create_task(client.enqueue_many("noop", items(cancel_at=cancel_at), job_id="c{value}",
                                                   batch="cancelled", chunk_size=chunk))
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.redis.set("after-cancel", "mine")
    assert await client.redis.get("after-cancel") == b"mine"  # not a stale script reply
    sent_before = (cancel_at // chunk) * chunk  # chunks sent before the one being built was cancelled
    assert await client.redis.zcard(settings.queue_name) in (max(0, sent_before - chunk), sent_before)
    batch = await client.enqueue_many("noop", items(), job_id="c{value}", batch="cancelled", chunk_size=chunk)
    assert set(batch.skipped) <= {f"c{i}" for i in range(sent_before)}  # whole chunks, only those sent
    assert await client.redis.zcard(settings.queue_name) == 5000
    await batch.load()
    assert len(batch) == 5000


async def test_wait_obeys_every_cancel(client):
    """redis-py (on Python 3.11) lets about half the cancels that land during a command slip away; the
    wait loop must still stop every time (a notebook's stop button, a script's Ctrl-C)."""
    import random

    batch = await client.enqueue_many("noop", range(3), batch="never-run")  # no worker: it waits forever
    for _ in range(40):
        task = asyncio.ensure_future(batch.wait(progress=False, poll_interval=0))
        await asyncio.sleep(random.uniform(0, 0.005))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "a cancelled wait went on waiting"
        assert task.cancelled()


async def test_wait_reads_a_slow_status_less_often(client, monkeypatch):
    """A batch whose status read is slow (a large batch) is read at most ~5% of the time, not every
    ``poll_interval``: waiting on 100k jobs must not keep Redis busy. The read is slowed here by
    0.05 s, so the gap becomes about 1 s; a slower machine only makes the reads fewer."""
    from mediaq.client.batch import Batch, poll_gap

    batch = await client.enqueue_many("noop", range(20), batch="slow-status")  # no worker: never done
    reads = []
    real = Batch.status

    async def slow_status(self):
        reads.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)
        return await real(self)

    monkeypatch.setattr(Batch, "status", slow_status)
    with pytest.raises(TimeoutError, match=r"not finished after 2\.5 s"):
        await batch.wait(progress=False, timeout=2.5, poll_interval=0.01)
    # every 0.01 s this would be ~40 reads; at 5% of the time: at 0, ~1, ~2 s and the deadline
    assert 2 <= len(reads) <= 6, reads
    assert reads[1] - reads[0] >= 0.9  # read 0.05 s + gap 0.95 s (sleeps are never shorter)
    assert poll_gap(0.01, 0.05) == pytest.approx(0.95)


async def test_wait_keeps_topping_up_a_bulk_batch_between_slow_status_reads(client, monkeypatch):
    """With only stock arq workers, ``wait()``'s top-ups set a bulk batch's pace: spacing the status
    reads must not space the top-ups (still one every ``poll_interval``)."""
    import mediaq.client.batch as batch_module

    batch = await client.enqueue_many("noop", range(50), batch="slow-bulk", priority="bulk")
    reads, topups = [], []
    real_status, real_topup = batch_module.Batch.status, batch_module.topup

    async def slow_status(self):
        reads.append(1)
        await asyncio.sleep(0.05)
        return await real_status(self)

    async def counting_topup(*args, **kwargs):
        topups.append(1)
        return await real_topup(*args, **kwargs)

    monkeypatch.setattr(batch_module.Batch, "status", slow_status)
    monkeypatch.setattr(batch_module, "topup", counting_topup)
    with pytest.raises(TimeoutError):
        await batch.wait(progress=False, timeout=2.0, poll_interval=0.05)
    assert len(reads) <= 5, len(reads)
    # a top-up every 0.05 s between the reads: ~35 in 2 s on a quiet machine, fewer on a busy one,
    # but always several per read
    assert len(topups) >= 3 * len(reads), (len(topups), len(reads))
