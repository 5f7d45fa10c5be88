"""mediaq: notebook-first bulk media jobs on the arq job queue.

>>> import mediaq
>>> client = await mediaq.connect()              # embedded Redis unless MEDIAQ_REDIS_URL  # doctest: +SKIP
>>> worker = mediaq.start_worker()               # a local `arq mediaq.worker.WorkerSettings`  # doctest: +SKIP
>>> batch = await client.reindex("data/")        # thumbnails, variants, IQDB              # doctest: +SKIP
>>> mediaq.dashboard(client, batch, local_worker=worker)     # the live queue view         # doctest: +SKIP
>>> df = await batch.results()                   # one row per job, a DataFrame            # doctest: +SKIP

Every async call has a blocking twin for scripts (``mediaq.connect_sync()``), which also works in a
running kernel. Importing mediaq loads nothing and starts nothing: each name below is imported the
first time it is used, and servers and workers start when you ask for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (see README "Layout" for the layers)
_EXPORTS = {
    # the client
    "Batch": "mediaq.client.batch",
    "Client": "mediaq.client.connection",
    "SyncBatch": "mediaq.client.sync",
    "SyncClient": "mediaq.client.sync",
    "image_frame": "mediaq.client.library",
    "enqueue_library": "mediaq.client.ratings",
    # the runtime
    "EmbeddedServer": "mediaq.runtime.server",
    "LocalWorker": "mediaq.runtime.localworker",
    "RatingsStore": "mediaq.runtime.ratings_store",
    "Settings": "mediaq.runtime.settings",
    "job": "mediaq.runtime.jobspec",
    "start_worker": "mediaq.runtime.localworker",
    # pure computation
    "RatingScale": "mediaq.pure.ratings",
    "Signature": "mediaq.pure.iqdb.signature",
    "bayesian_ratings": "mediaq.pure.ratings",
    "compute_signature": "mediaq.pure.iqdb.compute",
    # faces
    "pairs_side_by_side": "mediaq.faces.display",
    "thumbnail_grid": "mediaq.faces.display",
    # errors
    "ConfigError": "mediaq.errors",
    "EnqueueError": "mediaq.errors",
    "ImageTooLargeError": "mediaq.errors",
    "InvalidHashError": "mediaq.errors",
    "InvalidImageError": "mediaq.errors",
    "InvalidRatingsError": "mediaq.errors",
    "IqdbError": "mediaq.errors",
    "IqdbServerError": "mediaq.errors",
    "IqdbUnavailable": "mediaq.errors",
    "JobError": "mediaq.errors",
    "JobFailure": "mediaq.errors",
    "MediaqError": "mediaq.errors",
    "PermanentJobError": "mediaq.errors",
    "RedisUnavailable": "mediaq.errors",
    "ReplicationTimeout": "mediaq.errors",
    "ServerError": "mediaq.errors",
    "TransientJobError": "mediaq.errors",
    "UnknownJobError": "mediaq.errors",
    "WorkerStartError": "mediaq.errors",
}

__all__ = [
    "Batch",
    "Client",
    "ConfigError",
    "EmbeddedServer",
    "EnqueueError",
    "ImageTooLargeError",
    "InvalidHashError",
    "InvalidImageError",
    "InvalidRatingsError",
    "IqdbError",
    "IqdbServerError",
    "IqdbUnavailable",
    "JobError",
    "JobFailure",
    "LocalWorker",
    "MediaqError",
    "PermanentJobError",
    "RatingScale",
    "RatingsStore",
    "RedisUnavailable",
    "ReplicationTimeout",
    "ServerError",
    "Settings",
    "Signature",
    "SyncBatch",
    "SyncClient",
    "TransientJobError",
    "UnknownJobError",
    "WorkerStartError",
    "__version__",
    "bayesian_ratings",
    "compute_signature",
    "connect",
    "connect_sync",
    "dashboard",
    "enqueue_job",
    "enqueue_library",
    "image_frame",
    "job",
    "pairs_side_by_side",
    "start_worker",
    "thumbnail_grid",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time each name is imported on first use
    from mediaq.client.batch import Batch
    from mediaq.client.connection import Client
    from mediaq.client.library import image_frame
    from mediaq.client.ratings import enqueue_library
    from mediaq.client.sync import SyncBatch, SyncClient
    from mediaq.errors import (
        ConfigError,
        EnqueueError,
        ImageTooLargeError,
        InvalidHashError,
        InvalidImageError,
        InvalidRatingsError,
        IqdbError,
        IqdbServerError,
        IqdbUnavailable,
        JobError,
        JobFailure,
        MediaqError,
        PermanentJobError,
        RedisUnavailable,
        ReplicationTimeout,
        ServerError,
        TransientJobError,
        UnknownJobError,
        WorkerStartError,
    )
    from mediaq.faces.display import pairs_side_by_side, thumbnail_grid
    from mediaq.pure.iqdb.compute import compute_signature
    from mediaq.pure.iqdb.signature import Signature
    from mediaq.pure.ratings import RatingScale, bayesian_ratings
    from mediaq.runtime.jobspec import job
    from mediaq.runtime.localworker import LocalWorker, start_worker
    from mediaq.runtime.ratings_store import RatingsStore
    from mediaq.runtime.server import EmbeddedServer
    from mediaq.runtime.settings import Settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mediaq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


async def connect(url: str | None = None, *, settings: Settings | None = None, **overrides: Any) -> Client:
    """Connect to the queue: ``url``, else ``MEDIAQ_REDIS_URL``, else the embedded server (started if needed).

    ``overrides`` are settings (``serializer="pickle"``, ``max_jobs=4``). The client draws progress
    bars and dashboards with the faces' views (tqdm, ipywidgets). Fails fast with
    :class:`~mediaq.errors.RedisUnavailable` (never hangs) when Redis cannot be reached.

    >>> client = await mediaq.connect()         # doctest: +SKIP
    """
    from mediaq.client.connection import connect as connect_client
    from mediaq.faces.views import FaceViews

    return await connect_client(url, settings=settings, views=FaceViews(), **overrides)


def connect_sync(url: str | None = None, *, settings: Settings | None = None, **overrides: Any) -> SyncClient:
    """Blocking twin of :func:`connect` for scripts and cells without ``await`` (safe in a running kernel).

    >>> client = mediaq.connect_sync()                        # doctest: +SKIP
    >>> client.enqueue_many("noop", range(10)).wait()         # doctest: +SKIP
    """
    from mediaq.client.sync import SyncClient
    from mediaq.faces.views import FaceViews

    return SyncClient.connect(url, settings=settings, views=FaceViews(), **overrides)


def dashboard(client: Client | SyncClient, batch: Batch | SyncBatch | str | None = None, interval: float = 1.0,
              local_worker: LocalWorker | None = None, **options: Any) -> Any:
    """A live ipywidgets dashboard of the queue (or of one batch), refreshed in the background.

    >>> dash = mediaq.dashboard(client, batch, local_worker=worker)   # doctest: +SKIP
    >>> dash.close()                                                 # doctest: +SKIP

    ``options``: ``autostart=True``, ``timeout=5.0`` (seconds a refresh waits on Redis before
    showing it unreachable), ``window=120`` (seconds of chart history).
    """
    from mediaq.client.sync import SyncBatch, SyncClient, run_sync
    from mediaq.faces.widgets import Dashboard

    if isinstance(batch, SyncBatch):
        batch = batch.batch
    if isinstance(client, SyncClient):  # its connections live on mediaq's loop thread: refresh there
        async def build() -> Dashboard:
            return Dashboard(client.client, batch, interval, local_worker, **options)

        return run_sync(build())
    return Dashboard(client, batch, interval, local_worker, **options)


async def enqueue_job(function: str, *args: Any, _job_id: str | None = None, **kwargs: Any) -> str | None:
    """The seed helper: enqueue ``function`` by name on the default connection; returns the job id.

    Opens and closes a connection per call: for many jobs use ``client.enqueue_many``.
    """
    async with await connect() as client:
        return await client.enqueue_job(function, *args, _job_id=_job_id, **kwargs)
