"""A live queue dashboard for JupyterLab (ipywidgets 8), refreshed by a background asyncio task.

Nothing else in mediaq imports ipywidgets: this module only draws a :class:`~mediaq.client.snapshot.Snapshot`
(read at a fixed cost per refresh, see :mod:`mediaq.client.snapshot`) and wires buttons to the client.

>>> dash = Dashboard(client, batch, interval=1.0, local_worker=worker)   # doctest: +SKIP
>>> dash                      # the last expression of a cell shows the widget        # doctest: +SKIP
>>> dash.close()              # stop refreshing (the widget stays, marked stopped)    # doctest: +SKIP

Front ends without widgets get a static HTML snapshot (``_repr_html_``) or text (``str(dash)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from mediaq.client.snapshot import (
    RateWindow,
    Snapshot,
    batch_summary,
    format_html,
    format_text,
    html_counts,
    html_failures,
    html_functions,
    html_workers,
    queue_snapshot,
    sparkline_svg,
)

if TYPE_CHECKING:
    from mediaq.client.batch import Batch
    from mediaq.client.connection import Client
    from mediaq.runtime.localworker import LocalWorker

__all__ = ["Dashboard"]

_LIVE: weakref.WeakValueDictionary[tuple[str, int, str, str | None], Dashboard] = weakref.WeakValueDictionary()


def _section(title: str) -> widgets.HTML:
    return widgets.HTML(f"<b>{title}</b>")


class Dashboard:
    """Queue (or one batch) at a glance: counts, progress, throughput, workers, failures, actions.

    ``batch``: a :class:`~mediaq.client.batch.Batch` (or its name) to follow, else the whole queue and its
    newest batches. ``interval``: seconds between refreshes. ``local_worker``: a
    :class:`~mediaq.LocalWorker` to show and control (the Start button makes one if ``None``).
    Refreshing starts at once when built inside a running event loop (a notebook cell), unless
    ``autostart=False``; ``await dash.refresh()`` refreshes by hand. ``timeout``: seconds a refresh
    may wait on Redis before the dashboard reports it unreachable (and tries again next interval).
    """

    def __init__(self, client: Client, batch: Batch | str | None = None, interval: float = 1.0,
                 local_worker: LocalWorker | None = None, *, autostart: bool = True, timeout: float = 5.0,
                 window: int = 120) -> None:
        if interval <= 0:
            from mediaq.errors import ConfigError

            raise ConfigError(f"interval={interval!r} must be > 0 seconds")
        self.client = client
        self.batch: Batch | None = client.batch(batch) if isinstance(batch, str) else batch
        self.interval = float(interval)
        self.local_worker = local_worker
        self.timeout = timeout
        self.window = window
        self.snapshot: Snapshot | None = None  # the last good snapshot
        self.error: str | None = None  # the last refresh's error, None when it worked
        self.refreshes = 0
        self._rates: dict[str, RateWindow] = {}
        self._task: asyncio.Task[None] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._actions: set[asyncio.Task[Any]] = set()
        self._build()
        if autostart:
            with contextlib.suppress(RuntimeError):  # no running loop (a script): refresh by hand
                self.start()

    # -- widgets ------------------------------------------------------------------------------
    def _build(self) -> None:
        title = f"batch <code>{self.batch.name}</code>" if self.batch is not None else "whole queue"
        self.header = widgets.HTML(f"<b>mediaq</b> · {title} · starting…")
        self.status = widgets.HTML("")
        self.progress_box = widgets.VBox([])
        self._bars: dict[str, tuple[widgets.FloatProgress, widgets.HTML, widgets.HBox]] = {}
        self.counts = widgets.HTML("")
        self.functions = widgets.HTML("")
        self.chart = widgets.HTML(sparkline_svg(()))
        self.workers = widgets.HTML("")
        self.local_label = widgets.HTML("")
        self.buttons = {
            "start": widgets.Button(description="Start worker", icon="play", tooltip="mediaq.start_worker()"),
            "stop": widgets.Button(description="Stop worker", icon="stop", tooltip="stop the local worker"),
            "retry": widgets.Button(description="Retry failed", icon="redo", button_style="warning",
                                    tooltip="batch.retry_failed()"),
            "abort": widgets.Button(description="Abort queued", icon="ban", button_style="danger",
                                    tooltip="batch.abort(): queued jobs never start, running ones are cancelled"),
        }
        self.buttons["start"].on_click(lambda _: self._spawn(self.start_local_worker()))
        self.buttons["stop"].on_click(lambda _: self._spawn(self.stop_local_worker()))
        self.buttons["retry"].on_click(lambda _: self._spawn(self.retry_failed()))
        self.buttons["abort"].on_click(lambda _: self._spawn(self.abort_queued()))
        if self.batch is None:
            for key in ("retry", "abort"):
                self.buttons[key].disabled = True
                self.buttons[key].tooltip = "needs a batch: Dashboard(client, batch)"
        self.action_label = widgets.HTML("")
        self.failures = widgets.HTML("")
        row = widgets.Layout(align_items="flex-start", flex_flow="row wrap")
        self.widget = widgets.VBox([
            self.header, self.status, self.progress_box,
            widgets.HBox([widgets.VBox([self.counts, self.functions]), self.chart], layout=row),
            _section("workers"), self.workers,
            widgets.HBox([self.local_label, self.buttons["start"], self.buttons["stop"]]),
            _section("last failures"), self.failures,
            widgets.HBox([self.buttons["retry"], self.buttons["abort"], self.action_label]),
        ], layout=widgets.Layout(border="1px solid #ccc", padding="4px 8px"))
        self.widget.add_class("mediaq-dashboard")
        self._draw_local()

    def _bar(self, name: str) -> tuple[widgets.FloatProgress, widgets.HTML, widgets.HBox]:
        if name not in self._bars:
            bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description=name[-32:],
                                        style={"description_width": "initial"},
                                        layout=widgets.Layout(width="460px"))
            label = widgets.HTML("")
            self._bars[name] = (bar, label, widgets.HBox([bar, label]))
        return self._bars[name]

    # -- refreshing ---------------------------------------------------------------------------
    def start(self) -> Dashboard:
        """Start the background refresh task on the running loop (a notebook cell has one).

        A dashboard already refreshing the same queue and batch is stopped: running a cell again
        replaces its dashboard instead of piling up refresh tasks.
        """
        loop = self._loop = asyncio.get_running_loop()  # RuntimeError outside a loop: see the docstring
        key = self._key()
        previous = _LIVE.get(key)
        if previous is not None and previous is not self:
            previous.close()
        _LIVE[key] = self
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="mediaq-dashboard")
        return self

    def _key(self) -> tuple[str, int, str, str | None]:
        s = self.client.settings
        return (self.client.url, s.queue_db, s.queue_name, self.batch.name if self.batch is not None else None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop refreshing. The widget stays on screen with its last state, marked stopped."""
        if self._task is not None:
            self._task.cancel()
        self._draw_header(stopped=True)

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the refresh task and any button action have ended."""
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
            except Exception as exc:  # one bad refresh must not end the dashboard
                self._show_error(f"refresh failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval)

    async def refresh(self) -> Snapshot:
        """Read a snapshot and redraw. Returns it; on a Redis error the dashboard keeps the last good
        figures and shows the error, and :attr:`error` holds it."""
        snap = await queue_snapshot(self.client, self.batch, self.local_worker, window=self.window,
                                    timeout=self.timeout)
        self.refreshes += 1
        if snap.error:
            self._show_error(snap.error)
            self._draw_local()
            return snap
        self.error = None
        self.snapshot = snap
        self._draw(snap)
        return snap

    def _show_error(self, message: str) -> None:
        self.error = message
        self.status.value = (f'<div style="color:#c62828;font-weight:bold">{_esc(message)} — retrying every '
                             f"{self.interval:g} s</div>")
        self._draw_header()

    # -- drawing ------------------------------------------------------------------------------
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

    def _draw(self, snap: Snapshot) -> None:
        for b in snap.batches:
            self._rates.setdefault(b.name, RateWindow()).update(snap.time, b.done)
        rates = self.rates()
        rows = []
        for b in snap.batches:
            bar, label, row = self._bar(b.name)
            bar.value = b.fraction
            bar.bar_style = ("success" if not b.failed else "warning") if b.finished else ("info" if b.done else "")
            label.value = _esc(batch_summary(b, *rates[b.name]))
            rows.append(row)
        if tuple(rows) != tuple(self.progress_box.children):
            self.progress_box.children = tuple(rows)
            for name in set(self._bars) - {b.name for b in snap.batches}:  # batches no longer shown
                for w in self._bars.pop(name):
                    w.close()
        self.status.value = ""
        self.counts.value = html_counts(snap)
        self.functions.value = html_functions(snap)
        self.chart.value = sparkline_svg(snap.throughput)
        self.workers.value = html_workers(snap)
        self.failures.value = html_failures(snap)
        self._draw_local()
        self._draw_header()

    def _draw_header(self, stopped: bool = False) -> None:
        title = f"batch <code>{_esc(self.batch.name)}</code>" if self.batch is not None else "whole queue"
        snap = self.snapshot
        when = time.strftime("%H:%M:%S", time.localtime(snap.time)) if snap else "never"
        state = "stopped" if stopped or not self.running else f"every {self.interval:g} s"
        rate = f" · {snap.rate():.1f} jobs/s" if snap else ""
        self.header.value = (f"<b>mediaq</b> · {title} · queue <code>{_esc(self.client.settings.queue_name)}</code>"
                             f"{rate} · updated {when} ({state})")

    def _draw_local(self) -> None:
        w = self.local_worker
        if w is None:
            text = "local worker: none"
        else:
            text = f"local worker: pid {w.pid} " + ("<b>alive</b>" if w.alive else f"stopped (exit {w.returncode})")
        self.local_label.value = text
        busy = bool(self._actions)
        self.buttons["start"].disabled = busy or (w is not None and w.alive)
        self.buttons["stop"].disabled = busy or w is None or not w.alive

    # -- actions (buttons) --------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, str]) -> asyncio.Task[Any] | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a front end calling back outside the loop: use the dashboard's
            if self._loop is None or self._loop.is_closed():
                coro.close()
                self.action_label.value = ('<span style="color:#c62828">no running event loop: build the '
                                           "dashboard in a notebook cell</span>")
                return None
            loop = self._loop
        for key in ("retry", "abort"):  # at once, so a second click cannot start a second action
            self.buttons[key].disabled = True
        task = loop.create_task(self._act(coro))
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)
        return task

    async def _act(self, coro: Coroutine[Any, Any, str]) -> None:
        self._draw_local()
        try:
            message = await coro
            self.action_label.value = _esc(message)
        except Exception as exc:
            self.action_label.value = f'<span style="color:#c62828">{_esc(type(exc).__name__)}: {_esc(exc)}</span>'
        finally:
            self._actions.discard(asyncio.current_task())  # type: ignore[arg-type]
            for key in ("retry", "abort"):
                self.buttons[key].disabled = self.batch is None
            self._draw_local()
        with contextlib.suppress(Exception):
            await self.refresh()

    async def wait_actions(self) -> None:
        """Wait for the actions the buttons started (tests, scripts)."""
        while self._actions:
            await asyncio.gather(*self._actions, return_exceptions=True)

    async def retry_failed(self) -> str:
        """What the "Retry failed" button does: ``batch.retry_failed()``."""
        if self.batch is None:
            return "no batch to retry"
        new = await self.batch.retry_failed()
        self._rates.pop(self.batch.name, None)
        return f"retried {len(new)} failed job(s)"

    async def abort_queued(self) -> str:
        """What the "Abort queued" button does: ``batch.abort()``."""
        if self.batch is None:
            return "no batch to abort"
        return f"asked {await self.batch.abort()} job(s) to abort"

    async def start_local_worker(self) -> str:
        """What the "Start worker" button does: ``mediaq.start_worker(client.settings)`` (in a thread)."""
        from mediaq.runtime.localworker import start_worker

        if self.local_worker is not None and self.local_worker.alive:
            return f"worker {self.local_worker.pid} is already running"
        self.action_label.value = "starting a worker…"
        self.local_worker = await asyncio.to_thread(start_worker, self.client.settings)
        return f"started worker {self.local_worker.pid}"

    async def stop_local_worker(self) -> str:
        """What the "Stop worker" button does: ``local_worker.stop()`` (in a thread)."""
        w = self.local_worker
        if w is None or not w.alive:
            return "no local worker running"
        self.action_label.value = f"stopping worker {w.pid}…"
        code = await asyncio.to_thread(w.stop)
        return f"stopped worker {w.pid} (exit {code})"

    # -- display ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        what = f"batch={self.batch.name!r}" if self.batch is not None else "whole queue"
        return f"<mediaq.Dashboard {what} interval={self.interval:g} {'running' if self.running else 'stopped'}>"

    def __str__(self) -> str:
        return format_text(self.snapshot, self.rates()) if self.snapshot else repr(self)

    def _repr_html_(self) -> str:
        """A static snapshot (nbconvert, front ends without widgets)."""
        if self.snapshot is None:
            why = f" ({_esc(self.error)})" if self.error else ""
            return f"<div>{_esc(repr(self))}: no snapshot yet{why}</div>"
        return format_html(self.snapshot, self.rates())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget, with a static HTML snapshot and text for front ends without widgets."""
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data["text/plain"] = str(self)
        data["text/html"] = self._repr_html_()
        return data


def _esc(value: object) -> str:
    import html

    return html.escape(str(value))
