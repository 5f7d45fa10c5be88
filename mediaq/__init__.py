"""mediaq: notebook-first bulk media jobs on the arq job queue.

>>> import mediaq
>>> client = await mediaq.connect()              # embedded Redis unless MEDIAQ_REDIS_URL  # doctest: +SKIP
>>> worker = mediaq.start_worker()               # a local `arq mediaq.worker.WorkerSettings`  # doctest: +SKIP
>>> batch = await client.enqueue_many("create_thumbnail", items, job_id="thumb:{image_id}")  # doctest: +SKIP
>>> await batch.wait()                                                                     # doctest: +SKIP
>>> df = await batch.results()                                                             # doctest: +SKIP

Every async helper has a sync twin for scripts (``connect_sync``), which also works in a running kernel.
Importing mediaq starts nothing: servers and workers start when you ask for them.
"""

from __future__ import annotations

from typing import Any

from mediaq.client.batch import Batch
from mediaq.client.connection import Client, connect, image_frame
from mediaq.errors import (
    ConfigError,
    EnqueueError,
    JobError,
    MediaqError,
    PermanentJobError,
    RedisUnavailable,
    ServerError,
    TransientJobError,
    UnknownJobError,
    WorkerStartError,
)
from mediaq.runtime.jobspec import job
from mediaq.runtime.localworker import LocalWorker, start_worker
from mediaq.runtime.server import EmbeddedServer
from mediaq.runtime.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Client",
    "ConfigError",
    "EmbeddedServer",
    "EnqueueError",
    "JobError",
    "LocalWorker",
    "MediaqError",
    "PermanentJobError",
    "RedisUnavailable",
    "ServerError",
    "Settings",
    "TransientJobError",
    "UnknownJobError",
    "WorkerStartError",
    "__version__",
    "connect",
    "connect_sync",
    "dashboard",
    "enqueue_job",
    "image_frame",
    "job",
    "start_worker",
]


def connect_sync(url: str | None = None, **settings: Any) -> Any:
    """Blocking twin of :func:`connect` for scripts and cells without ``await``.

    Returns a client whose methods block (``client.enqueue_many(...).wait()``); safe in a running kernel.
    """
    from mediaq.client.sync import SyncProxy, run_sync

    return SyncProxy(run_sync(connect(url, **settings)))


def dashboard(client: Client, batch: Batch | str | None = None, interval: float = 1.0,
              local_worker: LocalWorker | None = None, **options: Any) -> Any:
    """A live ipywidgets dashboard of the queue (or of one batch), refreshed in the background.

    >>> dash = mediaq.dashboard(client, batch, local_worker=worker)   # doctest: +SKIP
    >>> dash.close()                                                 # doctest: +SKIP

    ``options``: ``autostart=True``, ``timeout=5.0`` (seconds a refresh waits on Redis before
    showing it unreachable), ``window=120`` (seconds of chart history).
    """
    from mediaq.faces.widgets import Dashboard

    return Dashboard(client, batch, interval, local_worker, **options)


async def enqueue_job(function: str, *args: Any, _job_id: str | None = None, **kwargs: Any) -> str | None:
    """The seed helper: enqueue ``function`` by name on the default connection; returns the job id.

    Opens and closes a connection per call: for many jobs use ``client.enqueue_many``.
    """
    async with await connect() as client:
        return await client.enqueue_job(function, *args, _job_id=_job_id, **kwargs)
