"""Storage chosen by URL: :func:`open_store` for an output root, :func:`open_source` for a source image.

A location is a local path (``media``, ``/srv/media``, ``file:///srv/media``) or an object-store URL
(``s3://bucket/prefix``; ``gs://``, ``az://account/container``, and ``memory://`` for tests). Each
backend is imported only when its scheme is used.

>>> normalize_root("s3://bucket/media/"), is_url("/srv/media"), is_url("gs://b/x.jpg")
('s3://bucket/media', False, True)
>>> open_store("memory:///demo")
ObjectStore('memory:///demo')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from mediaq.errors import ConfigError, PermanentJobError
from mediaq.runtime.storage.base import Store

__all__ = ["OBJECT_SCHEMES", "is_url", "normalize_root", "open_source", "open_store", "read_source"]

#: URL schemes served by object stores (obstore); ``file://`` and plain paths are local folders
OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "memory")
#: Largest source accepted (bytes), as :data:`mediaq.pure.imaging.MAX_FILE_BYTES`
MAX_SOURCE_BYTES = 512 * 1024 * 1024


def _scheme(location: str) -> str | None:
    if "://" not in location:
        return None
    return urlsplit(location).scheme.lower()


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL (``file://`` included) rather than a plain path."""
    return isinstance(location, str) and _scheme(location) is not None


def normalize_root(location: str | os.PathLike[str]) -> str:
    """A storage root as mediaq keeps it: an absolute local path, or a URL without a trailing slash.

    A scheme mediaq cannot use raises :class:`~mediaq.errors.ConfigError` naming the ones it can.
    """
    text = os.fspath(location)
    scheme = _scheme(text)
    if scheme is None:
        return os.path.abspath(os.path.expanduser(text))
    if scheme == "file":
        return os.path.abspath(urlsplit(text).path or "/")
    if scheme not in OBJECT_SCHEMES:
        raise ConfigError(f"storage {text!r}: unsupported scheme {scheme!r}; use a local path, file://, or one "
                          f"of {', '.join(s + '://' for s in OBJECT_SCHEMES)}")
    return text.rstrip("/") if not text.endswith(":///") else text


def open_store(root: str | os.PathLike[str]) -> Store:
    """The :class:`~mediaq.runtime.storage.base.Store` for an output root (see the module doc)."""
    normalized = normalize_root(root)
    if _scheme(normalized) is None:
        from mediaq.runtime.storage.local import LocalStore

        return LocalStore(normalized)
    from mediaq.runtime.storage.objects import ObjectStore

    return ObjectStore(normalized)


@contextlib.contextmanager
def open_source(location: str | os.PathLike[str], *, max_bytes: int = MAX_SOURCE_BYTES) -> Iterator[BinaryIO]:
    """The source image at ``location`` opened for reading (a local file, or an object whose first
    64 KiB are read first: its header is checked before the rest is downloaded). Errors are job
    errors with stable codes (``missing_file``, ``unreadable``, ``too_large``, ``storage_denied``,
    transient ``read_error``/``storage_io_error``)."""
    from mediaq.pure import imaging

    if not isinstance(location, (str, os.PathLike)) or not os.fspath(location) or "\x00" in os.fspath(location):
        raise PermanentJobError("bad_argument", f"source_path={location!r} must be a non-empty path or URL",
                                argument="source_path", value=repr(location)[:200])
    text = os.fspath(location)
    scheme = _scheme(text)
    if scheme is None or scheme == "file":
        with imaging.open_source(urlsplit(text).path if scheme == "file" else text, max_bytes=max_bytes) as f:
            yield f
        return
    if scheme not in OBJECT_SCHEMES:
        raise PermanentJobError("bad_argument", f"source {text!r}: unsupported scheme {scheme!r}",
                                argument="source_path", value=text[:200])
    from mediaq.runtime.storage.objects import open_object

    with open_object(text, max_bytes=max_bytes) as f:
        yield f  # type: ignore[misc]


def read_source(location: str | os.PathLike[str], *, max_bytes: int = MAX_SOURCE_BYTES) -> bytes:
    """The bytes of the source at ``location`` (see :func:`open_source`)."""
    with open_source(location, max_bytes=max_bytes) as f:
        return f.read()


def source_name(location: str | os.PathLike[str]) -> str:
    """The file name of a path or URL (``s3://b/x/a.jpg`` -> ``a.jpg``)."""
    text = os.fspath(location)
    return Path(urlsplit(text).path if _scheme(text) else text).name
