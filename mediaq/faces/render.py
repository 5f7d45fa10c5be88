"""Pure rendering of a queue :class:`~mediaq.client.snapshot.Snapshot`: HTML for notebooks and the
dashboard's panels, text for terminals and logs. No I/O, no widgets: every face draws through this.

>>> from mediaq.client.snapshot import Snapshot
>>> print(format_text(Snapshot(time=0.0)).splitlines()[1])
  queue: 0 queued, 0 deferred, 0 in progress, 0 complete, 0 failed, 0 aborted
"""

from __future__ import annotations

import html
import re
import time

from mediaq.client.snapshot import BatchCounts, Snapshot

__all__ = [
    "batch_summary",
    "format_duration",
    "format_html",
    "format_text",
    "html_banner",
    "html_batches",
    "html_counts",
    "html_errors",
    "html_failures",
    "html_functions",
    "html_job",
    "html_workers",
    "short_label",
    "sparkline_svg",
    "stranded_text",
]


def format_duration(seconds: float | None) -> str:
    """``None`` -> ``"?"``, 42.3 -> ``"42 s"``, 125 -> ``"2:05"``, 3725 -> ``"1:02:05"``.

    >>> [format_duration(s) for s in (None, 0.4, 42.3, 125, 3725)]
    ['?', '0 s', '42 s', '2:05', '1:02:05']
    """
    if seconds is None:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "?"


def short_label(name: str, width: int = 24) -> str:
    """A batch name short enough for a progress bar's label: ``reindex-20261201T153713-975399`` ->
    ``reindex 15:37:13`` (its function and time); other names are cut in the middle.

    >>> short_label("reindex_image-20261201T153713-975399"), short_label("browser-demo")
    ('reindex_image 15:37:13', 'browser-demo')
    >>> short_label("a-very-long-batch-name-that-would-wrap-the-bar")
    'a-very-long…wrap-the-bar'
    """
    m = _STAMPED.fullmatch(name)
    if m:
        return f"{m['function'][:width - 9]} {m['h']}:{m['m']}:{m['s']}"
    if len(name) <= width:
        return name
    return f"{name[:width // 2 - 1]}…{name[-(width - width // 2):]}"


_STAMPED = re.compile(r"(?P<function>.+)-\d{8}T(?P<h>\d\d)(?P<m>\d\d)(?P<s>\d\d)-\d{6}")


def batch_summary(b: BatchCounts, rate: float | None = None, eta: float | None = None,
                  workers: bool = True) -> str:
    """``"38/40 done (95.0%) · 2 failed · 12.5 jobs/s · ETA 1 s"`` (plain text). No rate or ETA until
    they are measured; ``workers=False`` says that nothing runs the rest.

    >>> batch_summary(BatchCounts("b", None, total=40, complete=30, failed=2, aborted=3))
    '35/40 done (87.5%) · 2 failed · 3 aborted'
    """
    parts = [f"{b.done}/{b.total} done ({100 * b.fraction:.1f}%)"]
    if b.failed:
        parts.append(f"{b.failed} failed")
    if b.aborted:
        parts.append(f"{b.aborted} aborted")
    if b.paused:
        parts.append(f"paused ({b.held} held)")
    if b.finished:
        parts.append("finished")
    elif not workers:
        parts.append("no live worker")
    else:
        if rate is not None:
            parts.append(f"{rate:.1f} jobs/s")
        if eta is not None and rate:
            parts.append(f"ETA {format_duration(eta)}")
    return " · ".join(parts)


def stranded_text(snap: Snapshot) -> str | None:
    """``"190 waiting, no live worker: start one"`` when jobs wait with nobody to run them."""
    pending = max([snap.queued] + [b.pending for b in snap.batches])
    if snap.error or snap.workers or not pending:
        return None
    return f"{pending} waiting, no live worker: start one"


