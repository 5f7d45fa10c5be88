"""mediaq's worker, plus a witness: a line per job start and per acknowledged result, in a file.

``arq witness_worker.WorkerSettings`` (with ``tests/`` on ``PYTHONPATH`` and ``WITNESS_LOG`` naming
the file) is ``mediaq.worker.WorkerSettings`` unchanged except that it logs ``claim <job id> <monotonic
time>`` as soon as its claim of a job returns (the worker's one-call claim, before the job's task
exists), and its two job hooks first append
``start <job id> <monotonic time>`` (arq's ``on_job_start``: the job's function is about to run) and
``ack <job id> <monotonic time>`` (arq's ``after_job_end``: arq's finish transaction returned, which
in durable mode includes the replicas' acknowledgement). A job that starts again after an ``ack``
had its acknowledged result lost. The clock is the machine's monotonic clock, one for all processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mediaq.worker import worker_settings


def _build() -> type:
    base = worker_settings()
    log = open(os.environ["WITNESS_LOG"], "a", buffering=1)  # kept open for the process's life

    async def on_job_start(ctx: dict[str, Any]) -> None:
        log.write(f"start {ctx['job_id']} {time.monotonic():.6f}\n")
        await base.on_job_start(ctx)

    import mediaq.runtime.scripts as scripts

    claim_jobs = scripts.claim_jobs

    async def logged_claim(*args: Any, **kwargs: Any) -> dict[str, int]:
        claimed = await claim_jobs(*args, **kwargs)
        now = time.monotonic()
        for job_id in claimed:
            log.write(f"claim {job_id} {now:.6f}\n")
        return claimed

    scripts.claim_jobs = logged_claim  # the worker's start_jobs looks it up on each call

    async def after_job_end(ctx: dict[str, Any]) -> None:
        log.write(f"ack {ctx['job_id']} {time.monotonic():.6f}\n")
        await base.after_job_end(ctx)

    # arq reads the settings class's own __dict__, so copy it rather than subclass
    return type("WorkerSettings", (), {**{k: v for k, v in vars(base).items() if not k.startswith("__")},
                                       "on_job_start": on_job_start, "after_job_end": after_job_end})


def __getattr__(name: str) -> Any:  # built on lookup, in the worker process only
    if name == "WorkerSettings":
        return _build()
    raise AttributeError(name)


def lost_results(path: str | os.PathLike[str]) -> list[str]:
    """Ids of jobs that started again after a result of theirs was acknowledged."""
    first_ack: dict[str, float] = {}
    starts: dict[str, list[float]] = {}
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) != 3:
                continue  # a line cut by a killed process
            kind, job_id, when = parts[0], parts[1], float(parts[2])
            if kind == "ack":
                first_ack.setdefault(job_id, when)
            elif kind == "start":
                starts.setdefault(job_id, []).append(when)
    return sorted(j for j, acked in first_ack.items() if any(t > acked for t in starts.get(j, ())))
