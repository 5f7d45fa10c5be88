"""Losing the Redis primary: a real Sentinel failover under a bulk enqueue and under a worker.

One primary, one replica and three Sentinels on loopback (:class:`mediaq.runtime.replicaset.LocalReplicaSet`,
the embedded server's binary, ``--sentinel`` for the Sentinels), a real worker subprocess (mediaq's,
with a witness that logs each job start and each acknowledged result: ``tests/witness_worker.py``)
and a client, both on the ``redis+sentinel://`` URL. The primary is SIGKILLed twice: in the middle
of a 20,000-job bulk enqueue (the worker already busy with it) and in the middle of processing, each
time while the replica lags: it is paused (SIGSTOP) for up to 0.8 s before the kill and resumed
right after, with 1 KiB job arguments, so that the primary holds more than the sockets between them
can (without the lag, a SIGKILLed Valkey on loopback has nearly always handed everything to the
kernel, which delivers it after the sender died). After each failover the killed server comes back
as a replica of the new primary (what a supervisor does).

Counted, with and without durable mode: jobs whose chunk was acknowledged to the client but that
are absent after the failover (neither a job nor a result on the new primary), and results the
worker had acknowledged that were lost (the job had to start again after its acknowledgement).
Durable mode must lose nothing; without it the figures are printed and attached (``record_property``),
not asserted: an asynchronous replica on loopback usually has everything, but nothing promises it.
Also checked in both modes: the client and the worker reconnect by themselves, the bulk enqueue
reports honestly (``EnqueueError``), a rerun with the same ids completes the batch without
duplicates, and every job ends with a result (running jobs finish, or the janitor frees them).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import eventually
from witness_worker import lost_results

import mediaq
from mediaq.client.enqueue import BulkEnqueue, EnqueueOptions
from mediaq.runtime import keys
from mediaq.runtime.replicaset import LocalReplicaSet
from mediaq.runtime.scripts import STATES, status_codes
from mediaq.runtime.settings import Settings

JOBS = 20_000
CHUNK = 500
PAYLOAD = "x" * 1024
LAG = 0.8  # seconds the replica is paused before a kill: below down-after-milliseconds, so it stays eligible

pytestmark = pytest.mark.timeout(400)


async def _absent(client: mediaq.Client, ids: list[str]) -> list[str]:
    """Ids the server the client talks to now has never heard of (no job, result or queue entry)."""
    codes = await status_codes(client.redis, client.settings.queue_name, ids, int(time.time() * 1000))
    return [j for j, code in zip(ids, codes, strict=True) if STATES[code] == "not_found"]


async def _results(client: mediaq.Client, ids: list[str]) -> int:
    n = 0
    for start in range(0, len(ids), 5000):
        n += await client.redis.exists(*(keys.RESULT_PREFIX + j for j in ids[start:start + 5000]))
    return n


async def _fail_over(ha: LocalReplicaSet, old) -> None:
    """Wait until the Sentinels promoted the replica, then bring the old primary back as its replica."""
    await asyncio.to_thread(ha.wait_for_failover, old, 60)
    await asyncio.to_thread(ha.restart, old, 60)


@pytest.mark.slow
@pytest.mark.parametrize("durable", [0, 1], ids=["async-replication", "durable"])
async def test_primary_killed_mid_enqueue_and_mid_processing(durable, tmp_path: Path, monkeypatch, record_property,
                                                              capsys):
    ha = LocalReplicaSet(tmp_path / "ha", down_after_ms=1000, failover_timeout_ms=2000).start()
    try:
        settings = Settings.load(env={}, redis_url=ha.url, state_dir=tmp_path / "state", storage=tmp_path / "media",
                                 worker_processes=1, max_jobs=100, poll_delay=0.02, health_check_interval=1,
                                 durable_replicas=durable, durable_timeout=2)
        witness = tmp_path / "witness.log"
        monkeypatch.setenv("WITNESS_LOG", str(witness))
        here = str(Path(__file__).parent)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
        worker = mediaq.LocalWorker(settings, arq_settings="witness_worker.WorkerSettings").start()
        client = await mediaq.connect(settings=settings)
        try:
            ids = [f"f:{i}" for i in range(JOBS)]

            def bulk() -> BulkEnqueue:
                return BulkEnqueue(client, "noop", ({"value": PAYLOAD} for _ in range(JOBS)),
                                   EnqueueOptions(job_id="f:{index}"), batch="failover", chunk_size=CHUNK)

            # 1. kill the primary in the middle of the bulk enqueue (from another thread, at no chosen point)
            first = bulk()
            old = ha.primary()
            # The kill must land before the enqueue ends: with asynchronous replication nothing slows
            # the enqueue (20k jobs in well under a second), so stop the lag at half way, leaving
            # half the run for this thread to get the GIL and the SIGKILL to land on a busy machine.
            killer = threading.Thread(target=_kill_lagging, args=(ha, old, lambda: first.written >= JOBS // 4,
                                                                  lambda: first.written >= JOBS // 2))
            killer.start()
            with pytest.raises(mediaq.EnqueueError) as err:
                await first.run()
            killer.join()
            acked = ids[:err.value.written]
            assert JOBS // 4 <= len(acked) < JOBS and err.value.in_doubt in (0, CHUNK)
            await _fail_over(ha, old)
            lost_enqueued = await _absent(client, acked)

            # 2. the same call again finishes the batch: nothing written twice
            second = bulk()
            batch = await second.run()
            assert second.written == JOBS  # every chunk landed; the ids already there were skipped, not rewritten
            assert len(acked) - len(lost_enqueued) <= len(second.skipped) == len(set(second.skipped))
            assert batch.ids == ids and await client.redis.zcard(batch.ids_key) == JOBS
            # the replica has the rerun before step 3 pauses it (else asynchronous replication could
            # lose the rerun's tail there too, and step 4 would wait for jobs that no longer exist)
            await asyncio.to_thread(ha.wait_in_sync, 60)

            # 3. kill the primary in the middle of processing
            done = await eventually(lambda: _results(client, ids), lambda n: n >= JOBS * 2 // 5, timeout=240,
                                    what="40% of the jobs done")
            assert done < JOBS, "the worker finished before the kill: no failover under processing was tested"
            old = ha.primary()
            await asyncio.to_thread(ha.kill_lagging, old, LAG)
            await _fail_over(ha, old)
            lost_enqueued += [j for j in await _absent(client, ids) if j not in lost_enqueued]

            # 4. every job ends with a result; the worker lived through both failovers
            await eventually(lambda: _results(client, ids), lambda n: n == JOBS, timeout=240,
                             what="every job has a result", interval=0.5)
            assert worker.alive, worker.logs(40)
            lost = lost_results(witness)
        finally:
            await client.close()
            worker.stop()
    finally:
        ha.stop()

    figures = {"durable_replicas": durable, "acknowledged_jobs_lost": len(lost_enqueued),
               "acknowledged_results_lost": len(lost)}
    for name, value in figures.items():
        record_property(name, value)
    with capsys.disabled():
        print(f"\nfailover figures: {figures}")
    if durable:
        assert lost_enqueued == [] and lost == [], figures


def _kill_lagging(ha: LocalReplicaSet, primary, start, until, timeout: float = 120.0) -> None:
    """Once ``start()`` holds, kill the primary while the replica lags (until ``until()`` or LAG s)."""
    deadline = time.monotonic() + timeout
    while not start() and time.monotonic() < deadline:
        time.sleep(0.0005)
    ha.kill_lagging(primary, LAG, until)
