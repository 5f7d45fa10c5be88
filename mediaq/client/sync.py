"""The blocking face of the client, for plain scripts and notebook cells without ``await``.

:class:`SyncClient` shares its I/O-free base (:class:`~mediaq.client.base.ClientBase`: settings, URL,
serializer, job registry) with the async :class:`~mediaq.client.connection.Client`, as httpx's two
clients do, and has a blocking twin of every async method: ``client.enqueue_many(...)`` returns a
:class:`SyncBatch` whose ``wait()``, ``results()``... block; ``client.iqdb()`` returns the blocking
IQDB backend (:class:`~mediaq.runtime.iqdb_index.SyncIqdbIndex` or
:class:`~mediaq.runtime.iqdb_server.SyncRemoteIqdb`). ``tests/test_sync.py`` checks the twins are
complete, with the same arguments.

The async work runs on one private event loop in a daemon thread, so a blocking call works the same
in a script and inside a running Jupyter kernel (no ``asyncio.run`` in a running loop, no patching
of the kernel's loop).

>>> client = mediaq.connect_sync()                       # doctest: +SKIP
>>> batch = client.enqueue_many("noop", range(10))       # doctest: +SKIP
>>> batch.wait(progress=False)                           # doctest: +SKIP
{'queued': 0, 'deferred': 0, 'in_progress': 0, 'complete': 10, 'failed': 0, 'not_found': 0}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import pandas as pd

from mediaq.client.base import ClientBase, Views
from mediaq.client.batch import Batch
from mediaq.client.connection import Client, connect
from mediaq.errors import WaitInterrupted
from mediaq.runtime.connections import sync_client, with_db
from mediaq.runtime.iqdb_ids import SyncPostIdMap
from mediaq.runtime.iqdb_index import SyncIqdbIndex
from mediaq.runtime.iqdb_server import SyncRemoteIqdb
from mediaq.runtime.settings import Settings

__all__ = ["SyncBatch", "SyncClient", "SyncJob", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="mediaq-sync-loop", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` to completion on mediaq's loop thread and return its result (works inside a running loop)."""
    future = asyncio.run_coroutine_threadsafe(coro, _background_loop())
    try:
        return future.result(timeout)
    except KeyboardInterrupt:
        future.cancel()
        raise


class SyncJob:
    """Blocking twin of arq's :class:`arq.jobs.Job` (what ``client.job(job_id)`` returns)."""

    def __init__(self, job: Any) -> None:
        self._job = job
        self.job_id: str = job.job_id

    def __repr__(self) -> str:
        return f"<SyncJob {self.job_id}>"

    def status(self) -> Any:
        """arq's ``JobStatus``: deferred, queued, in_progress, complete or not_found."""
        return run_sync(self._job.status())

    def info(self) -> Any:
        return run_sync(self._job.info())

    def result_info(self) -> Any:
        return run_sync(self._job.result_info())

    def abort(self, *, timeout: float | None = None, poll_delay: float = 0.5) -> bool:
        return run_sync(self._job.abort(timeout=timeout, poll_delay=poll_delay))


class SyncBatch:
    """Blocking twin of :class:`~mediaq.client.batch.Batch`; ``.batch`` is the async one underneath."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    # -- I/O-free: the async batch's own state ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.batch.name

    @property
    def function(self) -> str | None:
        return self.batch.function

    @property
    def skipped(self) -> list[str]:
        """Ids skipped at the last enqueue because they already existed."""
        return self.batch.skipped

    @property
    def ids(self) -> list[str]:
        return self.batch.ids

    @property
    def active_ids(self) -> list[str]:
        return self.batch.active_ids

    @property
    def priority(self) -> str | None:
        return self.batch.priority

    @property
    def key(self) -> str:
        return self.batch.key

    @property
    def pending_key(self) -> str:
        return self.batch.pending_key

    @property
    def ids_key(self) -> str:
        return self.batch.ids_key

    def set_ids(self, ids: list[str]) -> None:
        self.batch.set_ids(ids)

    def __len__(self) -> int:
        return len(self.batch)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "<Sync" + repr(self.batch)[1:]

    def dashboard(self, interval: float = 1.0, local_worker: Any = None, **options: Any) -> Any:
        """A live dashboard of this batch, refreshed on mediaq's loop thread."""
        async def build() -> Any:
            return self.batch.dashboard(interval, local_worker, **options)

        return run_sync(build())

    # -- blocking twins -------------------------------------------------------------------------------
    def register(self, function: str, priority: str = "live") -> None:
        run_sync(self.batch.register(function, priority))

    def load(self) -> SyncBatch:
        run_sync(self.batch.load())
        return self

    def job_states(self) -> dict[str, str]:
        return run_sync(self.batch.job_states())

    def status(self) -> dict[str, int]:
        return run_sync(self.batch.status())

    def wait(self, *, progress: bool = True, timeout: float | None = None,
             poll_interval: float = 0.5) -> dict[str, int]:
        try:
            return run_sync(self.batch.wait(progress=progress, timeout=timeout, poll_interval=poll_interval))
        except KeyboardInterrupt as exc:
            if isinstance(exc, WaitInterrupted):
                raise
            counts = run_sync(self.batch.status(), timeout=10)
            raise WaitInterrupted(self.batch.interrupted_message(counts)) from None

    def results(self, *, all_attempts: bool = False) -> pd.DataFrame:
        return run_sync(self.batch.results(all_attempts=all_attempts))

    def failed(self) -> pd.DataFrame:
        return run_sync(self.batch.failed())

    def retry_failed(self, job_ids: Iterable[str] | None = None) -> list[str]:
        return run_sync(self.batch.retry_failed(job_ids))

    def abort(self) -> int:
        return run_sync(self.batch.abort())

    def delete(self) -> None:
        run_sync(self.batch.delete())

    def pause(self) -> None:
        run_sync(self.batch.pause())

    def resume(self) -> None:
        run_sync(self.batch.resume())

    def is_paused(self) -> bool:
        return run_sync(self.batch.is_paused())


