"""Who is working: arq's health-check key and mediaq's per-worker heartbeats.

arq writes one ``<queue>:health-check`` string for the queue (the last worker to write wins). Each
mediaq worker also writes its own ``mediaq:worker:<host>:<pid>`` heartbeat (JSON, expiring after
three health-check intervals) and its key in the ``mediaq:workers`` sorted set, so the dashboard and
``mediaq doctor`` list every live worker without scanning the keyspace.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["HEARTBEAT_PREFIX", "WORKERS_KEY", "parse_health_check", "read_health", "read_workers"]

HEARTBEAT_PREFIX = "mediaq:worker:"
WORKERS_KEY = "mediaq:workers"  # sorted set: heartbeat key -> time of last beat
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
    from arq.constants import health_check_key_suffix

    return parse_health_check(await redis.get(queue_name + health_check_key_suffix))


async def read_workers(redis: Any) -> list[dict[str, Any]]:
    """Live mediaq workers' heartbeats: host, pid, started, last (epoch s), ongoing, finished, max_jobs."""
    import time

    # heartbeats expire by themselves; the set only says where to look (two round trips in all)
    keys = await redis.zrangebyscore(WORKERS_KEY, time.time() - 3600, "+inf")
    if not keys:
        return []
    out = []
    stale = []
    for key, raw in zip(keys, await redis.mget(keys), strict=True):
        if not raw:
            stale.append(key)
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    if stale:
        await redis.zrem(WORKERS_KEY, *stale)
    return sorted(out, key=lambda w: (w.get("host", ""), w.get("pid", 0)))
