"""A plain, read-only snapshot of the queue for dashboards, read at a fixed cost whatever the queue length.

:func:`queue_snapshot` reads only O(1) things: ``ZCOUNT`` on the queue, the workers' heartbeats
(:func:`mediaq.runtime.heartbeat.read_workers`) and the outcome counters workers keep (:mod:`mediaq.runtime.stats`). It
never lists job keys and never reads job bodies, so a refresh costs the same number of Redis round
trips (8 for one batch, 11 for the whole queue) with ten jobs queued or ten million.

The counts are for display: ``in_progress`` comes from heartbeats (up to one health-check interval
old) and complete/failed from counters flushed every second. ``batch.status()`` is the exact answer.

The formatting functions (:func:`format_text`, :func:`format_html` and the HTML parts the widget
dashboard reuses) are pure: they import neither Redis nor ipywidgets.

>>> snap = await queue_snapshot(client, batch)       # doctest: +SKIP
>>> snap.queued, snap.in_progress, snap.batches[0].fraction   # doctest: +SKIP
(120, 10, 0.42)
>>> print(format_text(snap))                          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import html
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mediaq.runtime.heartbeat import read_workers
from mediaq.runtime.stats import MAX_FAILURES, read_batch_counts, read_failures, read_queue_stats, read_throughput

if TYPE_CHECKING:
    from mediaq.client.batch import Batch
    from mediaq.client.connection import Client

__all__ = [
    "BatchCounts",
    "Failure",
    "LocalWorkerInfo",
    "RateWindow",
    "Snapshot",
    "WorkerInfo",
    "format_duration",
    "format_html",
    "format_text",
    "html_batches",
    "html_counts",
    "html_failures",
    "html_functions",
    "html_workers",
    "queue_snapshot",
    "sparkline_svg",
]

BATCHES_KEY = "mediaq:batches"
#: Seconds of throughput history a snapshot carries (the chart's width).
DEFAULT_WINDOW = 120
#: Seconds over which rates are averaged.
RATE_WINDOW = 30


# -- the snapshot -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerInfo:
    """One live worker, from its heartbeat."""

    host: str
    pid: int
    #: Seconds since its last heartbeat.
    age: float
    #: Jobs running in it at its last heartbeat.
    ongoing: int
    #: Jobs it finished since it started.
    finished: int
    max_jobs: int | None = None


@dataclass(frozen=True)
class LocalWorkerInfo:
    """The notebook's own worker subprocess (a :class:`mediaq.LocalWorker`)."""

    alive: bool
    pid: int | None
    returncode: int | None = None


@dataclass(frozen=True)
class BatchCounts:
    """A batch's progress from its counters: ``pending`` is queued, deferred or running."""

    name: str
    function: str | None
    total: int
    complete: int
    failed: int
    #: ``{function: {"complete": n, "failed": n}}``
    by_function: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return min(self.total, self.complete + self.failed)

    @property
    def pending(self) -> int:
        return max(0, self.total - self.complete - self.failed)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.pending == 0


@dataclass(frozen=True)
class Failure:
    """One recent failure (newest first in :attr:`Snapshot.failures`)."""

    job_id: str
    function: str
    type: str
    message: str
    code: str | None = None
    time: float | None = None
    batch: str | None = None

    @property
    def short_type(self) -> str:
        """``mediaq.errors.ConfigError`` -> ``ConfigError``."""
        return self.type.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Snapshot:
    """What the queue and its workers are doing, at :attr:`time` (epoch seconds)."""

    time: float
    queue_name: str = "arq:queue"
    #: Whole queue: ready to run and not running (ZCOUNT up to now, less the jobs running).
    queued: int = 0
    #: Whole queue: scheduled later (deferred, or waiting for a retry).
    deferred: int = 0
    #: Whole queue: running now, from the workers' heartbeats.
    in_progress: int = 0
    #: Whole queue: finished since the counters were created.
    complete: int = 0
    failed: int = 0
    #: Whole queue, finished jobs by function: ``{function: {"complete": n, "failed": n}}``.
    by_function: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The dashboard's batch, or the most recent batches when it watches the whole queue.
    batches: tuple[BatchCounts, ...] = ()
    workers: tuple[WorkerInfo, ...] = ()
    local_worker: LocalWorkerInfo | None = None
    #: The last failures, newest first (only the batch's when a batch is watched).
    failures: tuple[Failure, ...] = ()
    #: ``(epoch second, complete, failed)`` for every second of the window, oldest first.
    throughput: tuple[tuple[int, int, int], ...] = ()
    #: Why this snapshot is empty (Redis unreachable...), else ``None``.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> dict[str, int]:
        """The whole queue's counts by state."""
        return {"queued": self.queued, "deferred": self.deferred, "in_progress": self.in_progress,
                "complete": self.complete, "failed": self.failed}

    def rate(self, window: int = RATE_WINDOW) -> float:
        """Jobs finished per second over the last ``window`` whole seconds (see :func:`throughput_rate`)."""
        return throughput_rate(self.throughput, self.time, window)


