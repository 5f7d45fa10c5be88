"""saq: ``python -m saq benchmarks.peers.saq_app.settings`` (``concurrency`` 10); enqueue with
``queue.enqueue`` gathered (saq has no bulk enqueue; its queue throttles itself to 20 concurrent
operations). Done: the queue's ``incomplete`` count reaches 0 (a job leaves it when it finishes and
its result is written to its record). Thumbnails: a plain (sync) function, which saq runs in its
thread pool.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from typing import Any, ClassVar

from saq import Queue

from benchmarks.peers import Peer, redis_url, render_thumbnail

URL = redis_url()  # this module's database, fixed at its first import

GATHER = 1000


async def noop(ctx: dict[str, Any], *, value: Any = None) -> Any:
    return value


def thumbnail(ctx: dict[str, Any], *, image_id: str, source: str, storage: str) -> str:
    return render_thumbnail(image_id, source, storage)


settings = {"queue": Queue.from_url(URL), "functions": [noop, thumbnail], "concurrency": 10}


class SaqPeer(Peer):
    name: ClassVar[str] = f"saq {version('saq')}"
    worker_label: ClassVar[str] = "concurrency 10"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.n = 0

    def enqueue(self, n: int) -> float:
        self.n = n
        return asyncio.run(self._enqueue(n))

    async def _enqueue(self, n: int) -> float:
        queue = Queue.from_url(self.url)
        try:
            await queue.connect()
            start = time.perf_counter()
            for first in range(0, n, GATHER):
                jobs = await asyncio.gather(*(queue.enqueue("noop", value=i)
                                              for i in range(first, min(n, first + GATHER))))
                assert all(jobs)
            return time.perf_counter() - start
        finally:
            await queue.disconnect()

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        self.n = len(items)
        asyncio.run(self._submit(items))

    async def _submit(self, items: list[dict[str, str]]) -> None:
        queue = Queue.from_url(self.url)
        try:
            assert all(await asyncio.gather(*(queue.enqueue("thumbnail", **kw) for kw in items)))
        finally:
            await queue.disconnect()

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "saq", f"{__name__}.settings"]

    def queued(self) -> int:
        return self.redis.llen("saq:default:queued")

    def done(self) -> int:
        return self.n - self.redis.zcard("saq:default:incomplete")
