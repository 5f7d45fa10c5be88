"""What every benchmark gets: a fresh embedded server, settings on it, a tmp folder, local workers.

A benchmark module ``benchmarks/bench_<name>.py`` defines ``run(ctx: BenchContext) -> list[dict]``
and builds its rows with :func:`row`. Ratios are oriented so that above 1 means mediaq is better.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediaq.runtime.localworker import LocalWorker
from mediaq.runtime.settings import Settings

__all__ = ["BenchContext", "cpu_seconds", "row"]


def row(metric: str, mediaq: float, baseline: float, unit: str, *, higher_is_better: bool = True,
        baseline_name: str = "") -> dict[str, Any]:
    """One result row. ``ratio`` > 1 means mediaq is better, whichever way the unit points."""
    if higher_is_better:
        ratio = mediaq / baseline if baseline else float("inf")
    else:
        ratio = baseline / mediaq if mediaq else float("inf")
    return {"metric": metric, "mediaq": mediaq, "baseline": baseline, "ratio": ratio, "unit": unit,
            "baseline_name": baseline_name}


def cpu_seconds(pids: Iterable[int], *, children: bool = False) -> float:
    """User + system CPU seconds so far of the processes ``pids`` (with ``children``, of all their
    descendants too); a process that is gone counts 0."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *(proc.children(recursive=True) if children else ())]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
    return total


@dataclass
class BenchContext:
    settings: Settings
    tmp: Path
    quick: bool = False

    @contextlib.contextmanager
    def start_worker(self, *, burst: bool = False, **overrides: Any) -> Iterator[LocalWorker]:
        worker = LocalWorker(self.settings.replace(**overrides) if overrides else self.settings, burst=burst)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()

    def flush(self) -> None:
        """Empty the queue and cache databases between measurements."""
        import redis

        from mediaq.runtime.connections import with_db
        from mediaq.runtime.server import resolve_redis_url

        url = resolve_redis_url(self.settings)
        for db in (self.settings.queue_db, self.settings.cache_db):
            r = redis.Redis.from_url(with_db(url, db, keep_explicit=False))
            r.flushdb()
            r.close()
