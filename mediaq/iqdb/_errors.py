"""Errors of the IQDB layer, under :class:`mediaq.errors.MediaqError`.

Tree::

    MediaqError
    └── IqdbError                  anything IQDB
        ├── InvalidImageError      the image cannot be decoded (also a ValueError)
        ├── InvalidHashError       not a 533-character ``iqdb_...`` hash (also a ValueError)
        ├── IqdbUnavailable        the IQDB server cannot be reached (also a ConnectionError)
        └── IqdbServerError        the server answered with an error (HTTP 500 JSON, or another status)
"""

from __future__ import annotations

from typing import Any

from mediaq.errors import MediaqError

__all__ = ["InvalidHashError", "InvalidImageError", "IqdbError", "IqdbServerError", "IqdbUnavailable"]


class IqdbError(MediaqError):
    """Base of every IQDB error."""


class InvalidImageError(IqdbError, ValueError):
    """The image could not be decoded (not an image, truncated, unsupported)."""


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
