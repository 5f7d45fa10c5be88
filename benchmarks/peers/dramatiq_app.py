"""dramatiq: ``dramatiq benchmarks.peers.dramatiq_app --processes 1 --threads 10`` on its Redis broker,
results stored (``Results`` middleware, Redis backend, ``store_results=True``) as every other queue
here stores them; enqueue with ``group(...).run()``. Done: the message is acknowledged (it leaves
the queue's ``.msgs`` hash after its result is stored). Thumbnails: a plain actor on the 10 threads.
"""

from __future__ import annotations

import sys
import time
from typing import Any, ClassVar

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks.peers import Peer, redis_url, render_thumbnail

URL = redis_url()  # this module's database, fixed at its first import

broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop(value: Any = None) -> Any:
    return value


@dramatiq.actor(store_results=True)
def thumbnail(image_id: str, source: str, storage: str) -> str:
    return render_thumbnail(image_id, source, storage)


class DramatiqPeer(Peer):
    name: ClassVar[str] = f"dramatiq {dramatiq.__version__}"
    worker_label: ClassVar[str] = "1 process x 10 threads"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.n = 0

    def enqueue(self, n: int) -> float:
        self.n = n
        start = time.perf_counter()
        dramatiq.group(noop.message(i) for i in range(n)).run()
        return time.perf_counter() - start

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        self.n = len(items)
        dramatiq.group(thumbnail.message(**kw) for kw in items).run()

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "dramatiq", __name__, "--processes", "1", "--threads", "10"]

    def queued(self) -> int:
        return self.redis.llen("dramatiq:default")

    def done(self) -> int:
        return self.n - self.redis.hlen("dramatiq:default.msgs")