def throughput_rate(throughput: tuple[tuple[int, int, int], ...], now: float, window: int = RATE_WINDOW) -> float:
    """Jobs/s over the ``window`` seconds before the last whole second (workers flush counters every
    second, so the current and previous seconds are still filling). Averaged from the first busy
    second when activity started inside the window, so a burst is not diluted.

    >>> throughput_rate(((98, 0, 0), (99, 5, 1), (100, 6, 0), (101, 2, 0)), now=102.5, window=30)
    6.0
    """
    end = int(now) - 1  # seconds before `end` are complete
    busy = [(s, c + f) for s, c, f in throughput if end - window <= s < end and c + f]
    if not busy:
        return 0.0
    return sum(n for _, n in busy) / max(1, end - busy[0][0])


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


# -- reading it -------------------------------------------------------------------------------------
async def queue_snapshot(client: Client, batch: Batch | str | None = None, local_worker: Any = None, *,
                         window: int = DEFAULT_WINDOW, failures: int = 10, recent_batches: int = 3,
                         timeout: float = 5.0) -> Snapshot:
    """Read a :class:`Snapshot` in a fixed number of round trips (never raises for Redis errors:
    they come back as :attr:`Snapshot.error`).

    ``batch``: a :class:`~mediaq.client.batch.Batch` or batch name to follow (its failures only); ``None``
    follows the whole queue and the ``recent_batches`` newest batches. ``local_worker``: a
    :class:`~mediaq.LocalWorker` whose state to include. ``window``: seconds of throughput history.

    >>> snap = await queue_snapshot(client)     # doctest: +SKIP
    >>> snap.counts()                           # doctest: +SKIP
    {'queued': 120, 'deferred': 0, 'in_progress': 10, 'complete': 870, 'failed': 2}
    """
    redis = client.redis
    queue = client.settings.queue_name
    name = getattr(batch, "name", batch)
    local = _local_info(local_worker)
    now = time.time()
    try:
        async with asyncio.timeout(timeout):
            ready_deferred, stats, workers, raw_failures, per_second, batches = await asyncio.gather(
                _zcounts(redis, queue, now),
                read_queue_stats(redis),
                read_workers(redis),
                read_failures(redis, MAX_FAILURES if name else failures),
                read_throughput(redis, window),
                _batch_counts(redis, name, recent_batches),
            )
    except TimeoutError:
        return Snapshot(time=now, queue_name=queue, local_worker=local,
                        error=f"Redis unreachable: no answer within {timeout:g} s")
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        return Snapshot(time=now, queue_name=queue, local_worker=local, error=f"Redis unreachable: {exc}")
    except RedisError as exc:
        return Snapshot(time=now, queue_name=queue, local_worker=local,
                        error=f"Redis error: {type(exc).__name__}: {exc}")
    ready, deferred = ready_deferred
    infos = tuple(_worker_info(w, now) for w in workers)
    in_progress = sum(w.ongoing for w in infos)
    fails = [_failure(f) for f in raw_failures]
    if name:
        fails = [f for f in fails if f.batch == name]
    first = int(now) - window + 1
    return Snapshot(
        time=now, queue_name=queue,
        queued=max(0, ready - in_progress),  # arq keeps a running job in the queue until it finishes
        deferred=deferred, in_progress=in_progress,
        complete=sum(c.get("complete", 0) for c in stats.values()),
        failed=sum(c.get("failed", 0) for c in stats.values()),
        by_function=stats, batches=batches, workers=infos, local_worker=local, failures=tuple(fails[:failures]),
        throughput=tuple((s, per_second.get(s, {}).get("complete", 0), per_second.get(s, {}).get("failed", 0))
                         for s in range(first, int(now) + 1)),
    )


async def _zcounts(redis: Any, queue: str, now: float) -> tuple[int, int]:
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zcount(queue, f"({now_ms}", "+inf")
        ready, deferred = await pipe.execute()
    return int(ready), int(deferred)


