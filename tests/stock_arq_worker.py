"""A stock arq worker, with nothing of mediaq's: ``arq stock_arq_worker.WorkerSettings`` (with ``tests/``
on ``PYTHONPATH``), on ``STOCK_REDIS_URL`` database ``STOCK_QUEUE_DB``, arq's default queue and pickle
serializer, running one job, ``noop``. It stands for the application's own arq workers, which must
keep working on a queue that mediaq's bulk batches feed (tests/test_bulk.py).

With ``STOCK_WITNESS_LOG`` naming a file, its ``on_job_start`` hook appends ``start <job id> <monotonic
time>`` there, as tests/witness_worker.py does for mediaq's worker (tests/test_claim.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any], value: Any = None) -> Any:
    return value


async def _witness(ctx: dict[str, Any]) -> None:
    with open(os.environ["STOCK_WITNESS_LOG"], "a") as log:
        log.write(f"start {ctx['job_id']} {time.monotonic():.6f}\n")


class WorkerSettings:
    functions = (noop,)
    redis_settings = RedisSettings.from_dsn(os.environ.get("STOCK_REDIS_URL", "redis://127.0.0.1:6379"))
    redis_settings.database = int(os.environ.get("STOCK_QUEUE_DB", "1"))
    poll_delay = 0.05
    on_job_start = _witness if os.environ.get("STOCK_WITNESS_LOG") else None
