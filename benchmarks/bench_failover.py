"""Sentinel failover (issue 19): how long clients and workers are cut off, what durable mode costs, and
what a failover loses with and without it.

On a :class:`~mediaq.runtime.replicaset.LocalReplicaSet` (1 primary, 1 replica, 3 Sentinels on loopback,
``down-after-milliseconds`` 1000, ``failover-timeout`` 2000), with a real worker (mediaq's, plus the
tests' witness that logs each job start and acknowledged result) and a client on the
``redis+sentinel://`` URL:

- **Throughput**: a 20k-job bulk enqueue (jobs/s) and the worker running 20k no-op jobs (jobs/s),
  durable mode (``durable_replicas=1``: ``WAIT 1`` after every chunk and every result) against
  asynchronous replication, in the same run on the same servers.
- **Failovers**: ``--quick`` 3, else 10 per mode and scenario. Each one SIGKILLs the primary in the
  middle of a bulk enqueue of 5k jobs (10k with 1 KiB arguments in the lag scenario; the worker busy
  with the backlog), waits for the Sentinels to promote the replica, restarts the killed server as a
  replica and reruns the enqueue; the worker drains every batch after the scenario's last failover.
  Measured per failover: from the kill to the client's first successful write (a probe writing
  every 5 ms through the client's pool) and to the worker's first job started on the new primary,
  against the baseline of the Sentinels themselves (kill to all of them naming the promoted replica,
  which answers as primary). Counted: jobs acknowledged to the client but absent after the failover,
  and results the worker acknowledged that were lost (the job started again after its
  acknowledgement). Two scenarios, as in ``tests/test_failover.py``: the plain kill (no-op jobs
  without arguments), and a kill while the replica lags (paused with SIGSTOP for up to 0.8 s first,
  with 1 KiB job arguments, so the primary holds more than the sockets to the replica can take).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mediaq
from benchmarks._harness import BenchContext, row
from mediaq.client.enqueue import BulkEnqueue, EnqueueOptions
from mediaq.runtime import keys
from mediaq.runtime.replicaset import LocalReplicaSet, Node
from mediaq.runtime.scripts import STATES, status_codes

TESTS = Path(__file__).resolve().parents[1] / "tests"  # witness_worker.py lives with the failover test
CHUNK = 500
PAYLOAD = "x" * 1024
LAG = 0.8
#: throughput runs per mode, alternating between the modes
ROUNDS = 4


def run(ctx: BenchContext) -> list[dict]:
    return asyncio.run(_bench(ctx))


async def _bench(ctx: BenchContext) -> list[dict]:
    sys.path.insert(0, str(TESTS))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    rows: list[dict] = []
    failovers = 3 if ctx.quick else 10
    figures: dict[tuple[str, int], dict[str, Any]] = {}
    rates: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    with contextlib.ExitStack() as stack:
        # both modes' replica sets at once, so their throughput runs alternate (A B B A ...) and the
        # machine's noise hits both; the failovers then run one mode after the other
        rigs = {d: Rig(ctx, stack.enter_context(LocalReplicaSet(ctx.tmp / f"ha{d}", down_after_ms=1000,
                                                                  failover_timeout_ms=2000)), d) for d in (0, 1)}
        started: list[Rig] = []
        try:
            for rig in rigs.values():
                await rig.start()
                started.append(rig)
            for r in range(ROUNDS):
                for durable in ((0, 1) if r % 2 == 0 else (1, 0)):
                    rates[durable].append(await rigs[durable].throughput(20_000, f"rate{durable}-{r}"))
            for durable, rig in rigs.items():
                for scenario in ("kill", "kill while the replica lags"):
                    lag = scenario != "kill"
                    figures[(scenario, durable)] = await rig.failovers(failovers, 10_000 if lag else 5_000, lag=lag)
                await started.pop(0).stop()  # its worker would only add load to the other mode's failovers
        finally:
            for rig in started:
                await rig.stop()
    print(f"# throughput runs (enqueue, worker jobs/s): async {rates[0]}, durable {rates[1]}", file=sys.stderr)
    (enq0, work0), (enq1, work1) = ((statistics.median(e for e, _ in rates[d]),
                                     statistics.median(w for _, w in rates[d])) for d in (0, 1))
    rows.append(row(f"bulk enqueue, 20k no-op jobs, durable mode (WAIT 1 per chunk), median of {ROUNDS}", enq1, enq0,
                    "jobs/s", baseline_name="asynchronous replication"))
    rows.append(row(f"worker, 20k no-op jobs, durable mode (WAIT 1 per result), median of {ROUNDS}", work1, work0,
                    "jobs/s",
                    baseline_name="asynchronous replication"))
    for durable in (0, 1):
        f = figures[("kill", durable)]
        mode = "durable" if durable else "async replication"
        sentinel = statistics.median(f["sentinel"])
        rows.append(row(f"failover seen by the client, median of {len(f['client'])} ({mode})",
                        statistics.median(f["client"]), sentinel, "s", higher_is_better=False,
                        baseline_name="Sentinels promoted the replica (median)"))
        rows.append(row(f"failover seen by the client, worst ({mode})", max(f["client"]), max(f["sentinel"]), "s",
                        higher_is_better=False, baseline_name="Sentinels, worst"))
        rows.append(row(f"failover seen by the worker, median of {len(f['worker'])} ({mode})",
                        statistics.median(f["worker"]), sentinel, "s", higher_is_better=False,
                        baseline_name="Sentinels promoted the replica (median)"))
    for scenario in ("kill", "kill while the replica lags"):
        plain, durable_f = figures[(scenario, 0)], figures[(scenario, 1)]
        n = len(plain["jobs_lost"])
        rows.append(row(f"acknowledged jobs lost per failover, mean of {n}, {scenario}: durable",
                        statistics.mean(durable_f["jobs_lost"]), statistics.mean(plain["jobs_lost"]), "jobs",
                        higher_is_better=False, baseline_name="asynchronous replication"))
        rows.append(row(f"acknowledged results lost per failover, mean of {n}, {scenario}: durable",
                        statistics.mean(durable_f["results_lost"]), statistics.mean(plain["results_lost"]),
                        "results", higher_is_better=False, baseline_name="asynchronous replication"))
        rows.append(row(f"jobs without a result 300 s after the last failover, {scenario}: durable",
                        durable_f["stuck"][0], plain["stuck"][0], "jobs", higher_is_better=False,
                        baseline_name="asynchronous replication"))
        print(f"# failover {scenario}: jobs lost per failover async {plain['jobs_lost']} durable "
              f"{durable_f['jobs_lost']}; results lost async {plain['results_lost']} durable "
              f"{durable_f['results_lost']}", file=sys.stderr)
    return rows


class Rig:
    """A replica set, a witness worker and a client in one durable mode."""

    def __init__(self, ctx: BenchContext, ha: LocalReplicaSet, durable: int) -> None:
        self.ctx, self.ha, self.durable = ctx, ha, durable
        self.settings = ctx.settings.replace(
            redis_url=ha.url, state_dir=ctx.tmp / f"state{durable}", storage=ctx.tmp / "media", worker_processes=1,
            max_jobs=100, poll_delay=0.02, health_check_interval=1, durable_replicas=durable, durable_timeout=2)
        self.witness = ctx.tmp / f"witness{durable}.log"
        self.cycle = 0

    async def start(self) -> None:
        os.environ["WITNESS_LOG"] = str(self.witness)
        self.worker = mediaq.LocalWorker(self.settings, arq_settings="witness_worker.WorkerSettings").start()
        self.client = await mediaq.connect(settings=self.settings)

    async def stop(self) -> None:
        await self.client.close()
        self.worker.stop()

    def bulk(self, name: str, n: int, payload: str | None = None) -> BulkEnqueue:
        return BulkEnqueue(self.client, "noop", ({"value": payload} for _ in range(n)),
                           EnqueueOptions(job_id=name + ":{index}"), batch=name, chunk_size=CHUNK)

    async def results(self, name: str, n: int) -> int:
        done = 0
        for start in range(0, n, 5000):
            done += await self.client.redis.exists(*(f"{keys.RESULT_PREFIX}{name}:{i}"
                                                     for i in range(start, min(n, start + 5000))))
        return done

    async def drain(self, name: str, n: int, timeout: float = 600) -> int:
        """Wait until every job of batch ``name`` has a result; returns how many still had none after
        ``timeout`` s (0 expected), and says what state they are in."""
        deadline = time.monotonic() + timeout
        while await self.results(name, n) < n:
            if time.monotonic() > deadline:
                return await self._report_stuck(name, n, timeout)
            await asyncio.sleep(0.05)
        return 0

    async def _report_stuck(self, name: str, n: int, timeout: float) -> int:
        redis = self.client.redis
        ids = [f"{name}:{i}" for i in range(n)]
        codes = await status_codes(redis, self.settings.queue_name, ids, int(time.time() * 1000))
        stuck = [(j, STATES[c]) for j, c in zip(ids, codes, strict=True)
                 if c < len(STATES) and STATES[c] in ("not_found", "queued", "deferred", "in_progress")]
        for job_id, state in stuck[:5]:
            ttl = await redis.pttl(keys.IN_PROGRESS_PREFIX + job_id)
            claimed = [k.decode() async for k in redis.scan_iter(match=keys.CLAIMS_PREFIX + "*")
                       if await redis.sismember(k, job_id)]
            print(f"# STUCK {job_id}: {state}, in-progress TTL {ttl} ms, claimed by {claimed}", file=sys.stderr)
        print(f"# {len(stuck)} job(s) of {name} without a result {timeout:g} s after the scenario", file=sys.stderr)
        return len(stuck)

    async def throughput(self, n: int, name: str) -> tuple[float, float]:
        """(enqueue jobs/s, worker jobs/s) for ``n`` no-op jobs in batch ``name``, the worker held back
        while enqueueing."""
        os.kill(self.worker.pid, signal.SIGSTOP)  # measure the enqueue alone
        try:
            started = time.perf_counter()
            await self.bulk(name, n).run()
            enqueue = n / (time.perf_counter() - started)
        finally:
            os.kill(self.worker.pid, signal.SIGCONT)
        started = time.perf_counter()
        await self.drain(name, n)
        return enqueue, n / (time.perf_counter() - started)

    async def failovers(self, count: int, size: int, *, lag: bool) -> dict[str, list[float]]:
        from witness_worker import lost_results

        out: dict[str, list[float]] = {k: [] for k in ("client", "worker", "sentinel", "jobs_lost", "results_lost",
                                                          "stuck")}
        before = set(lost_results(self.witness))
        batches = []
        for _ in range(count):
            self.cycle += 1
            name = f"c{self.durable}-{self.cycle}"
            ids = [f"{name}:{i}" for i in range(size)]
            payload = PAYLOAD if lag else None
            first = self.bulk(name, size, payload)
            old = self.ha.primary()
            killed: dict[str, float] = {}
            at = random.uniform(0.2, 0.5) * size
            killer = threading.Thread(target=self._kill_when, args=(old, first, at, at + size / 2 if lag else None,
                                                                    killed))
            probe = asyncio.create_task(self._probe(killed))
            killer.start()
            written = size
            try:
                await first.run()
            except mediaq.EnqueueError as exc:
                written = exc.written
            await asyncio.to_thread(killer.join)
            await asyncio.to_thread(self.ha.wait_for_failover, old, 60)
            out["sentinel"].append(time.monotonic() - killed["at"])
            out["client"].append(await probe)
            await asyncio.to_thread(self.ha.restart, old, 60)
            out["jobs_lost"].append(len(await _absent(self.client, ids[:written])))
            await self.bulk(name, size, payload).run()  # the rerun completes the batch
            # ...and the replica must have it before the next cycle pauses it: with asynchronous
            # replication the next failover would otherwise lose this rerun's tail, a loss that
            # belongs to no cycle's count and leaves those jobs without a result for good
            await asyncio.to_thread(self.ha.wait_in_sync, 60)
            batches.append(name)
            out["worker"].append(await self._worker_back(killed["at"]))
        stuck = 0
        for name in batches:
            stuck += await self.drain(name, size, timeout=300 if not stuck else 5)
        out["stuck"] = [stuck]
        lost = set(lost_results(self.witness)) - before
        for name in batches:  # per failover: each batch's enqueue was cut by its own failover
            out["results_lost"].append(sum(1 for j in lost if j.startswith(name + ":")))
        return out

    async def _worker_back(self, at: float, timeout: float = 120) -> float:
        """Seconds from ``at`` (the kill) to the worker's first job started after it."""
        deadline = time.monotonic() + timeout
        while (first := _first_start_after(self.witness, at)) == float("inf"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker started no job within {timeout} s of the kill")
            await asyncio.sleep(0.1)
        return first - at

    def _kill_when(self, old: Node, bulk: BulkEnqueue, at: float, lag_until: float | None,
                   killed: dict[str, float]) -> None:
        """Once ``at`` jobs are written, kill the primary; with ``lag_until``, while the replica lags
        (until that many are written, or LAG s)."""
        deadline = time.monotonic() + 120
        while bulk.written < at and time.monotonic() < deadline:
            time.sleep(0.0005)
        if lag_until is not None:
            self.ha.kill_lagging(old, LAG, lambda: bulk.written >= lag_until)
        else:
            self.ha.kill(old)
        killed["at"] = time.monotonic()

    async def _probe(self, killed: dict[str, float]) -> float:
        """Seconds from the kill to the first write that succeeds afterwards, writing every 5 ms."""
        while True:
            started = time.monotonic()
            try:
                await self.client.cache.incr(keys.STATS + ":probe")
            except Exception:
                pass
            else:
                if "at" in killed and started > killed["at"]:
                    return time.monotonic() - killed["at"]
            await asyncio.sleep(0.005)


async def _absent(client: mediaq.Client, ids: list[str]) -> list[str]:
    """Ids the server the client talks to now has never heard of (no job, result or queue entry)."""
    codes = await status_codes(client.redis, client.settings.queue_name, ids, int(time.time() * 1000))
    return [j for j, code in zip(ids, codes, strict=True) if STATES[code] == "not_found"]


def _first_start_after(witness: Path, at: float) -> float:
    with open(witness) as fh:
        times = [float(p[2]) for p in (line.split() for line in fh) if len(p) == 3 and p[0] == "start"]
    return min((t for t in times if t > at), default=float("inf"))
