"""Worker-side counters (mediaq.runtime.stats) and heartbeats (mediaq.runtime.heartbeat) against a real worker."""

from __future__ import annotations

from helpers import eventually

from mediaq.runtime.heartbeat import read_workers
from mediaq.runtime.stats import read_batch_counts, read_failures, read_queue_stats, read_throughput


async def test_counters_match_exact_batch_status(client, start_worker):
    worker = start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": 0}] * 7 + [{"seconds": -1}] * 3, batch="counted")
    exact = await batch.wait(progress=False, timeout=60)

    async def flushed():
        c = await read_batch_counts(client.redis, "counted")
        return c["complete"] + c["failed"] == 10

    await eventually(flushed, timeout=20, what="counters flushed")
    counts = await read_batch_counts(client.redis, "counted")
    assert (counts["total"], counts["complete"], counts["failed"]) == (10, exact["complete"], exact["failed"])
    assert counts["by_function"] == {"sleep": {"complete": 7, "failed": 3, "aborted": 0}}
    assert (await read_queue_stats(client.redis))["sleep"] == {"complete": 7, "failed": 3, "aborted": 0}
    failures = await read_failures(client.redis, 5)
    assert len(failures) == 3 and failures[0]["type"] == "mediaq.errors.ConfigError"
    assert failures[0]["batch"] == "counted" and failures[0]["function"] == "sleep"
    per_second = await read_throughput(client.redis, 120)
    assert sum(v["complete"] for v in per_second.values()) == 7
    workers = await read_workers(client.redis)
    assert [w["pid"] for w in workers] == [worker.pid]
    worker.stop()
    assert await read_workers(client.redis) == []  # a clean stop removes the heartbeat


async def test_retried_failure_is_not_counted_twice(client, start_worker):
    start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": -1}, {"seconds": 0}], batch="retry-count")
    await batch.wait(progress=False, timeout=30)
    await batch.retry_failed()
    await batch.wait(progress=False, timeout=30)

    async def flushed():
        c = await read_batch_counts(client.redis, "retry-count")
        return c["complete"] + c["failed"] >= 2 and (await client.redis.hget(
            "mediaq:batch:retry-count:counts", "failed")) == b"2"

    await eventually(flushed, timeout=20, what="counters flushed")
    c = await read_batch_counts(client.redis, "retry-count")
    assert c["total"] == 2 and c["failed"] == 1  # original failure superseded by its (failed) retry