def format_text(snap: Snapshot, rates: dict[str, tuple[float | None, float | None]] | None = None,
                rate: float | None = None) -> str:
    """A few lines of plain text (terminals, logs). ``rates``: ``{batch: (jobs/s, eta s)}``; ``rate``:
    the queue's jobs/s as the caller measured it (default: from the snapshot's counters)."""
    rates = rates or {}
    lines = [f"mediaq queue {snap.queue_name} at {_clock(snap.time)}"]
    if snap.error:
        lines.append(f"  ! {snap.error}")
    warning = stranded_text(snap)
    if warning:
        lines.append(f"  ! {warning}")
    shown = rate if rate is not None else (snap.rate() if snap.workers else None)
    held = f" ({snap.held} of them bulk, held back for live jobs)" if snap.held else ""
    lines.append(f"  queue: {snap.queued} queued{held}, {snap.deferred} deferred, {snap.in_progress} in progress, "
                 f"{snap.complete} complete, {snap.failed} failed, {snap.aborted} aborted"
                 + (f"; {shown:.1f} jobs/s" if shown is not None else ""))
    for b in snap.batches:
        lines.append(f"  batch {b.name}: {batch_summary(b, *rates.get(b.name, (None, None)), bool(snap.workers))}")
    for fn, c in sorted(snap.by_function.items()):
        lines.append(f"  {fn}: {c.get('complete', 0)} complete, {c.get('failed', 0)} failed")
    workers = ", ".join(f"{w.host}:{w.pid} ({w.ongoing} running, beat {w.age:.0f} s ago)" for w in snap.workers)
    lines.append(f"  workers: {workers or 'none alive'}")
    if snap.local_worker is not None:
        lw = snap.local_worker
        lines.append(f"  local worker: pid {lw.pid} {'alive' if lw.alive else 'stopped'}")
    if snap.errors:
        lines.append("  failures by error:")
        for g in snap.errors:
            lines.append(f"    {g.count} x {g.function} {g.short_type}" + (f" [{g.code}]" if g.code else ""))
    if snap.failures:
        lines.append("  last failures:")
        for f in snap.failures:
            lines.append(f"    {_clock(f.time)} {f.job_id} {f.function} {f.short_type}: {f.message}")
    return "\n".join(lines)


