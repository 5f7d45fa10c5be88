"""The monitor behind every queue view: a refresh loop, rates, and the actions its buttons run.

A :class:`Monitor` reads a :class:`~mediaq.client.snapshot.Snapshot` every ``interval`` seconds on the
running event loop, keeps a moving-window rate per batch, and runs the actions a person asks for
(retry failed, abort queued, start or stop the local worker). It draws nothing: views subscribe
with :meth:`Monitor.subscribe` and redraw from its state (the ipywidgets dashboard in
:mod:`mediaq.faces.widgets` is one), as dask.distributed's progress trackers feed its bars.

>>> monitor = Monitor(client, batch, interval=1.0)             # doctest: +SKIP
>>> monitor.subscribe(lambda m, event: print(event, m.snapshot.counts()))   # doctest: +SKIP
>>> monitor.start()                                             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from mediaq.client.base import QueueClient
from mediaq.client.batch import Batch
from mediaq.client.snapshot import RATE_WINDOW, Snapshot, queue_snapshot
from mediaq.errors import ConfigError

__all__ = ["ACTIONS", "Monitor", "RateWindow"]

#: What the buttons do, by name: the method of :class:`Monitor` each one runs.
ACTIONS = {"retry": "retry_failed", "abort": "abort_queued", "start": "start_local_worker",
           "stop": "stop_local_worker"}
#: ``(monitor, event)``; event is ``"refresh"``, ``"error"``, ``"action"`` or ``"closed"``
Listener = Callable[["Monitor", str], None]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _create_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro, name="mediaq-monitor")


class RateWindow:
    """Moving-window rate of a growing count (a batch's finished jobs): ``update(t, n)``, ``rate()``.

    >>> w = RateWindow(window=30)
    >>> w.update(0.0, 10); w.update(2.0, 20); w.update(4.0, 40)
    >>> w.rate()
    7.5
    >>> w.eta(pending=75)
    10.0
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, t: float, n: int) -> None:
        if self.samples and n < self.samples[-1][1]:  # the count went back (a retry): start over
            self.samples.clear()
        self.samples.append((t, n))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Per second over the window, or ``None`` with less than a second of samples."""
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 1.0 else None

    def eta(self, pending: int) -> float | None:
        """Seconds until ``pending`` more are done at the current rate (``None``: unknown)."""
        rate = self.rate()
        if pending == 0:
            return 0.0
        return pending / rate if rate else None


class Monitor:
    """Refreshes a queue snapshot in the background and runs the queue's actions; see the module doc.

    ``batch``: a :class:`~mediaq.client.batch.Batch` or a batch name to follow, or ``None`` for the
    whole queue. ``timeout``: seconds a refresh waits on Redis before reporting it unreachable;
    ``window``: seconds of throughput history.
    """

    #: the monitor refreshing each (server, db, queue, batch): starting a new one stops the old one,
    #: so running a notebook cell again replaces its dashboard instead of piling up refresh tasks
    _live: ClassVar[weakref.WeakValueDictionary[tuple[str, int, str, str | None], Monitor]] = (
        weakref.WeakValueDictionary())

    def __init__(self, client: QueueClient, batch: Batch | str | None = None, interval: float = 1.0,
                 local_worker: Any = None, *, timeout: float = 5.0, window: int = 120) -> None:
        if not interval > 0:
            raise ConfigError(f"interval={interval!r} must be > 0 seconds")
        self.client = client
        self.batch: Batch | None = Batch(client, batch) if isinstance(batch, str) else batch
        self.interval = float(interval)
        self.local_worker = local_worker
        self.timeout = timeout
        self.window = window
        self.snapshot: Snapshot | None = None  # the last good snapshot
        self.error: str | None = None  # the last refresh's error, None when it worked
        self.refreshes = 0
        #: the last action's outcome: its message, and whether it failed
        self.action_message = ""
        self.action_failed = False
        self._rates: dict[str, RateWindow] = {}
        self._task: asyncio.Task[None] | None = None
        self._actions: set[asyncio.Task[Any]] = set()
        self._requested = 0  # actions asked for and not finished (counted at once, from any thread)
        self._listeners: list[Listener] = []
        #: the loop the client's connections belong to: every refresh and action runs there
        self._loop: asyncio.AbstractEventLoop | None = getattr(client, "loop", None) or _running_loop()

    def __repr__(self) -> str:
        what = f"batch={self.batch.name!r}" if self.batch is not None else "whole queue"
        return f"<mediaq.Monitor {what} interval={self.interval:g} {'running' if self.running else 'stopped'}>"

    # -- listeners ------------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(monitor, event)`` after every change (a refresh, an error, an action, closing)."""
        self._listeners.append(listener)

    def _notify(self, event: str) -> None:
        for listener in list(self._listeners):
            listener(self, event)

    # -- the refresh loop -----------------------------------------------------------------------------
    def start(self) -> Monitor:
        """Start refreshing on the running loop (a notebook cell has one; ``RuntimeError`` outside one).

        A monitor already refreshing the same queue and batch is stopped first.
        """
        running = asyncio.get_running_loop()
        home = self._loop = self._home() or running
        key = self._key()
        previous = Monitor._live.get(key)
        if previous is not None and previous is not self:
            previous.close()
        Monitor._live[key] = self
        if self._task is None or self._task.done():
            if running is home:
                self._task = home.create_task(self._run(), name="mediaq-monitor")
            else:  # built on another thread's loop: refresh where the connections live
                self._task = asyncio.run_coroutine_threadsafe(_create_task(self._run()), home).result()
        return self

    def _home(self) -> asyncio.AbstractEventLoop | None:
        loop = self._loop  # a loop that no longer runs cannot take an action (a script after asyncio.run)
        return loop if loop is not None and loop.is_running() else None

    def _key(self) -> tuple[str, int, str, str | None]:
        s = self.client.settings
        return (self.client.url, s.queue_db, s.queue_name, self.batch.name if self.batch is not None else None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def busy(self) -> bool:
        """Whether an action is under way (its buttons stay disabled meanwhile)."""
        return self._requested > 0

    def close(self) -> None:
        """Stop refreshing (views keep their last state)."""
        task, home = self._task, self._home()
        if task is not None:
            if home is not None and _running_loop() is not home:
                home.call_soon_threadsafe(task.cancel)
            else:
                task.cancel()
        self._notify("closed")

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the refresh task and any action have ended."""
        self.close()
        for task in [self._task, *self._actions]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad refresh must not end the loop
                self.error = f"refresh failed: {type(exc).__name__}: {exc}"
                self._notify("error")
            await asyncio.sleep(self.interval)

    async def refresh(self) -> Snapshot:
        """Read a snapshot and notify. On a Redis error the last good snapshot stays and
        :attr:`error` says what went wrong; the snapshot read is returned either way."""
        snap = await queue_snapshot(self.client, self.batch, self.local_worker, window=self.window,
                                    timeout=self.timeout)
        self.refreshes += 1
        if snap.error:
            self.error = snap.error
            self._notify("error")
            return snap
        self.error = None
        self.snapshot = snap
        for b in snap.batches:
            self._rates.setdefault(b.name, RateWindow()).update(snap.time, b.done)
        self._notify("refresh")
        return snap

    def rates(self) -> dict[str, tuple[float | None, float | None]]:
        """``{batch: (jobs/s over the moving window, ETA in s)}`` from the refreshes so far."""
        out = {}
        snap = self.snapshot
        for b in snap.batches if snap else ():
            window = self._rates.get(b.name)
            rate = window.rate() if window else None
            if rate is None and snap is not None and not b.finished:
                rate = snap.rate() or None  # not enough history yet: the queue's rate
            out[b.name] = (rate, (b.pending / rate if rate else None) if b.pending else 0.0)
        return out

    # -- actions --------------------------------------------------------------------------------------
    def act(self, name: str) -> asyncio.Future[Any] | concurrent.futures.Future[Any] | None:
        """Start action ``name`` (a key of :data:`ACTIONS`) in the background, as a button does; its
        message lands in :attr:`action_message`. Returns its task (a ``concurrent.futures.Future``
        when called from another thread), or ``None`` if it could not start.

        Front ends call back on threads and loops of their own (JupyterLab sends widget messages to a
        kernel subshell: another thread, another event loop), while the client's Redis connections
        belong to the loop they were made on. So the action always runs on that loop, never on the
        caller's: a connection used from two loops fails with "Future attached to a different loop".
        """
        if self.busy:
            return None  # the buttons are disabled meanwhile; a second click must not start a second action
        home = self._home()
        if home is None:
            self._report("no running event loop: build the view in a notebook cell", failed=True)
            return None
        coro: Coroutine[Any, Any, str] = getattr(self, ACTIONS[name])()
        self._requested += 1
        if _running_loop() is home:
            self._notify("action")
            return home.create_task(self._act(coro))
        return asyncio.run_coroutine_threadsafe(self._act(coro, notify=True), home)

    async def _act(self, coro: Coroutine[Any, Any, str], notify: bool = False) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._actions.add(task)
        try:
            if notify:
                self._notify("action")
            try:
                message = await coro
                failed = False
            except Exception as exc:
                message, failed = f"{type(exc).__name__}: {exc}", True
        finally:
            self._actions.discard(task)
            self._requested -= 1
        self._report(message, failed=failed)
        with contextlib.suppress(Exception):
            await self.refresh()

    def _report(self, message: str, *, failed: bool = False) -> None:
        self.action_message, self.action_failed = message, failed
        self._notify("action")

    async def wait_actions(self) -> None:
        """Wait for the actions started with :meth:`act` (tests, scripts)."""
        while self._requested:
            if self._actions:
                await asyncio.gather(*self._actions, return_exceptions=True)
            else:  # asked for from another thread, not started yet on this loop
                await asyncio.sleep(0.01)

    async def retry_failed(self) -> str:
        """``batch.retry_failed()``."""
        if self.batch is None:
            return "no batch to retry"
        new = await self.batch.retry_failed()
        self._rates.pop(self.batch.name, None)
        return f"retried {len(new)} failed job(s)"

    async def abort_queued(self) -> str:
        """``batch.abort()``."""
        if self.batch is None:
            return "no batch to abort"
        return f"asked {await self.batch.abort()} job(s) to abort"

    async def start_local_worker(self) -> str:
        """``mediaq.start_worker(client.settings)``, in a thread."""
        from mediaq.runtime.localworker import start_worker

        if self.local_worker is not None and self.local_worker.alive:
            return f"worker {self.local_worker.pid} is already running"
        self._report("starting a worker…")
        self.local_worker = await asyncio.to_thread(start_worker, self.client.settings)
        return f"started worker {self.local_worker.pid}"

    async def stop_local_worker(self) -> str:
        """``local_worker.stop()``, in a thread."""
        w = self.local_worker
        if w is None or not w.alive:
            return "no local worker running"
        self._report(f"stopping worker {w.pid}…")
        code = await asyncio.to_thread(w.stop)
        return f"stopped worker {w.pid} (exit {code})"
