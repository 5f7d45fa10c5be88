"""The worker's process pool (``mediaq.runtime.procpool``): real child processes from the forkserver,
as the worker makes them. Calls that must wait do so on a file the test creates (a gate), never
on time; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
from helpers import eventually, pid_gone

from mediaq.runtime.jobspec import make_process_pool, run_cpu
from mediaq.runtime.procpool import BrokenProcessPool, ProcessPool, RemoteTraceback


# -- what the children run (module level: pickled by reference) --------------------------------------
def pid_of(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def wait_for(gate: str, note: str | None = None) -> int:
    """Write this process's pid to ``note``, then wait (up to 60 s) for the file ``gate``."""
    if note:
        Path(note).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def fail(code: str) -> None:
    from mediaq.errors import PermanentJobError

    raise PermanentJobError(code, "bad input in the child", path="/x")


def echo(data: bytes) -> bytes:
    return data[::-1]


def unpicklable_result() -> object:
    return lambda: None


@pytest.fixture
async def pool():
    p = make_process_pool(2)
    yield p
    p.shutdown(wait=True)


async def test_calls_run_in_every_process_and_return_their_results(pool):
    results = await asyncio.gather(*(pool.run(pid_of, i) for i in range(40)))
    assert [sq for _, sq in results] == [i * i for i in range(40)]
    pids = {pid for pid, _ in results}
    assert len(pids) == 2 and os.getpid() not in pids
    assert "processes=2" in repr(pool) and "started=2" in repr(pool)


async def test_an_exception_keeps_its_type_and_arguments_with_the_childs_traceback(pool):
    from mediaq.errors import PermanentJobError

    with pytest.raises(PermanentJobError) as info:
        await pool.run(fail, "corrupt_image")
    assert info.value.code == "corrupt_image" and info.value.details == {"path": "/x"}
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in fail" in str(info.value.__cause__)  # the child's own frame
    assert (await pool.run(pid_of, 3))[1] == 9  # the pool goes on


async def test_what_cannot_be_pickled_is_an_error_of_that_call_only(pool):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.run(echo, lambda: None)  # in the caller, before anything is sent
    with pytest.raises(TypeError, match="cannot be pickled"):
        await pool.run(unpicklable_result)
    assert (await pool.run(pid_of, 4))[1] == 16


async def test_large_calls_and_results_cross_whole(pool):
    data = os.urandom(24 * 1024 * 1024)  # far beyond a socket's buffer: written as the child reads
    got = await asyncio.gather(pool.run(echo, data), pool.run(echo, data[:1000]))
    assert got == [data[::-1], data[:1000][::-1]]


async def test_a_killed_process_breaks_its_call_only_and_is_replaced(pool, tmp_path):
    gate, note = tmp_path / "gate", tmp_path / "pid"
    doomed = pool.run(wait_for, str(gate), str(note))
    await eventually(note.exists, timeout=30, what="the call to start")
    victim = int(note.read_text())
    others = [pool.run(pid_of, i) for i in range(10)]  # queued behind, on the other process
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool, match=f"pool process {victim} was killed by signal 9"):
        await doomed
    assert [sq for _, sq in await asyncio.gather(*others)] == [i * i for i in range(10)]
    gate.write_text("")
    pids = {pid for pid, _ in await asyncio.gather(*(pool.run(pid_of, i) for i in range(20)))}
    assert victim not in pids and len(pids) == 2  # a new process took the dead one's place
    assert "started=3" in repr(pool)


async def test_a_process_that_dies_idle_is_replaced_when_work_comes(pool):
    pids = {pid for pid, _ in await asyncio.gather(*(pool.run(pid_of, i) for i in range(10)))}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    await eventually(lambda: "idle=0" in repr(pool), timeout=30, what="the pool to see both deaths")
    assert (await pool.run(pid_of, 5))[1] == 25


async def test_a_cancelled_running_call_stops_its_process(tmp_path):
    """A job that times out (or is aborted) while its call runs: the process is killed at once rather
    than left running the call, and the next call gets a new one."""
    pool = make_process_pool(1)
    try:
        gate, note = tmp_path / "gate", tmp_path / "pid"  # the gate never opens: a runaway call
        call = pool.run(wait_for, str(gate), str(note))
        await eventually(note.exists, timeout=30, what="the call to start")
        victim = int(note.read_text())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, 0.1)  # cancels the running call, as arq's job timeout does
        await eventually(lambda: pid_gone(victim), timeout=30, what="the cancelled call's process to end")
        pid, square = await pool.run(pid_of, 3)  # at once: not behind the runaway call
        assert square == 9 and pid != victim
        assert "started=2" in repr(pool)
    finally:
        pool.shutdown()


async def test_a_cancelled_queued_call_never_runs(tmp_path):
    pool = make_process_pool(1)
    try:
        gate = tmp_path / "gate"
        busy = pool.run(wait_for, str(gate))
        queued = pool.run(touch, str(tmp_path / "ran"))
        queued.cancel()
        gate.write_text("")
        await busy
        assert (await pool.run(pid_of, 2))[1] == 4  # ran after the cancelled one would have
        assert not (tmp_path / "ran").exists()
    finally:
        pool.shutdown()


async def test_the_executor_interface_and_run_cpu(pool, tmp_path):
    loop = asyncio.get_running_loop()
    assert (await loop.run_in_executor(pool, pid_of, 6))[1] == 36
    assert (await run_cpu({"pool": pool}, pid_of, 7))[1] == 49
    assert list(pool.map(pid_of, [])) == []


async def test_run_cpu_turns_a_dead_process_into_a_transient_error(pool, tmp_path):
    from mediaq.errors import TransientJobError

    gate, note = tmp_path / "gate", tmp_path / "pid"
    call = asyncio.ensure_future(run_cpu({"pool": pool}, wait_for, str(gate), str(note)))
    await eventually(note.exists, timeout=30, what="the call to start")
    os.kill(int(note.read_text()), signal.SIGKILL)
    with pytest.raises(TransientJobError) as info:
        await call
    assert info.value.code == "worker_pool_broken"


async def test_shutdown_ends_every_process_and_refuses_new_calls(tmp_path):
    pool = make_process_pool(2)
    pids = {pid for pid, _ in await asyncio.gather(*(pool.run(pid_of, i) for i in range(10)))}
    gate = tmp_path / "gate"
    running = pool.run(wait_for, str(gate))
    queued = [pool.run(pid_of, i) for i in range(5)]
    gate.write_text("")  # the running call can end: shutdown waits for its process to exit
    pool.shutdown(wait=True)
    assert all(q.cancelled() for q in queued[1:])
    with pytest.raises(BrokenProcessPool):
        await running
    assert all(pid_gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(pid_of, 1)
    assert "closed" in repr(pool)


def test_processes_must_be_positive():
    with pytest.raises(ValueError, match="processes=0"):
        ProcessPool(0)
