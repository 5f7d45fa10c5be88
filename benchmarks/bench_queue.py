"""Queue benchmarks (issue 6), against stock arq on the same server, measured in one run.

- bulk enqueue of N jobs: ``enqueue_many`` vs sequential ``ArqRedis.enqueue_job``, and vs the
  server's ceiling for the same writes without checks (pipelined PSETEX + ZADD);
- N results to a DataFrame: ``batch.results()`` vs ``all_job_results()`` + ``pd.DataFrame``;
- ``batch.status()`` over N jobs (target <= 0.5 s);
- the Redis server's CPU while ``batch.wait()`` waits on N queued jobs, against reading the status
  every 0.5 s (what ``wait()`` did before it spaced its reads by their cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc

import pandas as pd

import mediaq
from benchmarks._harness import BenchContext, cpu_seconds, row
from mediaq.runtime.serialization import msgpack_dumps
from mediaq.runtime.server import EmbeddedServer


async def _bench(ctx: BenchContext) -> list[dict]:
    n = 20_000 if ctx.quick else 100_000
    n_seq = 2_000 if ctx.quick else 5_000  # sequential enqueue is measured on a sample, as jobs/s
    rows = []
    client = await mediaq.connect(settings=ctx.settings)
    try:
        items = [{"value": i} for i in range(n)]

        # 1. sequential arq enqueue_job
        t = time.perf_counter()
        for i in range(n_seq):
            await client.redis.enqueue_job("noop", value=i, _job_id=f"seq{i}")
        seq_rate = n_seq / (time.perf_counter() - t)
        ctx.flush()

        # 2. the server's ceiling: pipelined PSETEX + ZADD, no existence checks
        t = time.perf_counter()
        now = int(time.time() * 1000)
        for start in range(0, n, 1000):
            async with client.redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 1000, n)):
                    pipe.psetex(f"arq:job:raw{i}", 86_400_000,
                                msgpack_dumps({"t": None, "f": "noop", "a": [], "k": {"value": i}, "et": now}))
                    pipe.zadd(ctx.settings.queue_name, {f"raw{i}": now})
                await pipe.execute()
        raw_rate = n / (time.perf_counter() - t)
        ctx.flush()

        # 3. mediaq bulk enqueue (Lua, keeps arq's duplicate check, atomic chunks)
        t = time.perf_counter()
        batch = await client.enqueue_many("noop", items, job_id="b{value}", batch="bench")
        bulk_rate = n / (time.perf_counter() - t)
        rows.append(row(f"bulk enqueue {n} jobs", bulk_rate, seq_rate, "jobs/s", baseline_name="arq enqueue_job"))
        rows.append(row(f"bulk enqueue {n} jobs vs server ceiling", bulk_rate, raw_rate, "jobs/s",
                        baseline_name="pipelined PSETEX+ZADD"))

        # batch.status() over n queued jobs (first call, nothing cached)
        fresh = client.batch("bench")
        t = time.perf_counter()
        await fresh.status()
        rows.append(row(f"batch.status() over {n} jobs", time.perf_counter() - t, 0.5, "s",
                        higher_is_better=False, baseline_name="target 0.5 s"))

        # the Redis server's CPU while a client waits on these n queued jobs (no worker runs them):
        # batch.wait() against reading the status every poll_interval (0.5 s), as wait() did before
        server = [EmbeddedServer(ctx.settings.state_dir).status()["pid"]]
        span = 3.0 if ctx.quick else 8.0

        async def wait_for_a_while() -> None:
            with contextlib.suppress(TimeoutError):
                await fresh.wait(progress=False, timeout=span)

        async def poll_every_interval() -> None:
            end = time.monotonic() + span
            while time.monotonic() < end:
                await fresh.status()
                await asyncio.sleep(0.5)

        waiting = {}
        for name, fn in (("wait", wait_for_a_while), ("poll", poll_every_interval)):
            cpu0, t = cpu_seconds(server), time.perf_counter()
            await fn()
            waiting[name] = (cpu_seconds(server) - cpu0) / (time.perf_counter() - t)
        rows.append(row(f"Redis server busy while a client waits on {n} queued jobs (share of a core)",
                        waiting["wait"] * 100, waiting["poll"] * 100, "%", higher_is_better=False,
                        baseline_name="status read every 0.5 s"))

        # results: write n result records as a worker would, then read them both ways
        ctx.flush()
        batch = await client.enqueue_many("noop", items, job_id="b{value}", batch="bench")
        await client.redis.delete(ctx.settings.queue_name)
        for start in range(0, n, 1000):
            async with client.redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 1000, n)):
                    pipe.set(f"arq:result:b{i}", msgpack_dumps(
                        {"t": 1, "f": "noop", "a": [], "k": {"value": i}, "et": now, "s": True,
                         "r": {"value": i, "ok": True}, "st": now + 5, "ft": now + 9, "q": "arq:queue",
                         "id": f"b{i}"}), px=3_600_000)
                    pipe.delete(f"arq:job:b{i}")
                await pipe.execute()

        async def mediaq_way() -> pd.DataFrame:
            return await client.batch("bench").results()

        async def arq_way() -> pd.DataFrame:
            return pd.DataFrame([r.__dict__ for r in await client.redis.all_job_results()])

        # timings without tracemalloc (it slows Python down); peak memory in a second, traced pass
        mediaq_s, df = await _timed(mediaq_way)
        assert len(df) == n, len(df)
        del df
        arq_s, df = await _timed(arq_way)
        assert len(df) == n
        del df
        mediaq_peak = await _peak(mediaq_way)
        arq_peak = await _peak(arq_way)
        rows.append(row(f"{n} results to a DataFrame", mediaq_s, arq_s, "s", higher_is_better=False,
                        baseline_name="all_job_results()+DataFrame"))
        rows.append(row(f"{n} results to a DataFrame, peak Python memory", mediaq_peak / 2**20,
                        arq_peak / 2**20, "MiB", higher_is_better=False, baseline_name="same, arq"))
        t = time.perf_counter()
        await batch.status()
        rows.append(row(f"batch.status() over {n} finished jobs", time.perf_counter() - t, 0.5, "s",
                        higher_is_better=False, baseline_name="target 0.5 s"))
    finally:
        await client.close()
    return rows


async def _timed(fn):
    gc.collect()
    t = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t, out


async def _peak(fn) -> int:
    gc.collect()
    tracemalloc.start()
    out = await fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak


def run(ctx: BenchContext) -> list[dict]:
    return asyncio.run(_bench(ctx))