_E = html.escape
_TABLE = 'style="border-collapse:collapse;font-size:12px;margin:2px 12px 2px 0"'
_TD = 'style="padding:1px 8px;text-align:right"'
_TDL = 'style="padding:1px 8px;text-align:left"'
_GREEN, _RED, _GREY = "#2e7d32", "#c62828", "#888"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are HTML already (escape before)."""
    th = "".join(f"<th {_TDL if i < left else _TD}>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td {_TDL if i < left else _TD}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table {_TABLE}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def html_counts(snap: Snapshot) -> str:
    """Counts by state: the whole queue, then each batch (whose queued, deferred and running jobs are
    one figure: telling them apart would cost a lookup per job)."""
    q = snap.counts()
    head = "".join(f"<th {_TD}>{h}</th>"
                   for h in ("queued", "deferred", "in progress", "complete", "failed", "aborted", "total"))
    states = ("queued", "deferred", "in_progress", "complete", "failed", "aborted")
    rows = ["<tr><td {}><b>queue</b></td>{}<td {}></td></tr>".format(
        _TDL, "".join(f"<td {_TD}>{q[k]}</td>" for k in states), _TD)]
    for b in snap.batches:
        failed = f'<span style="color:{_RED}">{b.failed}</span>' if b.failed else "0"
        rows.append(f"<tr><td {_TDL}>batch <code>{_E(b.name)}</code></td>"
                    f'<td colspan="3" style="padding:1px 8px;text-align:center">{b.pending} pending{_held(b)}</td>'
                    f"<td {_TD}>{b.complete}</td><td {_TD}>{failed}</td><td {_TD}>{b.aborted}</td>"
                    f"<td {_TD}>{b.total}</td></tr>")
    return f"<table {_TABLE}><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _held(b: BatchCounts) -> str:
    """`` (1200 bulk, held back)`` / `` (paused: 1200 held)`` for a bulk batch, else nothing."""
    if b.paused:
        return f' <b title="batch.resume() releases them">(paused: {b.held} held)</b>'
    if b.held:
        return f' <span title="released a window at a time, after live jobs">({b.held} bulk, held back)</span>'
    return ""


def html_functions(snap: Snapshot) -> str:
    """Finished jobs by function (the batch's when exactly one batch is shown, else the whole queue's)."""
    one = len(snap.batches) == 1
    source = snap.batches[0].by_function if one else snap.by_function
    if not source:
        return f'<span style="color:{_GREY}">no finished jobs {"in this batch " if one else ""}yet</span>'
    rows = [[f"<code>{_E(fn)}</code>", str(c.get("complete", 0)), str(c.get("failed", 0)), str(c.get("aborted", 0))]
            for fn, c in sorted(source.items())]
    return _table(["function", "complete", "failed", "aborted"], rows)


def html_batches(snap: Snapshot, rates: dict[str, tuple[float | None, float | None]] | None = None) -> str:
    """One static progress bar per batch (HTML only; the widget dashboard uses real progress bars)."""
    rates = rates or {}
    out = []
    for b in snap.batches:
        pct = 100 * b.fraction
        colour = _RED if b.failed else _GREEN
        out.append(
            f'<div style="margin:2px 0"><code title="{_E(b.name)}">{_E(short_label(b.name))}</code> '
            f'<span style="display:inline-block;width:200px;height:10px;background:#ddd;vertical-align:middle">'
            f'<span style="display:block;width:{pct:.1f}%;height:10px;background:{colour}"></span></span> '
            f'{_E(batch_summary(b, *rates.get(b.name, (None, None)), bool(snap.workers)))}</div>')
    return "".join(out)


def html_workers(snap: Snapshot) -> str:
    rows = [[_E(w.host), str(w.pid), f"{w.age:.0f} s ago", f"{w.ongoing}/{w.max_jobs or '?'}", str(w.finished)]
            for w in snap.workers]
    if not rows:
        return f'<span style="color:{_RED}">no live workers</span>'
    return _table(["host", "pid", "heartbeat", "running", "finished"], rows)


def html_failures(snap: Snapshot) -> str:
    """The last failures, each with its whole message (wrapped, never cut)."""
    if not snap.failures:
        return f'<span style="color:{_GREY}">no failures</span>'
    rows = [[_clock(f.time), f"<code>{_E(f.job_id)}</code>", _E(f.function),
             f'<span title="{_E(f.type)}" style="color:{_RED}">{_E(f.short_type)}</span>'
             + (f" <code>{_E(f.code)}</code>" if f.code else ""),
             f'<span style="white-space:pre-wrap;word-break:break-word">{_E(f.message)}</span>']
            for f in snap.failures]
    return _table(["time", "job", "function", "error", "message"], rows, left=5)


def html_errors(snap: Snapshot) -> str:
    """Failures grouped by function, error type and code, with counts (every attempt)."""
    if not snap.errors:
        return f'<span style="color:{_GREY}">no failures</span>'
    rows = [[f"<code>{_E(g.function)}</code>",
             f'<span title="{_E(g.type)}" style="color:{_RED}">{_E(g.short_type)}</span>',
             f"<code>{_E(g.code)}</code>" if g.code else "", str(g.count)] for g in snap.errors]
    return _table(["function", "error", "code", "failures"], rows, left=3)


def html_job(info: dict[str, object]) -> str:
    """One job's details (``client.job_info()``) as a two-column table; the traceback in full."""
    if info.get("status") == "not_found" and not info.get("function"):
        return f'<span style="color:{_GREY}">no job <code>{_E(str(info.get("job_id")))}</code> in Redis</span>'
    rows = []
    for key, value in info.items():
        if value is None or key == "traceback":
            continue
        text = _clock(value.timestamp()) if hasattr(value, "timestamp") else str(value)
        rows.append([f"<b>{_E(key)}</b>", f'<span style="white-space:pre-wrap">{_E(text)}</span>'])
    out = _table(["", ""], rows, left=2)
    if info.get("traceback"):
        out += f'<pre style="font-size:11px;max-height:240px;overflow:auto">{_E(str(info["traceback"]))}</pre>'
    return out


