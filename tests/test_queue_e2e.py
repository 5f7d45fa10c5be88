"""Jobs through the real server and a real worker subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

import mediaq


async def test_noop_roundtrip(client, start_worker):
    worker = start_worker()
    assert worker.alive and worker.pid
    job_id = await client.enqueue_job("noop", {"a": [1, 2]}, _job_id="n1")
    assert job_id == "n1"
    assert await client.result(job_id, timeout=20) == {"a": [1, 2]}
    # arq's rule: an id that exists as a result is not enqueued again
    assert await client.enqueue_job("noop", 5, _job_id="n1") is None


async def test_worker_main_process_stays_lean(client, start_worker):
    """Started and running jobs, the worker's main process has no Pillow, NumPy or pandas extension
    loaded (they are the pool's and the client's; issue 17). Shared objects show in ``/proc/<pid>/maps``."""
    worker = start_worker()
    assert await client.result(await client.enqueue_job("noop", 1), timeout=20) == 1
    maps = Path(f"/proc/{worker.pid}/maps").read_text()
    assert [lib for lib in ("/numpy/", "/PIL/", "/pandas/") if lib in maps] == []


async def test_failed_job_raises_job_error_with_type_and_traceback(client, start_worker):
    start_worker()
    job_id = await client.enqueue_job("sleep", seconds="soon")
    with pytest.raises(mediaq.JobError) as info:
        await client.result(job_id, timeout=20)
    assert info.value.type == "mediaq.errors.ConfigError"
    assert "seconds must be a number" in info.value.message
    assert "Traceback" in info.value.traceback


async def test_unknown_job_name_fails_at_enqueue(client):
    with pytest.raises(mediaq.UnknownJobError, match="Did you mean"):
        await client.enqueue_job("noopp")
