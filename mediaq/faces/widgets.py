"""A live queue dashboard for JupyterLab (ipywidgets 8): a view over a :class:`~mediaq.client.monitor.Monitor`.

The monitor owns the refresh loop, the rates and the actions; this module only draws what it holds
(through the pure renderer :mod:`mediaq.faces.render`) and wires buttons to its actions. Nothing else
in mediaq imports ipywidgets.

>>> dash = Dashboard(client, batch, interval=1.0, local_worker=worker)   # doctest: +SKIP
>>> dash                      # the last expression of a cell shows the widget        # doctest: +SKIP
>>> dash.close()              # stop refreshing (the widget stays, marked stopped)    # doctest: +SKIP

Front ends without widgets get a static HTML snapshot (``_repr_html_``) or text (``str(dash)``).
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as widgets

from mediaq.client.base import QueueClient
from mediaq.client.batch import Batch
from mediaq.client.monitor import Monitor
from mediaq.client.snapshot import Snapshot
from mediaq.faces.render import (
    batch_summary,
    format_html,
    format_text,
    html_banner,
    html_counts,
    html_errors,
    html_failures,
    html_functions,
    html_job,
    html_workers,
    short_label,
    sparkline_svg,
)

__all__ = ["Dashboard"]

_RED = "#c62828"


def _section(title: str) -> widgets.HTML:
    return widgets.HTML(f"<b>{title}</b>")


def _esc(value: object) -> str:
    return html.escape(str(value))


class Dashboard:
    """Queue (or one batch) at a glance: counts, progress, throughput, workers, failures, actions.

    ``batch``: a :class:`~mediaq.client.batch.Batch` (or its name) to follow, else the whole queue and its
    newest batches. ``interval``: seconds between refreshes. ``local_worker``: a
    :class:`~mediaq.LocalWorker` to show and control (the Start button makes one if ``None``).
    Refreshing starts at once when built inside a running event loop (a notebook cell), unless
    ``autostart=False``; ``await dash.refresh()`` refreshes by hand. ``timeout``: seconds a refresh
    may wait on Redis before the dashboard reports it unreachable (and tries again next interval).
    """

    def __init__(self, client: QueueClient, batch: Batch | str | None = None, interval: float = 1.0,
                 local_worker: Any = None, *, autostart: bool = True, timeout: float = 5.0,
                 window: int = 120) -> None:
        self.monitor = Monitor(client, batch, interval, local_worker, timeout=timeout, window=window)
        self.client = client
        self._build()
        self.monitor.subscribe(self._on_change)
        if autostart:
            try:
                self.start()
            except RuntimeError:  # no running loop (a script): refresh by hand
                pass

    # -- what the monitor holds -------------------------------------------------------------------------
    @property
    def batch(self) -> Batch | None:
        return self.monitor.batch

    @property
    def interval(self) -> float:
        return self.monitor.interval

    @property
    def local_worker(self) -> Any:
        return self.monitor.local_worker

    @property
    def snapshot(self) -> Snapshot | None:
        return self.monitor.snapshot

    @property
    def error(self) -> str | None:
        return self.monitor.error

    @property
    def refreshes(self) -> int:
        return self.monitor.refreshes

    @property
    def running(self) -> bool:
        return self.monitor.running

    def start(self) -> Dashboard:
        """Start the background refresh (see :meth:`Monitor.start <mediaq.client.monitor.Monitor.start>`)."""
        self.monitor.start()
        self._draw_header()
        return self

    async def refresh(self) -> Snapshot:
        """Read a snapshot and redraw; on a Redis error the last good figures stay and the error shows."""
        return await self.monitor.refresh()

    def rates(self) -> dict[str, tuple[float | None, float | None]]:
        return self.monitor.rates()

    def close(self) -> None:
        """Stop refreshing. The widget stays on screen with its last state, marked stopped."""
        self.monitor.close()

    async def aclose(self) -> None:
        await self.monitor.aclose()

    async def wait_actions(self) -> None:
        """Wait for the actions the buttons started (tests, scripts)."""
        await self.monitor.wait_actions()

    async def retry_failed(self) -> str:
        return await self.monitor.retry_failed()

    async def abort_queued(self) -> str:
        return await self.monitor.abort_queued()

    async def start_local_worker(self) -> str:
        return await self.monitor.start_local_worker()

    async def stop_local_worker(self) -> str:
        return await self.monitor.stop_local_worker()

    # -- widgets --------------------------------------------------------------------------------------
    def _build(self) -> None:
        title = f"batch <code>{_esc(self.batch.name)}</code>" if self.batch is not None else "whole queue"
        self.header = widgets.HTML(f"<b>mediaq</b> · {title} · starting…")
        self.status = widgets.HTML("")
        self.banner = widgets.HTML("")
        self.progress_box = widgets.VBox([])
        self._bars: dict[str, tuple[widgets.FloatProgress, widgets.HTML, widgets.HBox]] = {}
        self.counts = widgets.HTML("")
        self.functions = widgets.HTML("")
        self.chart = widgets.HTML(sparkline_svg(()))
        self.workers = widgets.HTML("")
        self.local_label = widgets.HTML("")
        fixed = {"layout": widgets.Layout(width="auto", flex="0 0 auto")}  # a long message never squeezes them
        self.buttons = {
            "start": widgets.Button(description="Start worker", icon="play", tooltip="mediaq.start_worker()",
                                    **fixed),
            "stop": widgets.Button(description="Stop worker", icon="stop", tooltip="stop the local worker", **fixed),
            "retry": widgets.Button(description="Retry failed", icon="redo", button_style="warning",
                                    tooltip="batch.retry_failed()", **fixed),
            "abort": widgets.Button(description="Abort queued", icon="ban", button_style="danger",
                                    tooltip="batch.abort(): queued jobs never start, running ones are cancelled",
                                    **fixed),
            "pause": widgets.Button(description="Pause", icon="pause", tooltip="bulk batches: batch.pause() / "
                                    "batch.resume(); the jobs already in the queue still run",
                                    layout=widgets.Layout(width="auto", flex="0 0 auto")),  # its own: it hides
        }
        for name, button in self.buttons.items():
            button.on_click(lambda _, name=name: self.monitor.act(name))
        if self.batch is None:
            for key in ("retry", "abort", "pause"):
                self.buttons[key].tooltip = "needs a batch: Dashboard(client, batch)"
        self.action_label = widgets.HTML("", layout=widgets.Layout(width="100%"))
        self.errors = widgets.HTML("")
        self.error_buttons = widgets.HBox([], layout=widgets.Layout(flex_flow="row wrap"))
        self.failures = widgets.HTML("")
        self.job_id = widgets.Text(placeholder="job id", continuous_update=False,
                                   layout=widgets.Layout(width="260px"))
        self.job_id.observe(lambda change: change["new"].strip() and self.monitor.look("job", change["new"]),
                            names="value")
        self.lookup = widgets.Button(description="Look up", icon="search", tooltip="the job's arguments, status, "
                                     "tries, times, result or traceback", **fixed)
        self.lookup.on_click(lambda _: self.job_id.value.strip() and self.monitor.look("job", self.job_id.value))
        self.detail = widgets.Output(layout=widgets.Layout(max_height="360px", overflow="auto"))
        row = widgets.Layout(align_items="flex-start", flex_flow="row wrap")
        self.widget = widgets.VBox([
            self.header, self.status, self.banner, self.progress_box,
            widgets.HBox([widgets.VBox([self.counts, self.functions]), self.chart], layout=row),
            _section("workers"), self.workers,
            widgets.HBox([self.local_label, self.buttons["start"], self.buttons["stop"]]),
            _section("failures by error (click one for its jobs)"), self.errors, self.error_buttons,
            _section("last failures"), self.failures,
            widgets.HBox([self.buttons["retry"], self.buttons["abort"], self.buttons["pause"]]), self.action_label,
            _section("a job"), widgets.HBox([self.job_id, self.lookup]), self.detail,
        ], layout=widgets.Layout(border="1px solid #ccc", padding="4px 8px"))
        self.widget.add_class("mediaq-dashboard")
        self._draw_buttons()

    def _bar(self, name: str) -> tuple[widgets.FloatProgress, widgets.HTML, widgets.HBox]:
        if name not in self._bars:
            bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description=short_label(name),
                                        tooltip=name, style={"description_width": "initial"},
                                        layout=widgets.Layout(width="420px", flex="0 0 auto"))
            label = widgets.HTML("")
            self._bars[name] = (bar, label, widgets.HBox([bar, label]))
        return self._bars[name]

    # -- drawing --------------------------------------------------------------------------------------
    def _on_change(self, monitor: Monitor, event: str) -> None:
        if event == "refresh" and monitor.snapshot is not None:
            self._draw(monitor.snapshot)
        elif event == "error":
            self.status.value = (f'<div style="color:{_RED};font-weight:bold">{_esc(monitor.error)} — retrying '
                                 f"every {monitor.interval:g} s</div>")
            self._draw_buttons()
            self._draw_header()
        elif event == "action":
            self._draw_action()
            self._draw_buttons()
        elif event == "detail":
            self._draw_detail()
        elif event == "closed":
            self._draw_header(stopped=True)

    def _draw(self, snap: Snapshot) -> None:
        rates = self.rates()
        rows = []
        for b in snap.batches:
            bar, label, row = self._bar(b.name)
            bar.value = b.fraction
            bar.bar_style = ("success" if not b.failed else "warning") if b.finished else ("info" if b.done else "")
            label.value = _esc(batch_summary(b, *rates[b.name], bool(snap.workers)))
            rows.append(row)
        if tuple(rows) != tuple(self.progress_box.children):
            self.progress_box.children = tuple(rows)
            for name in set(self._bars) - {b.name for b in snap.batches}:  # batches no longer shown
                for w in self._bars.pop(name):
                    w.close()
        self.status.value = ""
        self.banner.value = html_banner(snap)
        self.counts.value = html_counts(snap)
        self.functions.value = html_functions(snap)
        self.chart.value = sparkline_svg(snap.throughput)
        self.workers.value = html_workers(snap)
        self.errors.value = html_errors(snap)
        self._draw_error_buttons(snap)
        self.failures.value = html_failures(snap)
        self._draw_buttons()
        self._draw_header()

    def _draw_error_buttons(self, snap: Snapshot) -> None:
        groups = snap.errors[:8]
        if [getattr(b, "group", None) for b in self.error_buttons.children] == list(groups):
            return
        for old in self.error_buttons.children:
            old.close()
        buttons = []
        for g in groups:
            b = widgets.Button(description=f"{g.short_type}{' ' + g.code if g.code else ''} ×{g.count}",
                               tooltip=f"{g.function}: {g.type} — list these jobs", icon="list",
                               layout=widgets.Layout(width="auto"))
            b.group = g
            b.on_click(lambda button: self.monitor.look("failures", button.group))
            buttons.append(b)
        self.error_buttons.children = tuple(buttons)

    def _draw_detail(self) -> None:
        if self.monitor.detail is None:
            return
        title, value = self.monitor.detail
        self.detail.outputs = ()  # (clear_output() needs a kernel)
        if isinstance(value, dict):
            self.detail.append_display_data(widgets.HTML(html_job(value)))
        elif isinstance(value, str):
            self.detail.append_display_data(widgets.HTML(f'<span style="color:{_RED}">{_esc(title)}: '
                                                         f"{_esc(value)}</span>"))
        else:
            self.detail.append_display_data(widgets.HTML(f"<b>{_esc(title)}</b>: {len(value)} job(s)"))
            self.detail.append_display_data(value)

    def _draw_header(self, stopped: bool = False) -> None:
        title = f"batch <code>{_esc(self.batch.name)}</code>" if self.batch is not None else "whole queue"
        snap = self.snapshot
        when = time.strftime("%H:%M:%S", time.localtime(snap.time)) if snap else "never"
        state = "stopped" if stopped or not self.running else f"every {self.interval:g} s"
        rate = self.monitor.rate()
        shown = f" · {rate:.1f} jobs/s" if rate is not None else (" · no live worker" if snap and not snap.workers
                                                                   else "")
        cost = self.monitor.refresh_seconds
        took = f' title="refresh took {1000 * cost:.1f} ms" data-refresh-ms="{1000 * cost:.2f}"' if cost else ""
        self.header.value = (f"<b>mediaq</b> · {title} · queue <code>{_esc(self.client.settings.queue_name)}</code>"
                             f'{shown} · <span class="mediaq-updated"{took}>updated {when} ({state})</span>')

    def _draw_action(self) -> None:
        m = self.monitor
        self.action_label.value = (f'<span style="color:{_RED}">{_esc(m.action_message)}</span>' if m.action_failed
                                   else _esc(m.action_message))

    def _draw_buttons(self) -> None:
        w = self.local_worker
        if w is None:
            text = "local worker: none"
        else:
            text = f"local worker: pid {w.pid} " + ("<b>alive</b>" if w.alive else f"stopped (exit {w.returncode})")
        self.local_label.value = text
        busy = self.monitor.busy
        self.buttons["start"].disabled = busy or (w is not None and w.alive)
        self.buttons["stop"].disabled = busy or w is None or not w.alive
        for key in ("retry", "abort"):  # at once, so a second click cannot start a second action
            self.buttons[key].disabled = busy or self.batch is None
        shown = self.snapshot.batches[0] if self.snapshot is not None and self.batch is not None and \
            self.snapshot.batches else None
        bulk = shown is not None and shown.bulk
        pause = self.buttons["pause"]
        pause.layout.display = None if bulk else "none"  # live batches have nothing to hold back
        pause.disabled = busy or not bulk
        pause.description, pause.icon = ("Resume", "play") if shown is not None and shown.paused else ("Pause", "pause")

    # -- display --------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        what = f"batch={self.batch.name!r}" if self.batch is not None else "whole queue"
        return f"<mediaq.Dashboard {what} interval={self.interval:g} {'running' if self.running else 'stopped'}>"

    def __str__(self) -> str:
        return format_text(self.snapshot, self.rates(), self.monitor.rate()) if self.snapshot else repr(self)

    def _repr_html_(self) -> str:
        """A static snapshot (nbconvert, front ends without widgets)."""
        if self.snapshot is None:
            why = f" ({_esc(self.error)})" if self.error else ""
            return f"<div>{_esc(repr(self))}: no snapshot yet{why}</div>"
        return format_html(self.snapshot, self.rates(), self.monitor.rate())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget, with a static HTML snapshot and text for front ends without widgets."""
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data["text/plain"] = str(self)
        data["text/html"] = self._repr_html_()
        return data