async def _batch_counts(redis: Any, name: str | None, recent: int) -> tuple[BatchCounts, ...]:
    if name:
        names = [name]
    elif recent > 0:
        names = [n.decode() for n in await redis.zrevrange(BATCHES_KEY, 0, recent - 1)]
    else:
        names = []
    if not names:
        return ()
    async with redis.pipeline(transaction=False) as pipe:
        for n in names:
            pipe.hget(f"mediaq:batch:{n}", "function")
        functions = await pipe.execute()
    counts = await asyncio.gather(*(read_batch_counts(redis, n) for n in names))
    out = []
    for n, f, c in zip(names, functions, counts, strict=True):
        by_function = c["by_function"]
        if len(by_function) == 1:  # its failures less the retried ones, as the batch's own figures
            by_function = {next(iter(by_function)): {"complete": c["complete"], "failed": c["failed"]}}
        out.append(BatchCounts(name=n, function=f.decode() if f else None, total=c["total"],
                               complete=c["complete"], failed=c["failed"], by_function=by_function))
    return tuple(out)


def _worker_info(beat: dict[str, Any], now: float) -> WorkerInfo:
    return WorkerInfo(host=str(beat.get("host", "?")), pid=int(beat.get("pid", 0)),
                      age=max(0.0, now - float(beat.get("last", now))), ongoing=int(beat.get("ongoing", 0)),
                      finished=int(beat.get("finished", 0)), max_jobs=beat.get("max_jobs"))


def _failure(raw: dict[str, Any]) -> Failure:
    return Failure(job_id=str(raw.get("job_id")), function=str(raw.get("function")), type=str(raw.get("type") or "?"),
                   message=str(raw.get("message") or ""), code=raw.get("code"), time=raw.get("time"),
                   batch=raw.get("batch"))


def _local_info(worker: Any) -> LocalWorkerInfo | None:
    if worker is None:
        return None
    return LocalWorkerInfo(alive=bool(worker.alive), pid=worker.pid, returncode=getattr(worker, "returncode", None))


# -- formatting (pure) ------------------------------------------------------------------------------
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


def batch_summary(b: BatchCounts, rate: float | None = None, eta: float | None = None) -> str:
    """``"38/40 done (95.0%) · 2 failed · 12.5 jobs/s · ETA 1 s"`` (plain text)."""
    parts = [f"{b.done}/{b.total} done ({100 * b.fraction:.1f}%)"]
    if b.failed:
        parts.append(f"{b.failed} failed")
    if b.finished:
        parts.append("finished")
    else:
        if rate is not None:
            parts.append(f"{rate:.1f} jobs/s")
        parts.append(f"ETA {format_duration(eta)}")
    return " · ".join(parts)


def format_text(snap: Snapshot, rates: dict[str, tuple[float | None, float | None]] | None = None) -> str:
    """A few lines of plain text (terminals, logs). ``rates``: ``{batch: (jobs/s, eta s)}``."""
    rates = rates or {}
    lines = [f"mediaq queue {snap.queue_name} at {_clock(snap.time)}"]
    if snap.error:
        lines.append(f"  ! {snap.error}")
    lines.append(f"  queue: {snap.queued} queued, {snap.deferred} deferred, {snap.in_progress} in progress, "
                 f"{snap.complete} complete, {snap.failed} failed; {snap.rate():.1f} jobs/s")
    for b in snap.batches:
        lines.append(f"  batch {b.name}: {batch_summary(b, *rates.get(b.name, (None, None)))}")
    for fn, c in sorted(snap.by_function.items()):
        lines.append(f"  {fn}: {c.get('complete', 0)} complete, {c.get('failed', 0)} failed")
    workers = ", ".join(f"{w.host}:{w.pid} ({w.ongoing} running, beat {w.age:.0f} s ago)" for w in snap.workers)
    lines.append(f"  workers: {workers or 'none alive'}")
    if snap.local_worker is not None:
        lw = snap.local_worker
        lines.append(f"  local worker: pid {lw.pid} {'alive' if lw.alive else 'stopped'}")
    if snap.failures:
        lines.append("  last failures:")
        for f in snap.failures:
            lines.append(f"    {_clock(f.time)} {f.job_id} {f.function} {f.short_type}: {f.message[:100]}")
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
    head = "".join(f"<th {_TD}>{h}</th>" for h in ("queued", "deferred", "in progress", "complete", "failed", "total"))
    rows = ["<tr><td {}><b>queue</b></td>{}<td {}></td></tr>".format(
        _TDL, "".join(f"<td {_TD}>{q[k]}</td>" for k in ("queued", "deferred", "in_progress", "complete", "failed")),
        _TD)]
    for b in snap.batches:
        failed = f'<span style="color:{_RED}">{b.failed}</span>' if b.failed else "0"
        rows.append(f"<tr><td {_TDL}>batch <code>{_E(b.name)}</code></td>"
                    f'<td colspan="3" style="padding:1px 8px;text-align:center">{b.pending} pending</td>'
                    f"<td {_TD}>{b.complete}</td><td {_TD}>{failed}</td><td {_TD}>{b.total}</td></tr>")
    return f"<table {_TABLE}><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_functions(snap: Snapshot) -> str:
    """Finished jobs by function (the batch's when exactly one batch is shown, else the whole queue's)."""
    one = len(snap.batches) == 1
    source = snap.batches[0].by_function if one else snap.by_function
    if not source:
        return f'<span style="color:{_GREY}">no finished jobs {"in this batch " if one else ""}yet</span>'
    rows = [[f"<code>{_E(fn)}</code>", str(c.get("complete", 0)), str(c.get("failed", 0))]
            for fn, c in sorted(source.items())]
    return _table(["function", "complete", "failed"], rows)


