"""Stock arq 0.28, nothing of mediaq's: ``arq benchmarks.peers.arq_stock.WorkerSettings``.

Worker: ``max_jobs`` 10, ``poll_delay`` 0.05 (mediaq's defaults; arq's own poll_delay is 0.5 s), pickle.
Thumbnails run in a ``ProcessPoolExecutor`` (one process per core) through ``run_in_executor``, as
arq's documentation advises for CPU-bound jobs.
Enqueue: ``ArqRedis.enqueue_job`` gathered, 1,000 at a time (arq's pool opens a connection per
concurrent call, so an unbounded gather of 100k would open 100k connections).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, ClassVar

from arq.connections import RedisSettings, create_pool
from arq.version import VERSION

from benchmarks.peers import Peer, missing_keys, redis_url, render_thumbnail

URL = redis_url()  # this module's database, fixed at its first import

GATHER = 1000


async def noop(ctx: dict[str, Any], value: Any = None) -> Any:
    return value


async def thumbnail(ctx: dict[str, Any], image_id: str, source: str, storage: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(ctx["pool"], render_thumbnail, image_id, source, storage)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["pool"] = ProcessPoolExecutor(os.cpu_count())


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["pool"].shutdown()


class WorkerSettings:
    functions = (noop, thumbnail)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 10
    poll_delay = 0.05


class ArqPeer(Peer):
    name: ClassVar[str] = f"arq {VERSION}"
    worker_label: ClassVar[str] = "stock Worker, max_jobs 10, poll_delay 0.05"
    thumb_label: ClassVar[str] = ", ProcessPoolExecutor"

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

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        asyncio.run(self._submit("thumbnail", items))

    async def _submit(self, function: str, items: list[dict[str, str]]) -> None:
        pool = await create_pool(RedisSettings.from_dsn(self.url))
        try:
            jobs = await asyncio.gather(*(pool.enqueue_job(function, **kw) for kw in items))
        finally:
            await pool.aclose()
        self.ids = [job.job_id for job in jobs if job is not None]
        self._waiting = [f"arq:result:{i}" for i in self.ids]

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "arq", f"{__name__}.WorkerSettings"]

    def queued(self) -> int:
        return self.redis.zcard("arq:queue")

    def done(self) -> int:
        self._waiting = missing_keys(self.redis, self._waiting)
        return len(self.ids) - len(self._waiting)
