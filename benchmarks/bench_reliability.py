"""Reliability benchmarks (issue 9): recovery after a SIGKILLed worker, and what recovery costs.

- **Recovery**: a batch runs, its worker is SIGKILLed, a new one is started at once. Measured: from
  the kill to the last job that was in flight at the kill completing, and from the new worker being
  ready to the first of them completing; twice: short thumbnail jobs (mostly unclaimed when killed:
  freed as orphans after the 2 s grace) and 0.5 s jobs (claimed: freed at the new worker's start).
  Baseline: the same with stock arq workers, where the in-flight jobs stay blocked until their
  in-progress key expires; that time is *read from Redis* (elapsed + the keys' remaining PTTL) after
  a stock worker has been running for a while, not waited out.
- **Cost**: no-op jobs per second and peak worker RSS, mediaq worker (claims, janitor, counters,
  record checks) against a stock arq worker running the same function with the same serializer.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

import mediaq
from benchmarks._harness import BenchContext, row
from mediaq.runtime.connections import with_db
from mediaq.runtime.server import resolve_redis_url

MiB = 2**20


def _sources(folder: Path, n: int = 8) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    out = []
    for i in range(n):
        w, h = int(rng.integers(300, 900)), int(rng.integers(300, 900))
        path = folder / f"s{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, "JPEG", quality=85)
        out.append(str(path))
    return out


STOCK_SETTINGS = textwrap.dedent('''
    """A stock arq worker: the same no-op and sleep functions and serializer, none of mediaq's worker."""
    import os
    from arq.connections import RedisSettings
    from arq.worker import func
    from mediaq.jobs.images import create_thumbnail
    from mediaq.jobs.util import noop, sleep
    from mediaq.runtime.serialization import msgpack_dumps, msgpack_loads
    from mediaq.runtime.settings import Settings

    async def startup(ctx):
        ctx["settings"] = Settings.load()

    class WorkerSettings:
        functions = [func(noop, name="noop", timeout=10), func(sleep, name="sleep", timeout=600),
                     func(create_thumbnail, name="create_thumbnail")]
        redis_settings = RedisSettings.from_dsn(os.environ["STOCK_REDIS_URL"])
        job_serializer, job_deserializer = msgpack_dumps, msgpack_loads
        max_jobs, poll_delay, job_timeout = int(os.environ["STOCK_MAX_JOBS"]), 0.01, 300
        on_startup = startup
