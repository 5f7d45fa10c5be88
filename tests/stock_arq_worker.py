"""A stock arq worker, with nothing of mediaq's: ``arq stock_arq_worker.WorkerSettings`` (with ``tests/``
on ``PYTHONPATH``), on ``STOCK_REDIS_URL`` database ``STOCK_QUEUE_DB``, arq's default queue and pickle
serializer, running one job, ``noop``. It stands for the application's own arq workers, which must
keep working on a queue that mediaq's bulk batches feed (tests/test_bulk.py).
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
    poll_delay = 0.05