def html_banner(snap: Snapshot) -> str:
    """A loud line when jobs wait and no worker is alive (else empty)."""
    text = stranded_text(snap)
    if not text:
        return ""
    return (f'<div class="mediaq-banner" style="color:#fff;background:{_RED};padding:3px 8px;font-weight:bold">'
            f"{_E(text)} (<code>mediaq.start_worker()</code>, <code>mediaq worker</code>, or the button below)</div>")


def sparkline_svg(throughput: tuple[tuple[int, int, int], ...], width: int = 300, height: int = 80) -> str:
    """Completions (green) and failures (red) per second as an inline SVG chart with axes: jobs/s up
    the left (0 and the peak), seconds ago along the bottom."""
    n = len(throughput)
    peak = max((max(c, f) for _, c, f in throughput), default=0)
    left, bottom, top = 28, 14, 4
    plot_w, plot_h = width - left - 4, height - bottom - top
    scale = plot_h / peak if peak else 0.0
    step = plot_w / max(1, n - 1)

    def line(index: int, colour: str) -> str:
        pts = " ".join(f"{left + i * step:.1f},{top + plot_h - v[index] * scale:.1f}" for i, v in enumerate(throughput))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>'

    axis = (f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="{_GREY}"/>'
            f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{_GREY}"/>'
            f'<text x="{left - 3}" y="{top + 8}" text-anchor="end" font-size="9" fill="{_GREY}">{peak}</text>'
            f'<text x="{left - 3}" y="{top + plot_h}" text-anchor="end" font-size="9" fill="{_GREY}">0</text>'
            f'<text x="{left}" y="{height - 2}" font-size="9" fill="{_GREY}">-{n} s</text>'
            f'<text x="{left + plot_w}" y="{height - 2}" text-anchor="end" font-size="9" fill="{_GREY}">now</text>')
    span = f"last {n} s" if n else "no data"
    return (f'<div style="font-size:11px;color:{_GREY}">jobs/s, {span} · peak {peak}/s · '
            f'<span style="color:{_GREEN}">complete</span> <span style="color:{_RED}">failed</span></div>'
            f'<svg class="mediaq-sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'style="border:1px solid #ccc;background:rgba(127,127,127,0.05)">{axis}'
            f'{line(1, _GREEN) if n > 1 else ""}{line(2, _RED) if n > 1 else ""}</svg>')


def format_html(snap: Snapshot, rates: dict[str, tuple[float | None, float | None]] | None = None,
                rate: float | None = None) -> str:
    """The whole snapshot as static HTML (``_repr_html_``, nbconvert); ``rate`` as in :func:`format_text`."""
    error = (f'<div style="color:{_RED};font-weight:bold">{_E(snap.error)}</div>' if snap.error else "")
    lw = snap.local_worker
    local = (f"<div>local worker: pid {lw.pid} {'alive' if lw.alive else 'stopped'}</div>" if lw is not None else "")
    return (f'<div class="mediaq-snapshot" style="font-size:12px">'
            f"<div><b>mediaq</b> queue <code>{_E(snap.queue_name)}</code> at {_clock(snap.time)} · "
            f"{_rate_text(snap, rate)}</div>{error}{html_banner(snap)}"
            f"{html_batches(snap, rates)}{html_counts(snap)}{html_functions(snap)}"
            f"{sparkline_svg(snap.throughput)}<div><b>workers</b></div>{html_workers(snap)}{local}"
            f"<div><b>failures by error</b></div>{html_errors(snap)}"
            f"<div><b>last failures</b></div>{html_failures(snap)}</div>")


def _rate_text(snap: Snapshot, rate: float | None) -> str:
    shown = rate if rate is not None else (snap.rate() if snap.workers else None)
    return f"{shown:.1f} jobs/s" if shown is not None else "no rate yet"