''')


class StockWorker:
    """``arq stock_settings.WorkerSettings`` in a subprocess (own process group, killable)."""

    def __init__(self, ctx: BenchContext, max_jobs: int) -> None:
        import subprocess

        folder = ctx.tmp / "stock"
        folder.mkdir(exist_ok=True)
        (folder / "stock_settings.py").write_text(STOCK_SETTINGS)
        env = {**os.environ, **ctx.settings.to_env(), "PYTHONPATH": str(folder),
               "STOCK_REDIS_URL": with_db(resolve_redis_url(ctx.settings), ctx.settings.queue_db),
               "STOCK_MAX_JOBS": str(max_jobs)}
        self.log = open(folder / "worker.log", "ab")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "arq", "stock_settings.WorkerSettings"], cwd=folder,
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while b"Starting worker" not in (folder / "worker.log").read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the stock arq worker did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        import signal

        os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def _start(ctx: BenchContext, stock: bool, **overrides: Any) -> Any:
    if stock:
        return StockWorker(ctx, overrides.get("max_jobs", 10))
    return mediaq.LocalWorker(ctx.settings.replace(**overrides)).start()


def _stop(worker: Any) -> None:
    worker.stop()


async def _in_progress(client: mediaq.Client) -> dict[str, int]:
    keys = [k async for k in client.redis.scan_iter(match="arq:in-progress:*", count=1000)]
    ttls = [await client.redis.pttl(k) for k in keys]
    return {k.decode().removeprefix("arq:in-progress:"): t for k, t in zip(keys, ttls, strict=True)}


async def _kill_and_recover(ctx: BenchContext, client: mediaq.Client, function: str, items: list[dict],
                            stock: bool, settle: float = 0.0, **overrides: Any) -> dict[str, float]:
    """Run ``items``, SIGKILL the worker while jobs are in flight (``settle`` s after a wave of them
    started), start another at once."""
    ctx.flush()
    worker = _start(ctx, stock, **overrides)
    batch = await client.enqueue_many(function, items)
    while True:
        done = (await batch.status())["complete"]
        if done >= len(items) // 4 and len(await _in_progress(client)) >= 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(settle)
    worker.kill()
    killed = time.time()
    in_flight = await _in_progress(client)
    second = _start(ctx, stock, **overrides)
    ready = time.time()
    try:
        if stock:  # arq alone: watch for a while, then read how long the keys will still block
            await asyncio.sleep(20)
            left = await _in_progress(client)
            blocked = [left[j] for j in in_flight if j in left]
            assert len(blocked) == len(in_flight), "stock arq recovered by itself?"
            return {"in_flight": len(in_flight), "kill_to_in_flight_done": time.time() - killed + max(blocked) / 1000,
                    "ready_to_first": time.time() - ready + min(blocked) / 1000}
        await batch.wait(progress=False, timeout=600)
        df = (await batch.results()).set_index("job_id")
        finished = df.loc[list(in_flight), "finish_time"].map(lambda t: t.timestamp())
        return {"in_flight": len(in_flight), "kill_to_in_flight_done": finished.max() - killed,
                "ready_to_first": finished.min() - ready, "kill_to_batch_done": time.time() - killed}
    finally:
        _stop(second)


async def _throughput(ctx: BenchContext, client: mediaq.Client, n: int, stock: bool) -> tuple[float, float]:
    """No-op jobs per second and the worker's peak RSS."""
    ctx.flush()
    worker = _start(ctx, stock, max_jobs=20, poll_delay=0.01, worker_processes=1)
    proc = psutil.Process(worker.pid)
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        batch = await client.enqueue_many("noop", ({"value": i} for i in range(n)), chunk_size=5000)
        started = time.perf_counter()
        await batch.wait(progress=False, timeout=900, poll_interval=0.2)
        return n / (time.perf_counter() - started), peak[0] / MiB
    finally:
        stop.set()
        thread.join()
        _stop(worker)


async def _bench(ctx: BenchContext) -> list[dict]:
    rows = []
    client = await mediaq.connect(settings=ctx.settings)
    try:
        srcs = _sources(ctx.tmp / "src")
        n_thumbs = 600 if ctx.quick else 2000
        thumbs = [{"image_id": f"t{i}", "source_path": srcs[i % len(srcs)]} for i in range(n_thumbs)]
        naps = [{"seconds": 0.5} for _ in range(100 if ctx.quick else 300)]
        for label, function, items, extra in (("thumbnail jobs", "create_thumbnail", thumbs, {}),
                                              ("0.5 s jobs", "sleep", naps, {"max_jobs": 20, "settle": 0.25})):
            mq = await _kill_and_recover(ctx, client, function, items, False, **extra)
            arq = await _kill_and_recover(ctx, client, function, items, True, **extra)
            print(f"# {label}: mediaq {mq}, arq {arq}", file=sys.stderr)
            rows.append(row(f"worker SIGKILL, {label}: kill -> {mq['in_flight']:.0f} in-flight jobs done",
                            mq["kill_to_in_flight_done"], arq["kill_to_in_flight_done"], "s",
                            higher_is_better=False, baseline_name="stock arq (PTTL read, not waited)"))
            rows.append(row(f"worker SIGKILL, {label}: new worker ready -> first recovered job",
                            max(mq["ready_to_first"], 0.001), arq["ready_to_first"], "s", higher_is_better=False,
                            baseline_name="stock arq (PTTL read, not waited)"))
        n = 5000 if ctx.quick else 20000
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(2):  # interleaved: the machine's load changes between runs
            for stock in (False, True):
                results[stock].append(await _throughput(ctx, client, n, stock))
        mq_rate = max(r for r, _ in results[False])
        arq_rate = max(r for r, _ in results[True])
        rows.append(row(f"no-op jobs/s, one worker (max_jobs 20), {n} jobs", mq_rate, arq_rate, "jobs/s",
                        baseline_name="stock arq worker"))
        rows.append(row(f"worker peak RSS over {n} no-op jobs", max(m for _, m in results[False]),
                        max(m for _, m in results[True]), "MiB", higher_is_better=False,
                        baseline_name="stock arq worker"))
    finally:
        await client.close()
    return rows


def run(ctx: BenchContext) -> list[dict]:
    return asyncio.run(_bench(ctx))
