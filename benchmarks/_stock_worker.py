"""A stock arq worker for ``bench_worker``: ``arq benchmarks._stock_worker.WorkerSettings`` (repository root
on ``PYTHONPATH``), nothing of mediaq's, pickle serializer, one job, ``noop``.

Configured by the benchmark through ``STOCK_REDIS_URL`` (with password, no db), ``STOCK_QUEUE_DB``,
``STOCK_QUEUE_NAME``, ``STOCK_MAX_JOBS``, ``STOCK_POLL_DELAY`` and ``STOCK_KEEP_RESULT`` (seconds), so it
runs with exactly the mediaq worker's figures.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any], value: Any = None) -> Any:
    return value


class WorkerSettings:
    functions = (noop,)
    redis_settings = RedisSettings.from_dsn(os.environ.get("STOCK_REDIS_URL", "redis://127.0.0.1:6379"))
    redis_settings.database = int(os.environ.get("STOCK_QUEUE_DB", "1"))
    queue_name = os.environ.get("STOCK_QUEUE_NAME", "arq:queue")
    max_jobs = int(os.environ.get("STOCK_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("STOCK_POLL_DELAY", "0.05"))
    keep_result = float(os.environ.get("STOCK_KEEP_RESULT", "3600"))
