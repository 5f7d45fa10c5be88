"""Who is working: arq's health-check key and mediaq's per-worker heartbeats.

arq writes one ``<queue>:health-check`` string for the queue (the last worker to write wins). Each
mediaq worker also writes its own ``mediaq:worker:<host>:<pid>`` heartbeat (JSON, expiring after
three health-check intervals) and its key in the ``mediaq:workers`` sorted set, so the dashboard and
``mediaq doctor`` list every live worker without scanning the keyspace.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from mediaq.runtime import keys

__all__ = ["parse_health_check", "read_dead_workers", "read_health", "read_workers"]


def _dead_here(beat: dict[str, Any]) -> bool:
    """Whether the heartbeat's process runs on this machine and is gone (older beats without an identity: no)."""
    from mediaq.runtime.recovery import WorkerIdentity

    if "created" not in beat:
        return False
    other = WorkerIdentity(str(beat.get("host")), int(beat.get("pid", 0)), float(beat["created"]),
                           beat.get("boot_id"), beat.get("pidns"))
    return _this_machine().same_machine(other) and not other.process_alive()


@functools.cache
def _this_machine() -> Any:
    from mediaq.runtime.recovery import WorkerIdentity

    return WorkerIdentity.current()

_FIELD = re.compile(r"(\w+)=(\d+)")


def parse_health_check(value: bytes | str | None) -> dict[str, Any] | None:
    """``"Nov-30 04:35:02 j_complete=3 j_failed=0 ..."`` -> ``{"time": "Nov-30 04:35:02", "j_complete": 3, ...}``."""
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    fields: dict[str, Any] = {k: int(v) for k, v in _FIELD.findall(text)}
    fields["time"] = text.split(" j_", 1)[0].strip()
    return fields


async def read_health(redis: Any, queue_name: str) -> dict[str, Any] | None:
    """The queue's arq health-check record, or ``None`` when no worker wrote one recently."""
    return parse_health_check(await redis.get(keys.health_check(queue_name)))


async def read_workers(redis: Any) -> list[dict[str, Any]]:
    """Live mediaq workers' heartbeats: host, pid, started, last (epoch s), ongoing, finished, max_jobs.

    A worker on this machine whose process is gone (SIGKILLed, OOM-killed) is left out at once,
    though its heartbeat has not expired yet (:func:`read_dead_workers` lists those)."""
    return [b for b in await _read_beats(redis) if not _dead_here(b)]


async def read_dead_workers(redis: Any) -> list[dict[str, Any]]:
    """Heartbeats not expired yet of workers on this machine whose process is gone."""
    return [b for b in await _read_beats(redis) if _dead_here(b)]


async def _read_beats(redis: Any) -> list[dict[str, Any]]:
    import time

    # heartbeats expire by themselves; the set only says where to look (two round trips in all)
    beats = await redis.zrangebyscore(keys.WORKERS, time.time() - 3600, "+inf")
    if not beats:
        return []
    out = []
    stale = []
    for key, raw in zip(beats, await redis.mget(beats), strict=True):
        if not raw:
            stale.append(key)
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    if stale:
        await redis.zrem(keys.WORKERS, *stale)
    return sorted(out, key=lambda w: (w.get("host", ""), w.get("pid", 0)))
