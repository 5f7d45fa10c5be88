"""Issue 9, item 7: a 100,000-job batch runs to completion with bounded memory in the worker and in
the notebook-side client (this process). About 1.5-2 minutes on 2 cores.

Memory is sampled every 0.1 s (psutil RSS) in a thread. The bounds are there to catch leaks that
grow with the number of jobs, not to pin today's figures: a worker leaking 100 bytes per job would
grow 9 MB between 10% and 100% of the batch; a client holding the items or the ids as Python objects
would grow by tens of MB while waiting.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

MiB = 2**20


class Peaks:
    """Peak RSS of some processes, sampled in a thread."""

    def __init__(self, **procs: psutil.Process) -> None:
        self.procs = procs
        self.peak = {k: p.memory_info().rss for k, p in procs.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)
            time.sleep(0.1)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(420)
async def test_100k_jobs_complete_with_bounded_memory(client, start_worker):
    n = 100_000
    worker = start_worker(max_jobs=20, poll_delay=0.01, worker_processes=1)
    me, wp = psutil.Process(), psutil.Process(worker.pid)
    gc.collect()
    base_client, base_worker = me.memory_info().rss, wp.memory_info().rss
    at_10pct = None
    started = time.monotonic()
    with Peaks(client=me, worker=wp) as peaks:
        # items from a generator and 5,000 jobs per atomic chunk: the client never holds them all
        batch = await client.enqueue_many("noop", ({"value": i} for i in range(n)), job_id="load{value}",
                                          chunk_size=5000)
        while True:
            counts = await batch.status()
            done = counts["complete"] + counts["failed"] + counts["not_found"]
            if at_10pct is None and done >= n // 10:
                at_10pct = wp.memory_info().rss
            if done >= n:
                break
            assert time.monotonic() - started < 400, f"not finished: {counts}"  # a clear failure before the kill
            await asyncio.sleep(2)
        wait_peak_client = peaks.peak["client"]
        end_worker = wp.memory_info().rss
        df = await batch.results()
    elapsed = time.monotonic() - started

    assert counts["complete"] == n and counts["failed"] == 0, counts
    assert len(df) == n and df["job_id"].is_unique and (df["status"] == "complete").all()
    assert sorted(df["result"]) == list(range(n))
    assert worker.alive

    worker_growth = end_worker - at_10pct
    client_wait_growth = wait_peak_client - base_client
    client_results_growth = peaks.peak["client"] - base_client
    assert worker_growth < 10 * MiB, f"worker grew {worker_growth / MiB:.1f} MiB over 90k jobs"
    assert client_wait_growth < 64 * MiB, f"client grew {client_wait_growth / MiB:.1f} MiB enqueueing and waiting"
    assert client_results_growth < 4096 * n, f"results() peaked at +{client_results_growth / MiB:.0f} MiB"
    print(f"\nload: {n} jobs in {elapsed:.0f} s ({n / elapsed:.0f} jobs/s incl. enqueue); worker peak RSS "
          f"{peaks.peak['worker'] / MiB:.1f} MiB (start {base_worker / MiB:.1f}, +{worker_growth / MiB:.2f} MiB "
          f"from 10% to 100%); client peak RSS {wait_peak_client / MiB:.1f} MiB while enqueueing and waiting "
          f"(+{client_wait_growth / MiB:.1f} MiB), {peaks.peak['client'] / MiB:.1f} MiB building the "
          f"100k-row results frame (+{client_results_growth / MiB:.0f} MiB)")
