"""Every exception mediaq raises, under one base class.

Tree::

    MediaqError
    ├── ConfigError              a setting or argument is wrong (fix the call or the MEDIAQ_* variable)
    │   └── InvalidRatingsError  ratings rows that cannot be loaded (names every bad row; nothing written)
    ├── RedisUnavailable         Redis cannot be reached or refused us (server down, wrong password)
    ├── ServerError              the embedded server could not be started or stopped
    ├── WorkerStartError         a local worker died while starting (carries its last log lines)
    ├── UnknownJobError          a job name that no worker registers
    ├── EnqueueError             a bulk enqueue stopped part way (says which chunks were written)
    ├── ReplicationTimeout       durable mode: a write reached the primary but too few replicas in time
    ├── JobError                 a job failed; raised on the client with the worker's type, message, traceback
    ├── IqdbError                anything IQDB
    │   ├── InvalidImageError    the image cannot be decoded (also a ValueError)
    │   │   └── ImageTooLargeError   more pixels than allowed (``MEDIAQ_MAX_IMAGE_PIXELS``): seen in the header
    │   ├── InvalidHashError     not a 533-character ``iqdb_...`` hash (also a ValueError)
    │   ├── IqdbUnavailable      the IQDB server cannot be reached (also a ConnectionError)
    │   └── IqdbServerError      the server answered with an error (HTTP 500 JSON, or another status)
    └── JobFailure               raised *inside* jobs; the worker turns it into a result
        ├── PermanentJobError    bad input: fails at once, never retried
        └── TransientJobError    a passing problem: retried with the seed backoff (5 s x try)

Not an error, so not under MediaqError: ``WaitInterrupted`` (a ``KeyboardInterrupt``) ends an
interrupted ``batch.wait()`` with one line saying that the batch goes on.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
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
    "MediaqError",
    "PermanentJobError",
    "RedisUnavailable",
    "ReplicationTimeout",
    "ServerError",
    "TransientJobError",
    "UnknownJobError",
    "WaitInterrupted",
    "WorkerStartError",
]


class MediaqError(Exception):
    """Base class of every mediaq error."""


class ConfigError(MediaqError, ValueError):
    """A setting or an argument is invalid; the message says which and what is allowed."""


class InvalidRatingsError(ConfigError):
    """Ratings that cannot be loaded; nothing was written. ``rows`` holds the offending rows (a
    DataFrame: original index, or ``line`` numbers for a CSV) and ``reason`` says what is wrong."""

    def __init__(self, message: str, rows: Any = None, reason: str = "") -> None:
        super().__init__(message)
        if rows is None:
            import pandas as pd

            rows = pd.DataFrame()
        self.rows = rows
        self.reason = reason


class RedisUnavailable(MediaqError, ConnectionError):
    """Redis could not be reached, or refused the connection (for example a wrong password)."""


class ServerError(MediaqError):
    """The embedded Redis server could not be started or stopped."""


class WorkerStartError(MediaqError):
    """A local worker exited while starting. ``log_tail`` holds its last log lines."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- last worker log lines ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


