"""The ``@job`` decorator and the helpers every job function shares.

A job function is ``async def name(ctx, *args, **kwargs) -> plain data``. ``@job`` records its
timeout and tries and turns :class:`~mediaq.errors.JobFailure` into arq's behaviour:

* :class:`~mediaq.errors.PermanentJobError`: the job fails at once and is not retried;
* :class:`~mediaq.errors.TransientJobError`: ``arq.Retry(defer=retry_backoff * job_try)``
  (5, 10 s with the seed settings) until the last try, which fails with the real error
  (not arq's opaque "max retries exceeded").

>>> from mediaq import job
>>> @job(timeout=30)
... async def shout(ctx, text: str) -> str:
...     return text.upper()
>>> shout.__mediaq_job__.name, shout.__mediaq_job__.timeout
('shout', 30)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mediaq.errors import JobFailure, TransientJobError
from mediaq.runtime.procpool import BrokenProcessPool, ProcessPool

__all__ = ["JobSpec", "exit_with_parent", "job", "job_settings", "make_process_pool", "resources", "run_cpu"]

_PROCESS_RESOURCES: dict[str, Any] = {}


def job_settings(ctx: dict[str, Any]) -> Any:
    """The worker's :class:`~mediaq.runtime.settings.Settings`, or settings from the environment when a job
    is called directly (a test, a notebook)."""
    settings = ctx.get("settings")
    if settings is None:
        from mediaq.runtime.settings import Settings

        settings = ctx["settings"] = Settings.load()
    return settings


def resources(ctx: dict[str, Any]) -> dict[str, Any]:
    """Per-process resources shared by every job of a worker (a DB engine, an index replica, the pool).

    arq gives each job a *copy* of the worker's ``ctx``: a key a job sets in ``ctx`` is gone for the
    next job. Cache things in this dict instead (``resources(ctx).setdefault(key, ...)``): the
    worker's ``ctx['resources']``, closed at worker shutdown, else one dict per process.
    """
    shared = ctx.get("resources")
    return shared if isinstance(shared, dict) else _PROCESS_RESOURCES

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True)
class JobSpec:
    """What the worker needs to know about a job function."""

    name: str
    coroutine: Callable[..., Awaitable[Any]]
    timeout: float | None = None  # None: the worker's job_timeout (300 s)
    max_tries: int | None = None  # None: the worker's max_tries (3)
    keep_result: float | None = None


def job(
    func: F | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_tries: int | None = None,
    keep_result: float | None = None,
) -> Any:
    """Mark an ``async def f(ctx, ...)`` as a mediaq job (usable bare or with options)."""

    def wrap(f: F) -> F:
        @functools.wraps(f)
        async def runner(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            try:
                return await f(ctx, *args, **kwargs)
            except JobFailure as exc:
                if exc.retry:
                    _retry_or_raise(ctx, exc, max_tries)
                raise

        runner.__mediaq_job__ = JobSpec(name or f.__name__, runner, timeout, max_tries, keep_result)  # type: ignore[attr-defined]
        return runner  # type: ignore[return-value]

    return wrap(func) if func is not None else wrap


def _retry_or_raise(ctx: dict[str, Any], exc: JobFailure, max_tries: int | None) -> None:
    from arq.worker import Retry

    settings = ctx.get("settings")
    tries = max_tries or (settings.max_tries if settings else 3)
    backoff = settings.retry_backoff if settings else 5.0
    job_try = int(ctx.get("job_try", 1))
    if job_try < tries:
        raise Retry(defer=backoff * job_try) from exc


def make_process_pool(processes: int) -> ProcessPool:
    """A pool for CPU-bound work (:class:`~mediaq.runtime.procpool.ProcessPool`). ``forkserver``: a
    forked pool can hang when the parent already holds library threads (seen with pyvips), and
    ``spawn`` would re-import on every start.

    Its processes end when the worker that made the pool dies, however it dies (SIGKILL, the OOM
    killer): see :func:`exit_with_parent`. With them gone, the forkserver and the resource tracker
    see their last pipe close and exit too.
    """
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPool(processes, mp_context=multiprocessing.get_context(method), initializer=exit_with_parent)


def exit_with_parent() -> None:
    """Pool initializer: end this process as soon as the process that started it is gone.

    An idle pool process sees its worker die (its socket ends), but one busy with a long call would
    finish it first, with parent 1 (about 100 MB each), keeping the forkserver (whose child it is,
    so ``PR_SET_PDEATHSIG`` cannot help) and the resource tracker alive meanwhile. The
    worker holds the write end of ``multiprocessing.parent_process().sentinel`` (for the forkserver
    and spawn methods alike) and nothing else does: it becomes readable exactly when the worker is
    gone. A daemon thread waits on it, then leaves at once (``os._exit``: nothing of a dead worker's
    is worth cleaning up here; outputs are written by the worker, atomically).
    """
    import multiprocessing
    import os
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:  # pragma: no cover - not started by multiprocessing
        return

    def watch(sentinel: int) -> None:
        wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, args=(parent.sentinel,), name="mediaq-exit-with-worker", daemon=True).start()


async def run_cpu(ctx: dict[str, Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in the worker's process pool, off the event loop.

    Without a pool (a job called directly, in a test or a notebook) it runs in a thread. A call
    whose pool process dies is retried (a transient error); a call cancelled while it runs (its job
    timed out or was aborted) has its process killed. Either way the pool starts a new process for
    the next call, and the janitor sweeps any temporary file the process left mid-write.
    """
    pool = ctx.get("pool")
    if pool is None:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
    try:
        if isinstance(pool, ProcessPool):  # its own future: no thread-safe Future and self-pipe write a call
            return await pool.run(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))
    except BrokenProcessPool:
        _request_sweep(ctx)
        raise TransientJobError("worker_pool_broken", "a pool process died; the job will be retried") from None
    except asyncio.CancelledError:
        _request_sweep(ctx)
        raise


def _request_sweep(ctx: dict[str, Any]) -> None:
    janitor = ctx.get("janitor_obj")
    if janitor is not None:  # a process killed mid-write leaves its temporary file: swept after the grace
        janitor.request_sweep()
