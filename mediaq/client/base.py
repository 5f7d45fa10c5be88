"""What the async and sync clients share, with no I/O (as httpx's ``BaseClient``): settings, the server
URL, the serializer, the job registry, and the views that draw progress and dashboards.

The client layer draws nothing. Progress bars and dashboards are the faces' (:mod:`mediaq.faces`);
:func:`mediaq.connect` hands them to the client as its :class:`Views`. A client built below the faces
(``mediaq.client.connection.connect``) has the silent default: ``batch.wait(progress=True)`` then
shows nothing, and ``batch.dashboard()`` says where to get one.

>>> from mediaq.runtime.settings import Settings
>>> base = ClientBase(Settings.load(env={}), "redis://:secret@127.0.0.1:6390")
>>> base
<mediaq.ClientBase redis://:***@127.0.0.1:6390/1 queue='arq:queue' serializer=msgpack>
>>> "create_thumbnail" in base.jobs
True
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from mediaq.errors import ConfigError
from mediaq.jobs.registry import check_job_name, load_jobs
from mediaq.runtime.connections import with_db
from mediaq.runtime.jobspec import JobSpec
from mediaq.runtime.serialization import get_serializer
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["ClientBase", "ProgressView", "QueueClient", "Views"]


class ProgressView(Protocol):
    """One progress display (a bar): the client tells it how far a piece of work got."""

    def show(self, done: int, total: int | None, **info: Any) -> None:
        """``done`` of ``total`` (``None``: unknown); ``info``: counts to show beside it (failed=, running=)."""

    def note(self, text: str | None) -> None:
        """A short line beside the bar (``None`` clears it): a warning such as "no live worker"."""

    def close(self) -> None:
        """The work ended (or stopped being watched)."""


class _Silent:
    """The progress view of a client without faces: shows nothing."""

    def show(self, done: int, total: int | None, **info: Any) -> None:
        pass

    def note(self, text: str | None) -> None:
        pass

    def close(self) -> None:
        pass


class Views:
    """The displays a client can open. This default draws nothing; the faces subclass it
    (:class:`mediaq.faces.views.FaceViews`: tqdm bars, the ipywidgets dashboard)."""

    def progress(self, total: int | None, desc: str, unit: str = "job") -> ProgressView:
        return _Silent()

    def dashboard(self, client: Any, batch: Any = None, **options: Any) -> Any:
        raise ConfigError("this client has no dashboard view: connect with mediaq.connect() (or call "
                          "mediaq.dashboard(client, batch)) in a notebook with ipywidgets installed")


class QueueClient(Protocol):
    """What a :class:`~mediaq.client.batch.Batch` and a monitor need of their client (an async
    :class:`~mediaq.client.connection.Client`)."""

    settings: Settings
    url: str
    redis: Any
    cache: Any
    views: Views

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...

    def signatures(self) -> dict[str, inspect.Signature]: ...

    async def job_info(self, job_id: str) -> dict[str, Any]: ...


class ClientBase:
    """The I/O-free part of a client: settings, URL, serializer, job registry, views."""

    def __init__(self, settings: Settings, url: str, views: Views | None = None) -> None:
        self.settings = settings
        self.url = url
        self.views = views or Views()
        self.dumps, self.loads = get_serializer(settings.serializer)
        self._jobs: dict[str, JobSpec] | None = None

    def __repr__(self) -> str:
        return (f"<mediaq.{type(self).__name__} {redact_url(with_db(self.url, self.settings.queue_db))} "
                f"queue={self.settings.queue_name!r} serializer={self.settings.serializer}>")

    @property
    def jobs(self) -> dict[str, JobSpec]:
        """Registered job functions by name (built in plus ``MEDIAQ_JOB_MODULES``)."""
        if self._jobs is None:
            self._jobs = load_jobs(self.settings)
        return self._jobs

    def check_function(self, function: str) -> None:
        """:class:`~mediaq.errors.UnknownJobError` (with suggestions) unless ``function`` is a registered job."""
        if function not in self.jobs:
            check_job_name(function, self.settings)

    def signatures(self) -> dict[str, inspect.Signature]:
        """Each job's signature (names the positional arguments in result frames)."""
        return {name: inspect.signature(spec.coroutine) for name, spec in self.jobs.items()}