class UnknownJobError(MediaqError, KeyError):
    """A job function name that is not registered (built in, or from ``MEDIAQ_JOB_MODULES``)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class EnqueueError(MediaqError):
    """A bulk enqueue stopped part way. Chunks are atomic: each one was written whole or not at all.

    ``written`` is the number of items in chunks confirmed written, ``chunks_written`` how many
    chunks. ``in_doubt`` is the size of the chunk whose reply was lost when the connection broke
    after it was sent (0 if there is none): the server may have written it whole or not at all, and
    nobody can tell until it is back. Rerunning the same call with deterministic ids completes the
    batch without duplicates either way.

    Example::

        try:
            batch = await client.enqueue_many("create_thumbnail", ids, job_id="thumb:{0}")
        except mediaq.EnqueueError as exc:
            print(exc.written, exc.in_doubt)  # then run the same call again
    """

    def __init__(self, message: str, *, written: int, chunks_written: int, batch: str | None = None,
                 in_doubt: int = 0) -> None:
        super().__init__(message)
        self.written = written
        self.chunks_written = chunks_written
        self.batch = batch
        self.in_doubt = in_doubt


class ReplicationTimeout(MediaqError):
    """Durable mode: a write reached the primary, but fewer than ``wanted`` replicas acknowledged it
    within ``timeout`` seconds (``acked`` did). The write is on the primary and stays there unless
    the primary fails before a replica has it; a failover right now could lose it.

    Raised by ``enqueue_job`` and logged by workers (for a result); a bulk enqueue turns it into an
    :class:`EnqueueError` whose ``in_doubt`` chunk is the one not confirmed.
    """

    def __init__(self, message: str, *, acked: int, wanted: int, timeout: float) -> None:
        super().__init__(message)
        self.acked = acked
        self.wanted = wanted
        self.timeout = timeout


class JobError(MediaqError):
    """A job failed in a worker. Carries what the worker saw, whatever the exception's class was.

    Attributes: ``type`` (qualified exception class name), ``message``, ``traceback`` (text),
    ``code`` (a short machine-readable code for structured job errors, else ``None``),
    ``details`` (a dict of extra plain data).
    """

    def __init__(
        self,
        type: str,
        message: str,
        traceback: str = "",
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.traceback = traceback
        self.code = code
        self.details = details or {}

    def __reduce__(self) -> Any:
        return (JobError, (self.type, self.message, self.traceback, self.code, self.details))

    def __repr__(self) -> str:
        code = f", code={self.code!r}" if self.code else ""
        return f"JobError(type={self.type!r}, message={self.message!r}{code})"


class IqdbError(MediaqError):
    """Base of every IQDB error."""


class InvalidImageError(IqdbError, ValueError):
    """The image could not be decoded (not an image, truncated, unsupported)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than allowed (``max_pixels``, ``MEDIAQ_MAX_IMAGE_PIXELS``); told from its
    header, so nothing was decoded. ``code`` is the job error code it becomes, ``too_large``."""

    code = "too_large"


class InvalidHashError(IqdbError, ValueError):
    """A string that is not an IQDB hash (``iqdb_`` + 528 lowercase hex digits)."""


class IqdbUnavailable(IqdbError, ConnectionError):
    """The IQDB server could not be reached (refused, timed out, connection dropped)."""


class IqdbServerError(IqdbError):
    """The IQDB server answered with an error.

    ``status`` is the HTTP status; for the server's HTTP 500 JSON errors ``exception`` and
    ``server_message`` carry its ``exception`` and ``message`` fields and ``backtrace`` its trace.
    """

    def __init__(self, message: str, *, status: int, exception: str | None = None,
                 server_message: str | None = None, backtrace: Any = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.exception = exception
        self.server_message = server_message
        self.backtrace = backtrace
        self.url = url


class JobFailure(MediaqError):
    """Base for the errors job functions raise. ``code`` is short and stable (``"missing_file"``)."""

    retry: bool = False

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.details = details

    def __reduce__(self) -> Any:
        return (_rebuild_failure, (type(self), self.code, self.message, self.details))


def _rebuild_failure(cls: type[JobFailure], code: str, message: str, details: dict[str, Any]) -> JobFailure:
    return cls(code, message, **details)


class PermanentJobError(JobFailure):
    """Bad input (missing, corrupt, unsupported or oversized file; bad argument): fail now, no retry."""

    retry = False


class TransientJobError(JobFailure):
    """A passing problem (server unreachable, database locked): retried up to ``max_tries``."""

    retry = True


class WaitInterrupted(KeyboardInterrupt):
    """Waiting was interrupted (Ctrl-C, the kernel's stop button); the batch itself goes on in Redis.

    A ``KeyboardInterrupt``, so scripts stop as they would; Jupyter shows its one line instead of a
    traceback through mediaq's internals.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def _render_traceback_(self) -> list[str]:  # IPython: what to show instead of a traceback
        return [self.message]
