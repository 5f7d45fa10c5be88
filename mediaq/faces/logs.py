"""``mediaq logs [--follow] [--worker PID]``: the local workers' logs, as ``docker-compose logs`` shows a
service's: each line prefixed with its worker, ``--follow`` keeps printing new lines (new workers too).

Workers started by :func:`mediaq.start_worker` (or the dashboard's Start button) write to
``<state dir>/workers/worker-*.log``; a worker names its pid in its first lines
(``mediaq worker ready: pid=1234``).

>>> _pid_of(["12:00:01: Starting worker for 12 functions", "12:00:01: mediaq worker ready: pid=42, 2 processes"])
42
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from mediaq.runtime.settings import Settings

__all__ = ["log_files", "print_logs"]

_READY = re.compile(r"mediaq worker ready: pid=(\d+)")


def _pid_of(first_lines: Iterable[str]) -> int | None:
    for line in first_lines:
        m = _READY.search(line)
        if m:
            return int(m.group(1))
    return None


def log_files(settings: Settings) -> dict[Path, int | None]:
    """The workers' log files, oldest first, with the pid each names (``None``: not known yet)."""
    folder = settings.state_dir / "workers"
    files = sorted(folder.glob("worker-*.log"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    out = {}
    for path in files:
        with open(path, errors="replace") as f:
            out[path] = _pid_of(line for _, line in zip(range(50), f, strict=False))
    return out


def print_logs(settings: Settings, *, follow: bool = False, pid: int | None = None, lines: int = 20,
               poll: float = 0.5, out=None) -> int:
    """Print the last ``lines`` of each worker's log (only worker ``pid``'s if given), then with
    ``follow`` every new line until Ctrl-C. Returns an exit code (1: no such log)."""
    out = out or sys.stdout
    offsets: dict[Path, int] = {}

    def chosen() -> dict[Path, int | None]:
        return {p: w for p, w in log_files(settings).items() if pid is None or w == pid}

    files = chosen()
    if not files and not follow:
        where = settings.state_dir / "workers"
        print(f"no log {'of worker ' + str(pid) + ' ' if pid else ''}in {where}", file=sys.stderr)
        return 1
    for path, worker in files.items():
        text = path.read_bytes()
        offsets[path] = len(text)
        for line in text.decode(errors="replace").splitlines()[-lines:]:
            print(f"{_prefix(worker)}{line}", file=out)
    out.flush()
    try:
        while follow:
            time.sleep(poll)
            for path, worker in chosen().items():
                start = offsets.get(path, 0)
                size = path.stat().st_size
                if size <= start:
                    continue
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read(size - start)
                complete = chunk.rfind(b"\n") + 1  # whole lines only; the rest comes next time
                offsets[path] = start + complete
                for line in chunk[:complete].decode(errors="replace").splitlines():
                    print(f"{_prefix(worker)}{line}", file=out)
            out.flush()
    except KeyboardInterrupt:
        pass
    return 0


def _prefix(pid: int | None) -> str:
    return f"worker {pid or '?':>7} | "
