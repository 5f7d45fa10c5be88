"""Stock arq 0.28, nothing of mediaq's: ``arq benchmarks.peers.arq_stock.WorkerSettings``.

Worker: ``max_jobs`` 10, ``poll_delay`` 0.05 (mediaq's defaults; arq's own poll_delay is 0.5 s), pickle.
Enqueue: ``ArqRedis.enqueue_job`` gathered, 1,000 at a time (arq's pool opens a connection per
concurrent call, so an unbounded gather of 100k would open 100k connections).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, ClassVar

from arq.connections import RedisSettings, create_pool
from arq.version import VERSION

from benchmarks.peers import Peer, missing_keys, redis_url

URL = redis_url()  # this module's database, fixed at its first import

GATHER = 1000


async def noop(ctx: dict[str, Any], value: Any = None) -> Any:
    return value


class WorkerSettings:
    functions = (noop,)
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 10
    poll_delay = 0.05


class ArqPeer(Peer):
    name: ClassVar[str] = f"arq {VERSION}"
    worker_label: ClassVar[str] = "stock Worker, max_jobs 10, poll_delay 0.05"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ids: list[str] = []

    def enqueue(self, n: int) -> float:
        return asyncio.run(self._enqueue(n))

    async def _enqueue(self, n: int) -> float:
        pool = await create_pool(RedisSettings.from_dsn(self.url))
        try:
            start = time.perf_counter()
            ids: list[str] = []
            for first in range(0, n, GATHER):
                jobs = await asyncio.gather(*(pool.enqueue_job("noop", i)
                                              for i in range(first, min(n, first + GATHER))))
                ids += [job.job_id for job in jobs if job is not None]
            elapsed = time.perf_counter() - start
        finally:
            await pool.aclose()
        assert len(ids) == n, len(ids)
        self.ids = ids
        self._waiting = [f"arq:result:{i}" for i in ids]
        return elapsed

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "arq", f"{__name__}.WorkerSettings"]

    def queued(self) -> int:
        return self.redis.zcard("arq:queue")

    def done(self) -> int:
        self._waiting = missing_keys(self.redis, self._waiting)
        return len(self.ids) - len(self._waiting)
