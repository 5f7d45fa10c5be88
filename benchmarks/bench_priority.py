"""Bulk work beside the live application (issue 18): how long a live job waits behind a bulk batch, and
what the window costs the bulk batch.

One mediaq worker (defaults: ``max_jobs`` 10, 2 pool processes) on the embedded server. A bulk batch
of 100k no-op jobs (``--quick``: 20k) is enqueued, then the application's live jobs arrive with arq's
own ``enqueue_job`` (the application is unchanged) every 100 ms until the batch is done. A live
job's start latency is arq's own ``start_time - enqueue_time`` from its result. Side by side, in one
run on the same server and worker settings:

- **mediaq**: ``enqueue_many(..., priority="bulk")``: a bounded window of bulk jobs in the queue,
  topped up as they finish (:mod:`mediaq.runtime.bulk`; window ``W = 2 x`` the worker's slots, 20);
- **plain arq ordering**: ``priority="live"``, every bulk job in arq's queue at once, ordered by
  enqueue time, which is what arq does with any bulk enqueue: a live job waits for the whole drain.

Throughput: the bulk batch's jobs/s from the first enqueue to the last job complete, both ways.
No-op jobs are the window's worst case (the queue's own cost is all there is); the same comparison
runs on real thumbnails (``create_thumbnail`` 250x200 of the sample images, 2,000 jobs; ``--quick``
400), where the job's work dominates: two runs each way, interleaved, their mean (a single pair moves
by 10-15% from run to run on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import mediaq
from benchmarks._harness import BenchContext, row

DATA = Path(__file__).resolve().parents[1] / "data"
LIVE_EVERY = 0.1  # s between two live jobs, as in the test


def run(ctx: BenchContext) -> list[dict]:
    return asyncio.run(_bench(ctx))


async def _bench(ctx: BenchContext) -> list[dict]:
    n_noop = 20_000 if ctx.quick else 100_000
    n_thumbs = 400 if ctx.quick else 2_000
    out: dict[str, dict[str, Any]] = {}
    for priority in ("bulk", "live"):
        ctx.flush()
        with ctx.start_worker():
            out[priority] = await _noop_run(ctx, priority, n_noop)
        print(f"# {priority}: {n_noop} no-op jobs at {out[priority]['rate']:.0f} jobs/s; "
              f"{len(out[priority]['latency'])} live jobs, p50 {_pct(out[priority]['latency'], 50):.3f} s, "
              f"p99 {_pct(out[priority]['latency'], 99):.3f} s")
    runs: dict[str, list[float]] = {"bulk": [], "live": []}
    for priority in ("live", "bulk") * (1 if ctx.quick else 2):  # interleaved: the machine's drift hits both
        ctx.flush()
        with ctx.start_worker():
            runs[priority].append(await _thumb_run(ctx, priority, n_thumbs))
        print(f"# {priority}: {n_thumbs} thumbnails at {runs[priority][-1]:.1f} jobs/s")
    thumbs = {priority: statistics.mean(rates) for priority, rates in runs.items()}
    bulk, live = out["bulk"], out["live"]
    k = f"{n_noop // 1000}k"
    return [
        row(f"live job start latency p50 during a {k} no-op bulk batch", _pct(bulk["latency"], 50),
            _pct(live["latency"], 50), "s", higher_is_better=False, baseline_name="plain arq ordering"),
        row(f"live job start latency p99 during a {k} no-op bulk batch", _pct(bulk["latency"], 99),
            _pct(live["latency"], 99), "s", higher_is_better=False, baseline_name="plain arq ordering"),
        row(f"live job start latency max during a {k} no-op bulk batch", max(bulk["latency"]),
            max(live["latency"]), "s", higher_is_better=False, baseline_name="plain arq ordering"),
        row(f"bulk batch throughput, {k} no-op jobs (window's worst case)", bulk["rate"], live["rate"], "jobs/s",
            baseline_name="all in the queue at once"),
        row(f"bulk batch throughput, {n_thumbs} thumbnails 250x200", thumbs["bulk"], thumbs["live"], "jobs/s",
            baseline_name="all in the queue at once"),
    ]


def _pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if p < 100 else max(values)


async def _noop_run(ctx: BenchContext, priority: str, n: int) -> dict[str, Any]:
    from arq.connections import create_pool

    from mediaq.runtime.connections import redis_settings_for
    from mediaq.runtime.serialization import get_serializer

    client = await mediaq.connect(settings=ctx.settings)
    dumps, loads = get_serializer(ctx.settings.serializer)
    app = await create_pool(redis_settings_for(ctx.settings, client.url), job_serializer=dumps,
                            job_deserializer=loads, default_queue_name=ctx.settings.queue_name)
    try:
        start = time.monotonic()
        batch = await client.enqueue_many("noop", range(n), job_id=f"{priority}-{{0}}", priority=priority,
                                          chunk_size=5000)
        live = []
        for i in range(100_000):  # bounded: the batch ends long before
            job = await app.enqueue_job("noop", "live", _job_id=f"app-{priority}-{i}")
            assert job is not None
            live.append(job)
            await asyncio.sleep(LIVE_EVERY)
            if i % 10 == 9 and (await batch.status())["complete"] == n:
                break
        await batch.wait(progress=False)
        rate = n / (time.monotonic() - start)
        latency = []
        for job in live:
            result = await job.result_info()
            for _ in range(600):  # bounded: the last live jobs finish within moments
                if result is not None:
                    break
                await asyncio.sleep(0.05)
                result = await job.result_info()
            latency.append((result.start_time - result.enqueue_time).total_seconds())
        return {"rate": rate, "latency": latency}
    finally:
        await app.aclose()
        await client.close()


async def _thumb_run(ctx: BenchContext, priority: str, n: int) -> float:
    sources = sorted(str(p) for p in DATA.iterdir() if p.suffix in {".jpg", ".png"})
    client = await mediaq.connect(settings=ctx.settings.replace(storage=ctx.tmp / f"media-{priority}"))
    try:
        start = time.monotonic()
        batch = await client.enqueue_many("create_thumbnail",
                                          ((f"{priority}-{i}", sources[i % len(sources)]) for i in range(n)),
                                          priority=priority)
        counts = await batch.wait(progress=False)
        assert counts["complete"] == n, counts
        return n / (time.monotonic() - start)
    finally:
        await client.close()
