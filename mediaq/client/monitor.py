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
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from mediaq.client.base import QueueClient
from mediaq.client.batch import Batch
from mediaq.client.snapshot import RATE_WINDOW, ErrorGroup, Snapshot, queue_snapshot
from mediaq.errors import ConfigError
from mediaq.runtime.connections import honour_cancel

__all__ = ["ACTIONS", "Monitor", "RateWindow"]

#: What the buttons do, by name: the method of :class:`Monitor` each one runs.
ACTIONS = {"retry": "retry_failed", "abort": "abort_queued", "start": "start_local_worker",
           "stop": "stop_local_worker", "pause": "toggle_pause"}
#: ``(monitor, event)``; event is ``"refresh"``, ``"error"``, ``"action"``, ``"detail"`` or ``"closed"``
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

    Every view of a monitor takes its rates from these windows, so the header and a batch's bar
    never disagree. A rate is only given once it is measured (two samples at least ``min_span``
    seconds apart), idle time before the count first moved is not averaged in, and the rate drops
    to 0 as soon as the count stops moving (no change for ``idle`` seconds, or for three of its usual
    gaps between changes when jobs are slow), instead of fading over the window.

    >>> w = RateWindow(window=30)
    >>> w.update(0.0, 10); w.update(2.0, 20); w.update(4.0, 40)
    >>> w.rate()
    7.5
    >>> w.eta(pending=75)
    10.0
    >>> w.update(8.0, 40); w.update(11.0, 40)
    >>> w.rate()
    0.0
    >>> w = RateWindow(); w.update(0.0, 5); w.update(1.0, 5); w.update(2.5, 5)   # never moved: at rest
    >>> w.rate()
    0.0
    """

    def __init__(self, window: float = RATE_WINDOW, *, min_span: float = 2.0, idle: float = 3.0) -> None:
        self.window = window
        self.min_span = min_span
        self.idle = idle
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, t: float, n: int) -> None:
        s = self.samples
        if s and n < s[-1][1]:  # the count went back (a retry): start over
            s.clear()
        s.append((t, n))
        while len(s) > 2 and (t - s[1][0] >= self.window or s[1][1] == s[0][1] != n):
            s.popleft()  # too old, or idle before the count first moved

    def rate(self) -> float | None:
        """Per second over the window; ``None`` until measured; 0 once the count stopped moving."""
        s = self.samples
        if len(s) < 2:
            return None
        (t0, n0), (t1, n1) = s[0], s[-1]
        if n1 == n0:
            return 0.0 if t1 - t0 >= self.min_span else None
        if t1 - t0 < self.min_span:
            return None
        changes = [t for (t, n), (_, before) in zip(list(s)[1:], s, strict=False) if n != before]
        usual_gap = (changes[-1] - t0) / len(changes)
        if t1 - changes[-1] > max(self.idle, 3 * usual_gap):
            return 0.0
        return (n1 - n0) / (t1 - t0)

    def eta(self, pending: int) -> float | None:
        """Seconds until ``pending`` more are done at the current rate (``None``: unknown)."""
        if pending == 0:
            return 0.0
        rate = self.rate()
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
        #: seconds the last good refresh took: reading the snapshot and redrawing every view
        self.refresh_seconds: float | None = None
        #: the last action's outcome: its message, and whether it failed
        self.action_message = ""
        self.action_failed = False
        #: the last drill-down: ``(title, value)``, value a job's dict or a failure group's DataFrame
        self.detail: tuple[str, Any] | None = None
        self._rates: dict[str, RateWindow] = {}
        self._queue_rate = RateWindow()
        self._task: asyncio.Task[None] | None = None
        self._actions: set[asyncio.Task[Any]] = set()
        self._requested = 0  # actions asked for and not finished (counted at once, from any thread)
        self._requested_lock = threading.Lock()
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
            honour_cancel()  # a close() that redis-py let slip (see honour_cancel) ends the loop here
            await asyncio.sleep(self.interval)

    async def refresh(self) -> Snapshot:
        """Read a snapshot and notify. On a Redis error the last good snapshot stays and
        :attr:`error` says what went wrong; the snapshot read is returned either way."""
        started = time.perf_counter()
        if self.local_worker is None or not self.local_worker.alive:  # one this kernel started is shown too
            from mediaq.runtime.localworker import running_worker

            self.local_worker = running_worker(self.client.settings) or self.local_worker
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
        self._queue_rate.update(snap.time, snap.complete + snap.failed + snap.aborted)
        self._notify("refresh")
        self.refresh_seconds = time.perf_counter() - started
        return snap

    def rates(self) -> dict[str, tuple[float | None, float | None]]:
        """``{batch: (jobs/s, ETA in s)}`` from the refreshes so far: ``(None, None)`` until a rate is
        measured, and while no worker is alive (nothing will move); a finished batch has ETA 0."""
        out: dict[str, tuple[float | None, float | None]] = {}
        snap = self.snapshot
        for b in snap.batches if snap else ():
            window = self._rates.get(b.name)
            if b.finished:
                out[b.name] = (window.rate() if window else None, 0.0)
            elif snap is None or not snap.workers or window is None:
                out[b.name] = (None, None)
            else:
                out[b.name] = (window.rate(), window.eta(b.pending))
        return out

    def rate(self) -> float | None:
        """The header's jobs/s: the batch's when one batch is watched (the same figure as its bar),
        else the whole queue's; ``None`` until measured or while no worker is alive and jobs wait."""
        snap = self.snapshot
        if snap is None:
            return None
        if self.batch is not None:
            return self.rates().get(self.batch.name, (None, None))[0]
        if not snap.workers and snap.waiting:
            return None
        return self._queue_rate.rate()

    # -- drill-down ---------------------------------------------------------------------------------------
    def look(self, what: str, arg: Any) -> concurrent.futures.Future[Any] | asyncio.Task[Any] | None:
        """Fetch a drill-down in the background, on the client's loop (as :meth:`act`): ``("job", job_id)``
        or ``("failures", ErrorGroup)``; the result lands in :attr:`detail` with a ``"detail"`` event."""
        home = self._home()
        if home is None:
            self._report("no running event loop: build the view in a notebook cell", failed=True)
            return None
        coro = self._look(what, arg)
        if _running_loop() is home:
            return home.create_task(coro)
        return asyncio.run_coroutine_threadsafe(coro, home)

    async def _look(self, what: str, arg: Any) -> None:
        try:
            if what == "job":
                info = await self.client.job_info(str(arg).strip())
                self.detail = (f"job {arg}", info)
            else:
                self.detail = (f"{arg.count} x {arg.function} {arg.short_type}"
                               + (f" [{arg.code}]" if arg.code else ""), await self.failure_jobs(arg))
        except Exception as exc:
            self.detail = (f"{what} {arg}", f"{type(exc).__name__}: {exc}")
        self._notify("detail")

    async def failure_jobs(self, group: ErrorGroup) -> Any:
        """The failed jobs of one error group as a DataFrame: the batch's, or for the whole queue
        those among the last failures workers listed."""
        if self.batch is not None:
            df = await self.batch.failed()
        else:
            from mediaq.client.frames import FrameBuilder
            from mediaq.runtime.stats import MAX_FAILURES, read_failures

            ids = list(dict.fromkeys(str(f["job_id"]) for f in await read_failures(self.client.redis, MAX_FAILURES)))
            builder = await FrameBuilder(signatures=self.client.signatures()).read(self.client.redis, ids,
                                                                                  self.client.loads)
            df = builder.frame()
            df = df[df["status"] == "failed"]
        code = df["error_code"].fillna("") == (group.code or "")
        keep = (df["function"] == group.function) & (df["error_type"] == group.type) & code
        return df[keep].reset_index(drop=True)

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
        home = self._home()
        if home is None:
            self._report("no running event loop: build the view in a notebook cell", failed=True)
            return None
        with self._requested_lock:
            if self._requested:  # the buttons are disabled meanwhile; a second click starts nothing
                return None
            self._requested += 1
        coro: Coroutine[Any, Any, str] = getattr(self, ACTIONS[name])()
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
            with self._requested_lock:
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

    async def toggle_pause(self) -> str:
        """``batch.pause()``, or ``batch.resume()`` when it is paused (bulk batches only)."""
        if self.batch is None:
            return "no batch to pause"
        if await self.batch.is_paused():
            await self.batch.resume()
            return "resumed: its jobs are released again"
        await self.batch.pause()
        return "paused: no more of its jobs are released (the ones in the queue still run)"

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
