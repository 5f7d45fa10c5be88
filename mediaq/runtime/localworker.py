"""A worker subprocess started from a notebook or script: :func:`start_worker` -> :class:`LocalWorker`.

>>> import mediaq
>>> with mediaq.start_worker(burst=True) as w:   # doctest: +SKIP
...     print(w.alive, w.pid)
...     print(w.logs(5))
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from mediaq.errors import WorkerStartError
from mediaq.runtime.settings import Settings
from mediaq.runtime.worker import LIFELINE_FD_ENV, READY_FILE_ENV

__all__ = ["LocalWorker", "running_worker", "start_worker"]

logger = logging.getLogger("mediaq.runtime.localworker")
_RUNNING: weakref.WeakSet[LocalWorker] = weakref.WeakSet()


class LocalWorker:
    """Handle on one ``arq mediaq.worker.WorkerSettings`` subprocess.

    Stopped with :meth:`stop` (SIGTERM, then SIGKILL after ``timeout``), on leaving a ``with``
    block, or when the process that started it ends, however it ends: the worker holds the read end
    of a pipe whose write end only this process has, and stops when it reads end-of-file (so a
    kernel's workers stop when the kernel shuts down, restarts or is killed).
    """

    def __init__(self, settings: Settings, *, burst: bool = False, log_file: Path | None = None,
                 arq_settings: str = "mediaq.worker.WorkerSettings") -> None:
        self.settings = settings
        self.burst = burst
        self.arq_settings = arq_settings  # what `arq` runs: mediaq's, or your own built from mediaq.worker
        log_dir = settings.state_dir / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file or Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=log_dir)[1])
        self._proc: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None  # the pipe's write end: closed when this process ends

    def __repr__(self) -> str:
        state = "alive" if self.alive else ("exited" if self._proc else "not started")
        return f"<LocalWorker pid={self.pid} {state} burst={self.burst} log={str(self.log_file)!r}>"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LocalWorker:
        """Start the subprocess and wait until it is ready to take jobs."""
        from mediaq.runtime.server import resolve_redis_url

        resolve_redis_url(self.settings)  # start the embedded server here, with a clear error if it fails
        ready = self.log_file.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
        env.update(self.settings.to_env())
        env[READY_FILE_ENV] = str(ready)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [sys.executable, "-m", "arq", self.arq_settings]
        if self.burst:
            cmd.append("--burst")
        read_end, self._lifeline = os.pipe()  # both close-on-exec: only the worker gets the read end
        env[LIFELINE_FD_ENV] = str(read_end)
        try:
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env, start_new_session=True, pass_fds=(read_end,))
        finally:
            os.close(read_end)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            code = self._proc.poll()
            if code is not None and not (self.burst and code == 0):
                raise WorkerStartError(f"the worker exited at start with code {code}", self.logs(20))
            if code is not None:  # a burst worker that found nothing to do
                break
            if time.monotonic() > deadline:
                self.stop()
                raise WorkerStartError(f"the worker was not ready within {timeout:g} s", self.logs(20))
            time.sleep(0.05)
        ready.unlink(missing_ok=True)
        logger.info("started %r", self)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to exit (a burst worker ends when the queue is empty)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (arq finishes or re-queues running jobs), then SIGKILL after ``timeout`` s."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("worker %d did not stop within %g s; killing it", proc.pid, timeout)
                os.killpg(proc.pid, signal.SIGKILL)  # the pool processes too
                proc.wait()
        self._close_lifeline()
        _RUNNING.discard(self)
        return proc.returncode

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once (what a crash looks like)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._close_lifeline()
        _RUNNING.discard(self)

    def logs(self, n: int = 50) -> str:
        """The last ``n`` lines of the worker's log file."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> LocalWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_worker(settings: Settings | None = None, *, burst: bool = False, timeout: float = 60.0,
                 new: bool = False, **overrides: Any) -> LocalWorker:
    """Start ``arq mediaq.worker.WorkerSettings`` in a subprocess with these settings.

    ``overrides`` are setting names (``max_jobs=4``, ``storage="/data/media"``). Returns once the
    worker is ready; if it dies while starting, :class:`~mediaq.errors.WorkerStartError` shows why.
    A worker this process started with the same settings and still alive is returned instead of a
    second one (running a notebook cell again does not pile up workers); ``new=True`` starts
    another one anyway (more throughput). The worker stops when this process ends.

    >>> w = start_worker(max_jobs=4)   # doctest: +SKIP
    >>> w.alive                        # doctest: +SKIP
    True
    >>> start_worker(max_jobs=4) is w  # doctest: +SKIP
    True
    """
    settings = settings or Settings.load()
    if overrides:
        settings = settings.replace(**overrides)
    if not (burst or new):
        running = running_worker(settings)
        if running is not None and running.settings == settings:
            logger.info("reusing %r", running)
            return running
    return LocalWorker(settings, burst=burst).start(timeout)


def running_worker(settings: Settings) -> LocalWorker | None:
    """The newest live, non-burst worker this process started on the same Redis and queue, if any."""
    def same_queue(s: Settings) -> bool:
        return (s.redis_url, s.state_dir, s.queue_db, s.queue_name) == (
            settings.redis_url, settings.state_dir, settings.queue_db, settings.queue_name)

    live = [w for w in list(_RUNNING) if w.alive and not w.burst and same_queue(w.settings)]
    return max(live, key=lambda w: w.pid or 0, default=None)


@atexit.register
def _stop_all() -> None:
    for worker in list(_RUNNING):
        try:
            worker.stop(timeout=5)
        except Exception:  # pragma: no cover - interpreter is exiting
            pass
