"""Outputs and sources in object stores (``s3://``, ``gs://``, ``az://``, ``memory://``), through obstore.

obstore (Rust's ``object_store`` crate) was measured against fsspec/s3fs on the same S3 server
(``benchmarks/bench_storage.py``): 2.5-3x the requests per second and a fifth of the client CPU per
request, as one wheel with no dependencies (see the README's dependency notes).

* **Never half-written**: an output is one PUT (a completed multipart upload above 5 MB): the object
  does not exist until the upload completes, so there is nothing to sweep after a crash.
* **No key outside the prefix**: keys are checked (:func:`~mediaq.runtime.storage.layout.check_key`)
  and always relative to the store's prefix.
* **The bomb guard before a full download**: :func:`open_object` reads the first 64 KiB (and the
  object's size) in one request; the image header is checked from those bytes, and the rest is
  fetched only when decoding needs it (:class:`RemoteFile`).
* **Errors**: not found -> ``missing_file``; access denied or bad credentials -> ``storage_denied``
  (permanent); throttling, 5xx, timeouts, refused connections -> ``storage_io_error`` (transient,
  retried by the job after obstore's own 3 retries).
* **Credentials** come from the standard places of each service, in the process that talks to it:
  ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_ALLOW_HTTP=true``
  for plain HTTP), instance and container roles, and, when ``boto3`` is installed,
  ``~/.aws/config``/``credentials`` profiles. They never travel in job arguments, results or Redis:
  only URLs do.

>>> store = ObjectStore("memory:///media")
>>> store.write("thumbs/a.jpg", b"...")
'memory:///media/thumbs/a.jpg'
>>> store.read("thumbs/a.jpg"), [e.key for batch in store.list() for e in batch]
(b'...', ['thumbs/a.jpg'])
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mediaq.errors import JobFailure, PermanentJobError, TransientJobError
from mediaq.runtime.storage.base import Entry, Store
from mediaq.runtime.storage.layout import check_key

__all__ = ["HEADER_BYTES", "ObjectStore", "RemoteFile", "open_object", "split_url"]

#: bytes read first from a source object: enough for the header of every format we read
HEADER_BYTES = 64 * 1024
_TIMEOUT = "30s"
_CONNECT_TIMEOUT = "5s"
_RETRIES = 3
_RETRY_TIMEOUT = dt.timedelta(seconds=20)


def split_url(url: str) -> tuple[str, str]:
    """``(store root, key)`` of an object URL: the bucket (container, account) and the path in it.

    >>> split_url("s3://bucket/originals/a.jpg"), split_url("memory:///media/x.png")
    (('s3://bucket', 'originals/a.jpg'), ('memory:///', 'media/x.png'))
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = parts.path.lstrip("/")
    if scheme == "memory":
        return "memory:///", path
    if scheme in ("az", "azure", "abfs", "abfss", "adl") and not parts.netloc.count("@"):
        container, _, rest = path.partition("/")  # az://account/container/path
        return f"{scheme}://{parts.netloc}/{container}", rest
    return f"{scheme}://{parts.netloc}", path


_CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")


def _client(root: str) -> Any:
    """One obstore client per store root, process and credentials environment (pool processes make their own)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CREDENTIAL_PREFIXES)))
    return _cached_client(root, env, os.environ.get("HOME", ""))


@functools.lru_cache(maxsize=64)
def _cached_client(root: str, env: tuple[tuple[str, str], ...], home: str) -> Any:
    import obstore.store

    if root == "memory:///":
        return _memory_store()
    options: dict[str, Any] = {"timeout": _TIMEOUT, "connect_timeout": _CONNECT_TIMEOUT}
    values = dict(env)
    endpoint = values.get("AWS_ENDPOINT_URL_S3") or values.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://") or values.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes"):
        options["allow_http"] = True  # an S3-compatible server on plain HTTP (explicit options drop the env's)
    kwargs: dict[str, Any] = {
        "client_options": options,
        "retry_config": {"max_retries": _RETRIES, "retry_timeout": _RETRY_TIMEOUT},
    }
    if root.startswith(("s3://", "s3a://")):
        provider = _boto3_profile_credentials()
        if provider is not None:
            kwargs["credential_provider"] = provider
    return obstore.store.from_url(root, **kwargs)


@functools.lru_cache(maxsize=1)
def _memory_store() -> Any:
    """The process's in-memory store (``memory://``, for tests: it is not shared between processes)."""
    import obstore.store

    return obstore.store.MemoryStore()


