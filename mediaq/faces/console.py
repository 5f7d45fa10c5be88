"""What the ``mediaq`` command prints: the doctor's checks and the queue's status, as lines of text.

>>> print(check_line("warn", "no worker is alive on this queue", "start one: `mediaq worker`"))
[warn] no worker is alive on this queue
       -> start one: `mediaq worker`
"""

from __future__ import annotations

import time

from mediaq.client.doctor import describe_replication, diagnose, queue_status
from mediaq.runtime.settings import Settings

__all__ = ["check_line", "print_status", "run_doctor"]


def check_line(level: str, text: str, todo: str = "") -> str:
    out = f"[{level:>4}] {text}"
    return out + (f"\n       -> {todo}" if todo else "")


async def run_doctor(settings: Settings) -> int:
    """Print the checks; exit code 1 if any failed."""
    print(f"mediaq doctor: {time.strftime('%Y-%m-%d %H:%M:%S')}")
    checks = await diagnose(settings)
    for level, text, todo in checks:
        print(check_line(level, text, todo))
    return 1 if any(level == "FAIL" for level, _, _ in checks) else 0


async def print_status(settings: Settings) -> None:
    """Queue counts, live workers, and the last batches with their counts."""
    status = await queue_status(settings)
    counts, workers = status["counts"], status["workers"]
    print(f"queue {settings.queue_name!r}: {counts['queued']} queued, {counts['deferred']} deferred, "
          f"{status['in_progress']} in progress; {len(workers)} worker(s) alive")
    print("redis: " + describe_replication(status["replication"]))
    for warning in status["warnings"]:
        print(f"WARNING: {warning}")
    for name, c in status["batches"].items():
        print(f"  batch {name}: " + ", ".join(f"{k} {v}" for k, v in c.items() if v))
