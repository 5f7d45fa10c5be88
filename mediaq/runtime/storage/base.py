"""The storage interface: a root (a local folder or an object-store prefix) and keys under it.

Every job, the janitor's sweep, the display helpers and ``image_frame`` go through a :class:`Store`
(made by :func:`~mediaq.runtime.storage.urls.open_store` from a path or URL). Each backend keeps the
same promises, in its own way:

================================  ==================================  ====================================
promise                           local folder                        object store (S3, GCS, Azure...)
================================  ==================================  ====================================
a file is never half-written      temp file, fsync, rename            one PUT, or a completed multipart
no key outside the root           checked keys, resolved folders      checked keys under the prefix
                                  inside the root, ``O_NOFOLLOW``
a dead writer leaves no litter    ``flock`` + the janitor's sweep     nothing to sweep: no object exists
                                                                      until its PUT completes
errors have stable codes          errno -> code                       the service's answer -> code
================================  ==================================  ====================================

Error codes: missing -> ``missing_file``; no permission -> ``storage_denied``; full disk ->
``storage_full``; read-only -> ``storage_read_only`` (all :class:`~mediaq.errors.PermanentJobError`);
anything passing (EIO, throttling, a 5xx, a timeout) -> :class:`~mediaq.errors.TransientJobError`
``storage_io_error``, which the job's retries cover.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from mediaq.runtime.storage.layout import FOLDERS, output_key

__all__ = ["Entry", "Store"]


@dataclass(frozen=True)
class Entry:
    """One object or file found by :meth:`Store.list`: its key (relative to the listed root) and size."""

    key: str
    size: int


class Store(ABC):
    """Outputs under a root: ``{root}/{folder}/{image_id}.{ext}`` (see :mod:`~mediaq.runtime.storage.layout`)."""

    #: the root as given: an absolute path or a URL
    root: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    # -- names --------------------------------------------------------------------------------------
    @abstractmethod
    def location(self, key: str) -> str:
        """Where ``key`` is, for people and for other hosts: an absolute path or a full URL."""

    def output_location(self, kind: str, image_id: str | int, ext: str) -> str:
        """:meth:`location` of output ``kind`` of ``image_id`` (touches nothing)."""
        return self.location(output_key(kind, image_id, ext))

    # -- outputs --------------------------------------------------------------------------------------
    @abstractmethod
    def write(self, key: str, data: bytes) -> str:
        """Make ``key`` hold ``data``, whole or not at all; returns its :meth:`location`.
        Rewriting the same bytes gives the same object (jobs are idempotent)."""

    @abstractmethod
    def remove(self, key: str) -> bool:
        """Delete ``key`` if it exists; whether something was deleted (``None``-free: False if unknown)."""

    def write_output(self, kind: str, image_id: str | int, ext: str, data: bytes) -> str:
        return self.write(output_key(kind, image_id, ext), data)

    def remove_output(self, kind: str, image_id: str | int, ext: str) -> bool:
        return self.remove(output_key(kind, image_id, ext))

    # -- reading and listing --------------------------------------------------------------------------
    @abstractmethod
    def read(self, key: str) -> bytes:
        """The bytes at ``key`` (``missing_file`` if there are none)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[list[Entry]]:
        """Every object or file under the root (whose key starts with ``prefix``), in batches."""

    # -- housekeeping --------------------------------------------------------------------------------
    def sweep(self, min_age: float = 2.0) -> list[str]:
        """Remove what dead writers left behind; returns what was removed (object stores: nothing to do)."""
        return []

    @property
    def folders(self) -> list[str]:
        return sorted(set(FOLDERS.values()))