class SyncClient(ClientBase):
    """Blocking twin of :class:`~mediaq.client.connection.Client`: build it with :meth:`connect` (or
    :func:`mediaq.connect_sync`); use as ``with`` or call :meth:`close`."""

    def __init__(self, client: Client) -> None:
        super().__init__(client.settings, client.url, client.views)
        self.client = client  # the async client underneath, living on mediaq's loop thread
        self._sync_redis: Any = None

    @classmethod
    def connect(cls, url: str | None = None, *, settings: Settings | None = None, views: Views | None = None,
                **overrides: Any) -> SyncClient:
        """Blocking twin of :func:`~mediaq.client.connection.connect`."""
        return cls(run_sync(connect(url, settings=settings, views=views, **overrides)))

    @property
    def redis(self) -> Any:
        """The async client's Redis connection (``redis.asyncio``; use it through :func:`run_sync`)."""
        return self.client.redis

    def close(self) -> None:
        """Close the connection pools."""
        if self._sync_redis is not None:
            self._sync_redis.close()
            self._sync_redis = None
        run_sync(self.client.close())

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blocking twins -------------------------------------------------------------------------------
    def enqueue_job(self, function: str, *args: Any, _job_id: str | None = None,
                    _defer_by: float | dt.timedelta | None = None, _defer_until: dt.datetime | None = None,
                    _expires: float | dt.timedelta | None = None, **kwargs: Any) -> str | None:
        return run_sync(self.client.enqueue_job(function, *args, _job_id=_job_id, _defer_by=_defer_by,
                                                _defer_until=_defer_until, _expires=_expires, **kwargs))

    def job(self, job_id: str) -> SyncJob:
        return SyncJob(self.client.job(job_id))

    def result(self, job_id: str, timeout: float | None = 60.0, poll_delay: float = 0.1) -> Any:
        return run_sync(self.client.result(job_id, timeout, poll_delay))

    def job_info(self, job_id: str) -> dict[str, Any]:
        return run_sync(self.client.job_info(job_id))

    def abort_job(self, job_id: str) -> None:
        run_sync(self.client.abort_job(job_id))

    def enqueue_many(
        self,
        function: str,
        items: Iterable[Any],
        *,
        job_id: str | Callable[[Any], str] | None = None,
        batch: str | None = None,
        defer_by: float | dt.timedelta | None = None,
        defer_until: dt.datetime | None = None,
        expires: float | dt.timedelta | None = None,
        chunk_size: int = 1000,
        progress: bool = False,
        force: bool = False,
        durable: int | bool | None = None,
        priority: str | None = None,
        _job_id: str | Callable[[Any], str] | None = None,
        _defer_by: float | dt.timedelta | None = None,
        _defer_until: dt.datetime | None = None,
        _expires: float | dt.timedelta | None = None,
    ) -> SyncBatch:
        return SyncBatch(run_sync(self.client.enqueue_many(
            function, items, job_id=job_id, batch=batch, defer_by=defer_by, defer_until=defer_until, expires=expires,
            chunk_size=chunk_size, progress=progress, force=force, durable=durable, priority=priority, _job_id=_job_id,
            _defer_by=_defer_by, _defer_until=_defer_until, _expires=_expires)))

    def reindex(self, source: Any, *, iqdb: bool = True, batch: str | None = None, pattern: str = "**/*",
                chunk_size: int = 1000, force: bool = False, priority: str = "bulk") -> SyncBatch:
        return SyncBatch(run_sync(self.client.reindex(source, iqdb=iqdb, batch=batch, pattern=pattern,
                                                      chunk_size=chunk_size, force=force, priority=priority)))

    def iqdb(self) -> SyncIqdbIndex | SyncRemoteIqdb:
        """The configured IQDB backend, blocking: the embedded index in this Redis, or the server at
        ``MEDIAQ_IQDB_URL`` (with the id map in this Redis, as :meth:`Client.iqdb`)."""
        if self._sync_redis is None:
            timeout = self.settings.connect_timeout
            self._sync_redis = sync_client(with_db(self.url, self.settings.queue_db),
                                           socket_connect_timeout=timeout, socket_timeout=max(30.0, timeout))
        if self.settings.iqdb_url:
            return SyncRemoteIqdb(self.settings.iqdb_url, ids=SyncPostIdMap(self._sync_redis))
        return SyncIqdbIndex(self._sync_redis)

    def batch(self, name: str) -> SyncBatch:
        return SyncBatch(self.client.batch(name))

    def batches(self) -> pd.DataFrame:
        return run_sync(self.client.batches())

    def queue_counts(self) -> dict[str, int]:
        return run_sync(self.client.queue_counts())

    def results_frame(self, chunk: int = 2000) -> pd.DataFrame:
        return run_sync(self.client.results_frame(chunk))

    def queue_frame(self, chunk: int = 2000) -> pd.DataFrame:
        return run_sync(self.client.queue_frame(chunk))
