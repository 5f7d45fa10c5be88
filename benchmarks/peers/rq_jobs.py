"""rq: ``Queue.enqueue_many`` of ``Queue.prepare_data`` records (one pipeline), and ``rq worker`` with
``SimpleWorker`` (jobs run in the worker process itself; rq's default ``Worker`` forks once per job).
Done: the queue's ``FinishedJobRegistry`` count. Thumbnails: a plain function, one at a time.
"""

from __future__ import annotations

import sys
import time
from typing import Any, ClassVar

import rq
from rq import Queue

from benchmarks.peers import Peer, redis_url, render_thumbnail

URL = redis_url()  # this module's database, fixed at its first import


def noop(value: Any = None) -> Any:
    return value


def thumbnail(image_id: str, source: str, storage: str) -> str:
    return render_thumbnail(image_id, source, storage)


class RqPeer(Peer):
    name: ClassVar[str] = f"rq {rq.__version__}"
    worker_label: ClassVar[str] = "SimpleWorker"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.queue = Queue("default", connection=self.redis)

    def enqueue(self, n: int) -> float:
        start = time.perf_counter()
        self.queue.enqueue_many([Queue.prepare_data(noop, args=(i,)) for i in range(n)])
        return time.perf_counter() - start

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        self.queue.enqueue_many([Queue.prepare_data(thumbnail, kwargs=kw) for kw in items])

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-c", "from rq.cli import main; main()", "worker", "--worker-class",
                "rq.worker.SimpleWorker", "--url", self.url, "default"]

    def queued(self) -> int:
        return self.queue.count

    def done(self) -> int:
        return self.queue.finished_job_registry.count
