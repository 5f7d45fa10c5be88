"""The other Python job queues, one small module each, for ``benchmarks/bench_peers.py``.

Each module holds both sides of one library: what its worker imports (the no-op job, the app or
settings its CLI loads, configured from ``BENCH_PEERS_REDIS_URL``) and :class:`Peer`, the parent's
handle (enqueue ``n`` no-op jobs with the library's bulk API, the worker's command line, and two
counters read straight from Redis: jobs still queued, and jobs done). Each also has a ``thumbnail``
job doing exactly the work of mediaq's ``create_thumbnail`` (:func:`render_thumbnail`), run the way
the library's documentation gives for such work. A module imports its library
only inside functions or at its own import, so a library that is not installed skips that peer alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import redis

__all__ = ["ROOT", "URL_ENV", "Peer", "missing_keys", "redis_url", "render_thumbnail"]

URL_ENV = "BENCH_PEERS_REDIS_URL"
ROOT = Path(__file__).resolve().parents[2]


def redis_url() -> str:
    """The peer's Redis URL (database included), set by the benchmark for the worker subprocess."""
    return os.environ.get(URL_ENV, "redis://127.0.0.1:6379/2")


class Peer:
    """One library on its own Redis database: ``enqueue``, ``worker_cmd``, ``queued``, ``done``."""

    name: ClassVar[str] = ""        # the library and version, as the table's baseline name says it
    worker_label: ClassVar[str] = ""  # how its worker runs: "SimpleWorker", "prefork -c 2"...
    thumb_label: ClassVar[str] = ""  # how it runs CPU-bound jobs, where that differs from its no-op jobs

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url)

    def enqueue(self, n: int) -> float:
        """Enqueue ``n`` no-op jobs (arguments ``0..n-1``); seconds the library's calls took."""
        raise NotImplementedError

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        """Enqueue one ``thumbnail(image_id=, source=, storage=)`` job per item."""
        raise NotImplementedError

    def worker_cmd(self) -> list[str]:
        raise NotImplementedError

    def queued(self) -> int:
        """Jobs not yet taken by a worker (one cheap command)."""
        raise NotImplementedError

    def done(self) -> int:
        """Jobs finished with their result stored (or acknowledged, where that is the library's record)."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[URL_ENV] = self.url
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def flush(self) -> None:
        self.redis.flushdb()

    def close(self) -> None:
        self.redis.close()


def render_thumbnail(image_id: str, source: str, storage: str) -> str:
    """mediaq's ``create_thumbnail`` without mediaq's worker: decode, fit within the default 250x200,
    encode, write ``{storage}/thumbs/{image_id}.jpg``; returns the path."""
    from mediaq.jobs.images import render_task, store_outputs
    from mediaq.pure.imaging import OutputSpec
    from mediaq.runtime.settings import Settings

    specs = {"thumbnail": OutputSpec((Settings.thumb_width, Settings.thumb_height), Settings.thumb_format,
                                     Settings.thumb_quality)}
    info, outputs = render_task(source, specs, max_pixels=Settings.max_image_pixels)
    return store_outputs(storage, image_id, info, outputs, specs)["thumbnail"]["path"]


def missing_keys(client: redis.Redis, keys: list[str], chunk: int = 5000) -> list[str]:
    """The keys of ``keys`` that do not exist yet (pipelined EXISTS, ``chunk`` at a time)."""
    missing: list[str] = []
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        with client.pipeline(transaction=False) as pipe:
            for key in part:
                pipe.exists(key)
            missing += [k for k, e in zip(part, pipe.execute(), strict=True) if not e]
    return missing