def _boto3_profile_credentials() -> Any:
    """boto3's credential chain (config files, SSO, profiles) when there are no ``AWS_*`` keys in the
    environment but an AWS config exists and boto3 is installed; else ``None`` (obstore's own chain:
    environment, web identity, container and instance roles)."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    home = Path(os.environ.get("HOME", "~")).expanduser()
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE"), os.environ.get("AWS_CONFIG_FILE"),
             home / ".aws" / "credentials", home / ".aws" / "config"]
    if not (os.environ.get("AWS_PROFILE") or any(f and Path(f).is_file() for f in files)):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:  # boto3 missing: obstore's chain only
        return None
    return Boto3CredentialProvider()


def object_error(exc: BaseException, action: str, where: str) -> JobFailure:
    """An obstore (or network) error as a job error with a stable code (see the module doc)."""
    from obstore.exceptions import InvalidPathError, NotFoundError, PermissionDeniedError, UnauthenticatedError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (NotFoundError, FileNotFoundError)):
        return PermanentJobError("missing_file", f"no such object: {where}", path=where)
    if (isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)) or "AccessDenied" in text
            or " 403 " in text):
        return PermanentJobError("storage_denied", f"cannot {action} {where}: access denied ({text}); check the "
                                 "credentials in this process's environment", path=where)
    if isinstance(exc, InvalidPathError):
        return PermanentJobError("bad_argument", f"cannot {action} {where}: {text}", path=where)
    return TransientJobError("storage_io_error", f"{action} {where} failed: {text}", path=where)


class ObjectStore(Store):
    """Outputs under an object-store prefix (``s3://bucket/prefix``, ``gs://``, ``az://``, ``memory://``)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") if not root.endswith(":///") else root
        self._base, prefix = split_url(self.root)
        self._prefix = prefix.strip("/")

    def _path(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    @property
    def _client(self) -> Any:
        return _client(self._base)

    def location(self, key: str) -> str:
        folder, name = check_key(key)
        return f"{self.root.rstrip('/')}/{folder}/{name}" if not self.root.endswith(":///") else f"{self.root}{key}"

    def write(self, key: str, data: bytes) -> str:
        import obstore

        check_key(key)
        where = self.location(key)
        try:
            obstore.put(self._client, self._path(key), data)
        except Exception as exc:
            raise object_error(exc, "write", where) from None
        return where

    def remove(self, key: str) -> bool:
        import obstore
        from obstore.exceptions import NotFoundError

        check_key(key)
        where = self.location(key)
        try:
            obstore.head(self._client, self._path(key))
        except (NotFoundError, FileNotFoundError):  # obstore raises the builtin for a 404
            return False
        except Exception as exc:
            raise object_error(exc, "remove", where) from None
        try:
            obstore.delete(self._client, self._path(key))
        except Exception as exc:
            raise object_error(exc, "remove", where) from None
        return True

    def read(self, key: str) -> bytes:
        import obstore

        check_key(key)
        try:
            return bytes(obstore.get(self._client, self._path(key)).bytes())
        except Exception as exc:
            raise object_error(exc, "read", self.location(key)) from None

    def list(self, prefix: str = "") -> Iterator[list[Entry]]:
        """Every object under the prefix whose key starts with ``prefix``, 1,000 per request."""
        import obstore

        start = len(self._prefix) + 1 if self._prefix else 0
        wanted = self._path(prefix) if prefix else (self._prefix or None)
        try:
            for batch in obstore.list(self._client, prefix=wanted, chunk_size=1000):
                yield [Entry(m["path"][start:], int(m["size"])) for m in batch
                       if m["path"][start:].startswith(prefix)]
        except Exception as exc:
            raise object_error(exc, "list", self.root) from None


class RemoteFile(io.RawIOBase):
    """A seekable file over one object: the first bytes (already fetched) are served from memory, and
    the rest is fetched in one request the first time a read goes beyond them."""

    def __init__(self, client: Any, path: str, where: str, head: bytes, size: int) -> None:
        super().__init__()
        self._client, self._path, self.name = client, path, where
        self._data = head
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        end = min(self._size, self._pos + want)
        if end > len(self._data):
            self._fetch_rest()
        chunk = self._data[self._pos:end]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def _fetch_rest(self) -> None:
        import obstore

        try:
            rest = bytes(obstore.get_range(self._client, self._path, start=len(self._data), end=self._size))
        except Exception as exc:
            raise object_error(exc, "read", self.name) from None
        self._data += rest

    @property
    def fetched(self) -> int:
        """Bytes transferred so far."""
        return len(self._data)


def open_object(url: str, *, max_bytes: int) -> RemoteFile:
    """A :class:`RemoteFile` for the object at ``url``, after one request for its first
    :data:`HEADER_BYTES` and its size; ``too_large`` beyond ``max_bytes``, ``missing_file`` if absent."""
    import obstore

    base, path = split_url(url)
    if not path or path.endswith("/"):
        raise PermanentJobError("bad_argument", f"source {url!r} names no object", path=url)
    client = _client(base)
    try:
        result = obstore.get(client, path, options={"range": (0, HEADER_BYTES)})
        head = bytes(result.bytes())
        size = int(result.meta["size"])
    except Exception as exc:
        if " 416 " not in str(exc):
            raise object_error(exc, "read", url) from None
        head, size = b"", _size(client, path, url)  # a range of an empty object is "not satisfiable"
    if size > max_bytes:
        raise PermanentJobError("too_large", f"{url} is {size} bytes, more than the {max_bytes} allowed",
                                path=url, bytes=size, limit=max_bytes)
    return RemoteFile(client, path, url, head, size)


def _size(client: Any, path: str, where: str) -> int:
    import obstore

    try:
        return int(obstore.head(client, path)["size"])
    except Exception as exc:
        raise object_error(exc, "read", where) from None
