"""The worker's process pool (:class:`mediaq.runtime.procpool.ProcessPool`) against the standard
library's ``concurrent.futures.ProcessPoolExecutor``, which the worker used before (issue 17, item 2),
and against ``anyio.to_process.run_sync`` (anyio comes with httpx), the library that does the same
without threads: the reason mediaq has a pool of its own is in these rows.

Each pool as the worker would make it: 2 processes (one per core here), ``forkserver``, the same
initializer; an event loop keeps at most 10 calls in flight (the worker's ``max_jobs``), the
executor's through ``loop.run_in_executor`` as arq's own process-pool recipe does. Two call sizes:

- **no work**: the dispatch alone (pickle, hand over, result back), calls/s;
- **8 ms of CPU** a call, about one thumbnail's decode and encode: calls/s, and the main process's
  CPU per call (``getrusage``, every thread of it: the executor's manager and feeder threads too).
  With both cores busy in the pool, whatever the main process spends is taken from the pool.

Rounds rotate the order (executor, pool, anyio; pool, anyio, executor; ...); figures are medians.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio
import anyio.to_process

from benchmarks._harness import BenchContext, row
from mediaq.runtime.jobspec import exit_with_parent
from mediaq.runtime.procpool import ProcessPool

PROCESSES = 2
IN_FLIGHT = 10


def spin(ms: float) -> dict[str, Any]:
    """``ms`` milliseconds of CPU in the calling process; a small dict back, as a job's result is."""
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass
    return {"ms": ms, "path": "/srv/media/thumbs/42.jpg", "width": 250, "height": 167}


async def _drive(call: Callable[[float], Awaitable[Any]], n: int, ms: float) -> tuple[float, float]:
    """(calls/s, main-process CPU ms per call) for ``n`` calls, ``IN_FLIGHT`` at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with gate:
            await call(ms)

    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return n / elapsed, cpu / n * 1000


async def _bench(ctx: BenchContext) -> list[dict]:
    rounds = 2 if ctx.quick else 6
    sizes = {0.0: 1000 if ctx.quick else 4000, 8.0: 150 if ctx.quick else 600}
    mp = multiprocessing.get_context("forkserver")
    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(PROCESSES, mp_context=mp, initializer=exit_with_parent)
    pool = ProcessPool(PROCESSES, mp_context=mp, initializer=exit_with_parent)
    limiter = anyio.CapacityLimiter(PROCESSES)
    sides: dict[str, Callable[[float], Awaitable[Any]]] = {
        "executor": lambda ms: loop.run_in_executor(executor, spin, ms),
        "pool": lambda ms: pool.run(spin, ms),
        "anyio": lambda ms: anyio.to_process.run_sync(spin, ms, cancellable=True, limiter=limiter),
    }
    seen: dict[tuple[str, float], list[tuple[float, float]]] = {}
    try:
        for call in sides.values():  # warm up: every process started and has imported this module
            await _drive(call, 20, 0.0)
        for r in range(rounds):
            order = list(sides)
            for name in order[r % 3:] + order[:r % 3]:
                for ms, n in sizes.items():
                    seen.setdefault((name, ms), []).append(await _drive(sides[name], n, ms))
    finally:
        executor.shutdown(wait=True)
        pool.shutdown(wait=True)

    def median(name: str, ms: float, i: int) -> float:
        return statistics.median(v[i] for v in seen[(name, ms)])

    rows = []
    for other, base in (("executor", f"ProcessPoolExecutor({PROCESSES}), run_in_executor"),
                        ("anyio", f"anyio.to_process.run_sync, CapacityLimiter({PROCESSES})")):
        spread = ", ".join(f"{name} {min(v[0] for v in seen[(name, 8.0)]):.0f}-"
                           f"{max(v[0] for v in seen[(name, 8.0)]):.0f}" for name in ("pool", other))
        rows += [
            row(f"pool dispatch alone, no work, {IN_FLIGHT} calls in flight, {PROCESSES} processes",
                median("pool", 0.0, 0), median(other, 0.0, 0), "calls/s", baseline_name=base),
            row(f"calls of 8 ms CPU, both cores busy in the pool (runs: {spread})", median("pool", 8.0, 0),
                median(other, 8.0, 0), "calls/s", baseline_name=base),
            row("  same, main-process CPU per call (every thread)", median("pool", 8.0, 1),
                median(other, 8.0, 1), "ms", higher_is_better=False, baseline_name=base),
            row("  no work, main-process CPU per call (every thread)", median("pool", 0.0, 1),
                median(other, 0.0, 1), "ms", higher_is_better=False, baseline_name=base),
        ]
    return rows


def run(ctx: BenchContext) -> list[dict]:
    return asyncio.run(_bench(ctx))
