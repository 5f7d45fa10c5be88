"""Celery with Redis as broker and result backend: ``celery -A benchmarks.peers.celery_app worker``
with the prefork pool (2 processes, one per core) or the thread pool (10 threads), without gossip,
mingle and heartbeat (Celery's advice for a lone worker); enqueue with ``group(...).apply_async()``.
Done: the result keys (``celery-task-meta-<id>``) of every task exist. Thumbnails: a plain task.
"""

from __future__ import annotations

import sys
import time
from typing import Any, ClassVar

import celery
from celery import Celery, group

from benchmarks.peers import Peer, missing_keys, redis_url, render_thumbnail

URL = redis_url()  # this module's database, fixed at its first import

app = Celery("peers", broker=URL, backend=URL)
app.conf.update(broker_connection_retry_on_startup=True, task_ignore_result=False)


@app.task(name="noop")
def noop(value: Any = None) -> Any:
    return value


@app.task(name="thumbnail")
def thumbnail(image_id: str, source: str, storage: str) -> str:
    return render_thumbnail(image_id, source, storage)


class CeleryPeer(Peer):
    name: ClassVar[str] = f"celery {celery.__version__}"
    worker_label: ClassVar[str] = "prefork -c 2"
    pool: ClassVar[list[str]] = ["--pool", "prefork", "--concurrency", "2"]

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ids: list[str] = []
        self._waiting: list[str] = []

    def enqueue(self, n: int) -> float:
        start = time.perf_counter()
        result = group(noop.s(i) for i in range(n)).apply_async()
        elapsed = time.perf_counter() - start
        self.ids = [r.id for r in result.results]
        self._waiting = [f"celery-task-meta-{i}" for i in self.ids]
        return elapsed

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        result = group(thumbnail.s(**kw) for kw in items).apply_async()
        self.ids = [r.id for r in result.results]
        self._waiting = [f"celery-task-meta-{i}" for i in self.ids]

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", __name__, "worker", *self.pool, "--without-gossip",
                "--without-mingle", "--without-heartbeat"]

    def queued(self) -> int:
        return self.redis.llen("celery")

    def done(self) -> int:
        self._waiting = missing_keys(self.redis, self._waiting)
        return len(self.ids) - len(self._waiting)


class CeleryThreadsPeer(CeleryPeer):
    worker_label: ClassVar[str] = "threads -c 10"
    pool: ClassVar[list[str]] = ["--pool", "threads", "--concurrency", "10"]