def html_batches(snap: Snapshot, rates: dict[str, tuple[float | None, float | None]] | None = None) -> str:
    """One static progress bar per batch (HTML only; the widget dashboard uses real progress bars)."""
    rates = rates or {}
    out = []
    for b in snap.batches:
        pct = 100 * b.fraction
        colour = _RED if b.failed else _GREEN
        out.append(
            f'<div style="margin:2px 0"><code>{_E(b.name)}</code> '
            f'<span style="display:inline-block;width:200px;height:10px;background:#ddd;vertical-align:middle">'
            f'<span style="display:block;width:{pct:.1f}%;height:10px;background:{colour}"></span></span> '
            f'{_E(batch_summary(b, *rates.get(b.name, (None, None))))}</div>')
    return "".join(out)


def html_workers(snap: Snapshot) -> str:
    rows = [[_E(w.host), str(w.pid), f"{w.age:.0f} s ago", f"{w.ongoing}/{w.max_jobs or '?'}", str(w.finished)]
            for w in snap.workers]
    if not rows:
        return f'<span style="color:{_RED}">no live workers</span>'
    return _table(["host", "pid", "heartbeat", "running", "finished"], rows)


def html_failures(snap: Snapshot) -> str:
    if not snap.failures:
        return f'<span style="color:{_GREY}">no failures</span>'
    rows = [[_clock(f.time), f"<code>{_E(f.job_id)}</code>", _E(f.function),
             f'<span title="{_E(f.type)}" style="color:{_RED}">{_E(f.short_type)}</span>'
             + (f" <code>{_E(f.code)}</code>" if f.code else ""),
             _E(f.message[:200])] for f in snap.failures]
    return _table(["time", "job", "function", "error", "message"], rows, left=5)


def sparkline_svg(throughput: tuple[tuple[int, int, int], ...], width: int = 260, height: int = 50) -> str:
    """Completions (green) and failures (red) per second as an inline SVG chart."""
    n = len(throughput)
    peak = max((max(c, f) for _, c, f in throughput), default=0)
    scale = (height - 4) / peak if peak else 0.0
    step = width / max(1, n - 1)

    def line(index: int, colour: str) -> str:
        pts = " ".join(f"{i * step:.1f},{height - 2 - v[index] * scale:.1f}" for i, v in enumerate(throughput))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>'

    span = f"last {n} s" if n else "no data"
    return (f'<div style="font-size:11px;color:{_GREY}">throughput, {span} · peak {peak}/s · '
            f'<span style="color:{_GREEN}">complete</span> <span style="color:{_RED}">failed</span></div>'
            f'<svg class="mediaq-sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'style="border:1px solid #ccc;background:rgba(127,127,127,0.05)">'
            f'{line(1, _GREEN) if n > 1 else ""}{line(2, _RED) if n > 1 else ""}</svg>')


def format_html(snap: Snapshot, rates: dict[str, tuple[float | None, float | None]] | None = None) -> str:
    """The whole snapshot as static HTML (``_repr_html_``, nbconvert)."""
    error = (f'<div style="color:{_RED};font-weight:bold">{_E(snap.error)}</div>' if snap.error else "")
    lw = snap.local_worker
    local = (f"<div>local worker: pid {lw.pid} {'alive' if lw.alive else 'stopped'}</div>" if lw is not None else "")
    return (f'<div class="mediaq-snapshot" style="font-size:12px">'
            f"<div><b>mediaq</b> queue <code>{_E(snap.queue_name)}</code> at {_clock(snap.time)} · "
            f"{snap.rate():.1f} jobs/s</div>{error}"
            f"{html_batches(snap, rates)}{html_counts(snap)}{html_functions(snap)}"
            f"{sparkline_svg(snap.throughput)}<div><b>workers</b></div>{html_workers(snap)}{local}"
            f"<div><b>last failures</b></div>{html_failures(snap)}</div>")
