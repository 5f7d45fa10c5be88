"""Issue 9, item 1: a worker SIGKILLed mid-batch loses nothing, and its jobs do not wait out arq's
in-progress timeout (610 s here: the longest registered timeout, ``sleep``'s 600 s, + 10 s).

Real server, real worker subprocesses, real thumbnails. The janitor itself (dead or alive, local or
remote, orphans) is also checked directly against the real server, with planted records.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import eventually, pid_gone
from PIL import Image

from mediaq.pure.imaging import fit_size
from mediaq.runtime import keys
from mediaq.runtime.recovery import (
    Janitor,
    WorkerIdentity,
    read_recoveries,
)

pytestmark = pytest.mark.slow

SIZES = [(320, 240), (240, 320), (400, 100), (64, 48), (300, 300), (500, 220), (180, 260), (260, 200)]


def make_sources(folder: Path) -> list[tuple[str, tuple[int, int]]]:
    """Small JPEGs of various shapes (noise over a gradient, so each encodes to real bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    out = []
    for i, (w, h) in enumerate(SIZES):
        grad = np.linspace(0, 255, w, dtype=np.float64)[None, :, None].repeat(h, 0).repeat(3, 2)
        arr = np.clip(grad * 0.7 + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"src{i}.jpg"
        Image.fromarray(arr).save(path, "JPEG", quality=85)
        out.append((str(path), (w, h)))
    return out


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


async def test_worker_killed_mid_batch_loses_nothing(settings, client, start_worker, tmp_path):
    sources = make_sources(tmp_path / "src")
    n = 2000
    items = [{"image_id": f"img{i:05d}", "source_path": sources[i % len(sources)][0]} for i in range(n)]
    expected = {f"img{i:05d}": fit_size(sources[i % len(sources)][1], (250, 200)) for i in range(n)}
    first = start_worker(poll_delay=0.01)  # refills its 10 slots at once: jobs are always in flight
    batch = await client.enqueue_many("create_thumbnail", items, job_id="thumb:{image_id}", chunk_size=500)
    assert len(await batch.load()) == n

    async def busy():
        if (await batch.status())["complete"] < 300:
            return False
        return len([k async for k in client.redis.scan_iter(match="arq:in-progress:*", count=1000)]) >= 5
    await eventually(busy, timeout=90, what="300 thumbnails done and at least 5 running")

    first.kill()  # SIGKILL the worker and its pool: no cleanup of any kind runs
    killed_at = time.time()
    dead_name = f"{socket.gethostname()}:{first.pid}"
    claimed = {m.decode() for m in await client.redis.smembers(keys.claims(dead_name))}
    # started and not finished (a finish deletes the in-progress key): these are blocked for 610 s
    in_flight = {k.decode().removeprefix("arq:in-progress:")
                 async for k in client.redis.scan_iter(match="arq:in-progress:*")}
    status = await batch.status()
    assert status["complete"] < n, "the batch finished before the kill: nothing was tested"
    assert in_flight, "no job was running at the kill: nothing was tested"

    second = start_worker(poll_delay=0.01)
    counts = await batch.wait(progress=False, timeout=90)  # arq alone would block these jobs 610 s
    assert counts["complete"] == n and counts["failed"] == 0 and counts["not_found"] == 0, counts

    # every output is there and is a valid image of the expected size
    media = Path(Path(settings.storage)) / "thumbs"
    for image_id, size in expected.items():
        with Image.open(media / f"{image_id}.jpg") as im:
            assert im.format == "JPEG" and im.size == size, image_id
            im.load()  # decodes fully: a truncated file would raise
    assert sorted(p.name for p in media.iterdir()) == sorted(f"{i}.jpg" for i in expected)
    assert temp_files(Path(settings.storage)) == []

    # the new worker found the dead one and freed its jobs: those it had claimed at once, the others
    # (started less than 50 ms before, or between arq's marking and the claim) as orphans 2 s later
    recoveries = await read_recoveries(client.redis)
    mine = [r for r in recoveries if r["reason"] == "dead_worker" and r["worker"] == dead_name]
    assert len(mine) == 1 and mine[0]["by"] == f"{socket.gethostname()}:{second.pid}"
    assert set(mine[0]["ids"]) <= claimed
    freed = {i for r in recoveries if r["by"] == mine[0]["by"] for i in r["ids"]}
    assert in_flight <= freed, in_flight - freed
    df = await batch.results()
    recovered = df[df["job_id"].isin(in_flight)]
    assert len(recovered) == len(in_flight) and (recovered["status"] == "complete").all()
    # (their tries are 2, or 1 for a job killed after arq marked it but before it counted the try)
    assert await client.redis.hget(keys.CLAIMANTS, dead_name) is None
    assert second.alive
    print(f"\nrecovery: {len(in_flight)} in flight at the kill ({len(claimed & in_flight)} claimed); "
          f"all {n} complete {time.time() - killed_at:.1f} s after it ({status['complete']} were done before)")


STALL_JOBS = textwrap.dedent('''
    """A job that, on its first try, stalls in the middle of writing its output (for a kill)."""
    import asyncio, os, threading, time
    from pathlib import Path
    from mediaq import job
    from mediaq.runtime.storage import local as storage_module

    _local = threading.local()

    class _Os:
        def __getattr__(self, name):
            return getattr(os, name)

        def write(self, fd, data):
            if getattr(_local, "stall", None):
                os.write(fd, bytes(data[:1000]))
                Path(_local.stall).write_text("mid-write")
                time.sleep(3600)
            return os.write(fd, data)

    storage_module.os = _Os()

    @job(timeout=60)
    async def stalling_write(ctx, image_id, marker):
        storage = storage_module.LocalStore(ctx["settings"].storage)

        def write():
            _local.stall = marker if ctx["job_try"] == 1 else None
            return storage.write(f"thumbs/{image_id}.jpg", b"J" * 100_000)
        return await asyncio.to_thread(write)
''')


def _job_module(tmp_path, monkeypatch, name: str, source: str) -> str:
    """Write job module ``name`` into a temp folder importable here and in worker subprocesses."""
    folder = tmp_path / "jobmods"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return name


@pytest.fixture
def stall_jobs(tmp_path, monkeypatch):
    return _job_module(tmp_path, monkeypatch, "mq_stall_jobs", STALL_JOBS)


async def test_worker_killed_mid_write_leaves_no_temporary_file(settings, start_worker, stall_jobs, tmp_path):
    import mediaq

    s = settings.replace(job_modules=(stall_jobs,))
    client = await mediaq.connect(settings=s)
    try:
        marker = tmp_path / "mid-write"
        first = start_worker(job_modules=(stall_jobs,))
        job_id = await client.enqueue_job("stalling_write", "x1", str(marker))

        async def stalled():
            return marker.exists()
        await eventually(stalled, timeout=30, what="the job stalls mid-write")
        (leftover,) = temp_files(Path(s.storage))
        assert leftover.stat().st_size == 1000  # a partial temporary file, no target
        assert not (Path(s.storage) / "thumbs" / "x1.jpg").exists()
        first.kill()
        start_worker(job_modules=(stall_jobs,))
        path = await client.result(job_id, timeout=60)
        assert Path(path).read_bytes() == b"J" * 100_000

        async def swept():
            return not temp_files(Path(s.storage))
        await eventually(swept, timeout=30, what="the dead writer's temporary file is removed")
    finally:
        await client.close()


POOL_STALL_JOBS = textwrap.dedent('''
    """A job whose pool process, on the first try, stalls in the middle of writing its output (as the
    image jobs write a local folder from the pool), for a kill of that process alone."""
    import os, time
    from pathlib import Path
    from mediaq import job
    from mediaq.runtime.jobspec import run_cpu
    from mediaq.runtime.storage import local as storage_module

    def write_in_pool(root, image_id, marker):
        if marker:
            real = storage_module.os

            class _Os:
                def __getattr__(self, name):
                    return getattr(real, name)

                def write(self, fd, data):
                    real.write(fd, bytes(data[:1000]))
                    Path(marker).write_text(str(real.getpid()))
                    time.sleep(3600)

            storage_module.os = _Os()
        return storage_module.LocalStore(root).write(f"thumbs/{image_id}.jpg", b"J" * 100_000)

    @job(timeout=60)
    async def pool_stalling_write(ctx, image_id, marker):
        return await run_cpu(ctx, write_in_pool, ctx["settings"].storage, image_id,
                             marker if ctx["job_try"] == 1 else "")
''')


async def test_pool_process_killed_mid_write_leaves_no_temporary_file(settings, start_worker, tmp_path,
                                                                       monkeypatch):
    """The worker lives on (so no dead worker for the janitor to sweep after): the dead pool process
    is replaced, the job retried, and the dead process's temporary file swept once past the grace."""
    import signal

    import mediaq

    _job_module(tmp_path, monkeypatch, "mq_pool_stall_jobs", POOL_STALL_JOBS)
    s = settings.replace(job_modules=("mq_pool_stall_jobs",))
    client = await mediaq.connect(settings=s)
    try:
        marker = tmp_path / "mid-write"
        worker = start_worker(job_modules=("mq_pool_stall_jobs",))
        job_id = await client.enqueue_job("pool_stalling_write", "p1", str(marker))

        async def stalled():
            return marker.exists() and marker.read_text() != ""
        await eventually(stalled, timeout=30, what="the pool process stalls mid-write")
        (leftover,) = temp_files(Path(s.storage))
        os.kill(int(marker.read_text()), signal.SIGKILL)  # the pool process only
        path = await client.result(job_id, timeout=60)  # retried in the dead process's replacement
        assert Path(path).read_bytes() == b"J" * 100_000 and worker.alive

        async def swept():
            return not leftover.exists()
        await eventually(swept, timeout=30, what="the dead pool process's temporary file is removed")
        assert temp_files(Path(s.storage)) == []
    finally:
        await client.close()


# -- the janitor on planted records (real server, no worker) -------------------------------------------
def _ident(**changes) -> WorkerIdentity:
    import dataclasses

    return dataclasses.replace(WorkerIdentity.current(), **changes)


async def _plant(redis, ident: WorkerIdentity, job_ids: list[str]) -> None:
    await redis.hset(keys.CLAIMANTS, ident.name, ident.to_json())
    if job_ids:
        await redis.sadd(keys.claims(ident.name), *job_ids)
    for job_id in job_ids:
        await redis.psetex(f"arq:in-progress:{job_id}", 3_610_000, b"1")


async def _blocked(redis, job_ids):
    return {j for j in job_ids if await redis.exists(f"arq:in-progress:{j}")}


RUNAWAY_JOBS = textwrap.dedent('''
    """A job whose pool call never ends by itself (a runaway decode: CPU, no sleep), and one that
    tells which pool process ran it."""
    import os, time
    from pathlib import Path
    from mediaq import job
    from mediaq.runtime.jobspec import run_cpu

    def spin(note):
        Path(note).write_text(str(os.getpid()))
        deadline = time.monotonic() + 300  # bound: far beyond every wait of the test
        while time.monotonic() < deadline:
            pass
        return os.getpid()

    @job(timeout=5, max_tries=1)
    async def runaway(ctx, note):
        return await run_cpu(ctx, spin, note)

    def pid():
        return os.getpid()

    @job
    async def pool_pid(ctx):
        return await run_cpu(ctx, pid)
''')


async def test_a_job_that_times_out_stops_its_pool_process(settings, start_worker, tmp_path, monkeypatch):
    """The job's timeout ends its pool call too: the pool process is killed, not left spinning, so a
    job queued behind it on a one-process pool runs at once instead of after the runaway call."""
    import mediaq
    from mediaq.errors import JobError

    _job_module(tmp_path, monkeypatch, "mq_runaway_jobs", RUNAWAY_JOBS)
    s = settings.replace(job_modules=("mq_runaway_jobs",))
    client = await mediaq.connect(settings=s)
    try:
        start_worker(job_modules=("mq_runaway_jobs",), worker_processes=1)
        note = tmp_path / "spinning"
        stuck = await client.enqueue_job("runaway", str(note))
        await eventually(note.exists, timeout=30, what="the runaway call to start in the pool")
        victim = int(note.read_text())
        with pytest.raises(JobError):
            await client.result(stuck, timeout=60)  # timed out after 5 s
        after = await client.enqueue_job("pool_pid")
        assert await client.result(after, timeout=30) != victim  # with the old pool: 300 s behind the spin
        await eventually(lambda: pid_gone(victim), timeout=30, what="the runaway call's pool process to end")
    finally:
        await client.close()


async def test_janitor_tells_dead_workers_from_live_ones(client):
    redis = client.redis
    me = WorkerIdentity.current()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    long_ago = time.time() - 3600
    cases = {
        "local_dead": (_ident(pid=gone.pid, created=me.created + 5), True),
        "local_alive": (_ident(host=me.host, pid=os.getppid(), created=_create_time(os.getppid())), False),
        "pid_reused": (_ident(pid=os.getpid(), created=me.created - 100), True),  # our pid, older process
        "remote_dead": (_ident(host="elsewhere", pid=4242, registered=long_ago), True),
        "remote_beating": (_ident(host="elsewhere", pid=4343, registered=long_ago), False),
        "remote_new": (_ident(host="elsewhere", pid=4444, registered=time.time()), False),
        "other_namespace": (_ident(pid=gone.pid, pidns="pid:[1]", registered=long_ago), True),
    }
    for name, (ident, _) in cases.items():
        await _plant(redis, ident, [f"{name}-1", f"{name}-2"])
    await redis.set("mediaq:worker:elsewhere:4343", b"{}", px=15_000)  # its heartbeat
    janitor = Janitor(redis, _ident(pid=99_999_999, created=0.0), grace=0.2, heartbeat_ttl=15)
    freed = await janitor.free_dead()
    dead_names = {cases[k][0].name for k, (_, dead) in cases.items() if dead}
    assert set(freed) == dead_names
    for name, (ident, dead) in cases.items():
        ids = [f"{name}-1", f"{name}-2"]
        assert await _blocked(redis, ids) == (set() if dead else set(ids)), name
        assert (await redis.hexists(keys.CLAIMANTS, ident.name)) == (not dead), name
    assert await janitor.free_dead() == {}  # idempotent


def _create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


async def test_janitor_never_frees_a_job_a_live_worker_claims(client):
    redis = client.redis
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _ident(pid=gone.pid, created=1.0)
    live = _ident(pid=os.getppid(), created=_create_time(os.getppid()))
    await _plant(redis, dead, ["shared", "only-dead"])
    await _plant(redis, live, ["shared"])  # the job was re-taken by a live worker since
    freed = await Janitor(redis, _ident(pid=99_999_998, created=0.0)).free_dead()
    assert freed == {dead.name: ["only-dead"]}
    assert await _blocked(redis, ["shared", "only-dead"]) == {"shared"}


async def test_orphans_are_freed_but_not_fresh_or_claimed_keys(client):
    """An in-progress key nobody claims (a worker killed between arq's marking and its claim) is
    freed once it stayed unclaimed for the grace period; a claimed one or one set again is not."""
    redis = client.redis
    live = _ident(pid=os.getppid(), created=_create_time(os.getppid()))
    await _plant(redis, live, ["claimed"])
    await redis.psetex("arq:in-progress:orphan", 3_610_000, b"1")
    await redis.psetex("arq:in-progress:reset", 3_610_000, b"1")
    janitor = Janitor(redis, _ident(pid=99_999_997, created=0.0), grace=1.0)
    task = asyncio.create_task(janitor.free_orphans())
    await asyncio.sleep(0.3)
    await redis.psetex("arq:in-progress:reset", 3_610_000, b"1")  # marked again meanwhile: a fresh start
    freed = await task
    assert freed == ["orphan"]
    assert await _blocked(redis, ["claimed", "orphan", "reset"]) == {"claimed", "reset"}
    (entry,) = [r for r in await read_recoveries(redis) if r["reason"] == "orphans"]
    assert entry["ids"] == ["orphan"]


async def test_orphan_left_by_a_kill_before_the_claim_runs_again(client, start_worker):
    """A queued job whose in-progress key nobody claims (what a worker killed in the instant between
    arq's marking and mediaq's claim leaves) runs once a worker starts, not after 610 s."""
    job_id = await client.enqueue_job("noop", "hello", _job_id="orphaned")
    await client.redis.psetex("arq:in-progress:orphaned", 3_610_000, b"1")
    start_worker()
    assert await client.result(job_id, timeout=60) == "hello"


POISON = textwrap.dedent('''
    import os, signal
    from mediaq import job

    @job(timeout=30)
    async def kill_my_worker(ctx):
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the worker and its pool, as the OOM killer might
''')


async def test_a_job_that_kills_every_worker_ends_failed_after_max_tries(settings, start_worker, tmp_path,
                                                                         monkeypatch):
    import mediaq

    _job_module(tmp_path, monkeypatch, "mq_poison_jobs", POISON)
    s = settings.replace(job_modules=("mq_poison_jobs",))
    client = await mediaq.connect(settings=s)
    try:
        job_id = await client.enqueue_job("kill_my_worker")
        deaths = 0
        for _ in range(settings.max_tries + 2):
            worker = start_worker(job_modules=("mq_poison_jobs",))
            for _ in range(300):
                if not worker.alive or await client.redis.exists(f"arq:result:{job_id}"):
                    break
                await asyncio.sleep(0.1)
            if worker.alive:
                break
            deaths += 1
        assert deaths == settings.max_tries  # each try killed a worker; then arq refused another try
        with pytest.raises(mediaq.JobError, match="max 3 retries exceeded"):
            await client.result(job_id, timeout=30)
        # the worker that outlived it runs the next job (a job enqueued beside the poison could run
        # in the same worker and die with it, up to its own max tries: that is arq's rule, not a bug)
        ok = await client.enqueue_job("noop", "after")
        assert await client.result(ok, timeout=30) == "after"
        assert worker.alive
    finally:
        await client.close()


def test_identity_round_trip():
    me = WorkerIdentity.current(storage="/x")
    assert WorkerIdentity.from_json(me.to_json()) == me
    assert WorkerIdentity.from_json(b"not json") is None
    assert json.loads(me.to_json())["storage"] == "/x"
    assert me.process_alive() and me.same_machine(me)


async def test_pool_processes_exit_when_their_worker_is_sigkilled(settings, client, start_worker, tmp_path):
    """Issue 14, item 7: SIGKILL the worker process alone (as the OOM killer or ``kill -9 <pid>`` does):
    its pool processes, the forkserver and the resource tracker exit too, instead of living on with
    parent 1 (each pool process holds the imaging libraries: about 100 MB)."""
    import signal

    import psutil

    worker = start_worker(worker_processes=2)
    (source, _), *_ = make_sources(tmp_path / "src")
    job_id = await client.enqueue_job("create_thumbnail", "pooled", source)
    assert (await client.result(job_id, timeout=60))["width"] > 0  # the pool has started and worked
    descendants = psutil.Process(worker.pid).children(recursive=True)
    def kind(p: psutil.Process) -> str:
        line = " ".join(p.cmdline())
        return next((k for k in ("forkserver", "resource_tracker") if f"multiprocessing.{k}" in line), "other")

    assert sorted(kind(p) for p in psutil.Process(worker.pid).children()) == ["forkserver", "resource_tracker"]
    assert len(descendants) >= 3  # and the forkserver's children: the pool processes started so far

    os.kill(worker.pid, signal.SIGKILL)  # the worker only, not its process group

    def alive() -> list[str]:
        left = []
        for p in descendants:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            except psutil.NoSuchProcess:
                pass
        return left

    await eventually(alive, lambda left: not left, timeout=30, what="the dead worker's pool processes to exit")
