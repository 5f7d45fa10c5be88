"""Outputs in a local folder: safe names, atomic writes, clear errors (a :class:`~mediaq.runtime.storage.base.Store`).

* **Safe paths**: an image id matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` and holds no ``..``, so it
  can never name another folder or an absolute path; the folder, after resolving symlinks, must
  lie inside the resolved root (a ``thumbs`` symlink pointing elsewhere is refused, ``unsafe_path``).
  Files are then opened relative to that folder's descriptor, with ``O_NOFOLLOW``.
* **Atomic writes**: bytes go to a temporary file in the same folder (``.{name}.{random}.tmp``), are
  fsynced, then ``os.replace``-d over the target: readers see the old file or the new one, never a
  part. Any error removes the temporary file. A process killed mid-write can leave a temporary
  file behind (never a partial target). The writer holds an ``flock`` on its temporary file until
  the rename, so the worker's janitor removes a dead writer's leftovers at once
  (:func:`sweep_abandoned`); :meth:`LocalStore.sweep` does the same by hand. Writes
  never list the folder themselves: with 100k thumbnails that would cost more than the write.
* **Errors**: a full disk (``ENOSPC``, ``EDQUOT``) -> ``storage_full``, a read-only file system
  (``EROFS``) -> ``storage_read_only``, no permission (``EACCES``, ``EPERM``) -> ``storage_denied``,
  all :class:`~mediaq.errors.PermanentJobError`. A full disk is *permanent* on purpose: the job's
  retries come 5 and 10 s later, far too soon for an operator to free space, and each retry would
  decode the image again; failing at once with a clear code lets the batch be re-run when there is
  room. Any other ``OSError`` (EIO, a network file system hiccup) -> transient ``storage_io_error``.

>>> import tempfile
>>> store = LocalStore(tempfile.mkdtemp())
>>> path = store.write("thumbs/img-1.jpg", b"...")
>>> path[len(store.root) + 1:], store.read("thumbs/img-1.jpg")
('thumbs/img-1.jpg', b'...')
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from mediaq.errors import PermanentJobError, TransientJobError
from mediaq.runtime.storage.base import Entry, Store
from mediaq.runtime.storage.layout import FOLDER_PATTERN, check_folder, check_key

__all__ = ["LocalStore", "sweep_abandoned"]

_TMP_SUFFIX = ".tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalStore(Store):
    """Outputs under a local folder. Cheap to build; keeps no open files."""

    def __init__(self, root: str | os.PathLike[str], *, stale_after: float = 2.0, fsync_dir: bool = False):
        #: the root as given (absolute, as text); outputs are checked against its resolved form
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        #: :meth:`sweep` removes unlocked temporary files older than this (seconds)
        self.stale_after = stale_after
        #: also fsync the folder after the rename (survives power loss; costs a journal commit per file)
        self.fsync_dir = fsync_dir

    # -- names ------------------------------------------------------------------------------------
    def location(self, key: str) -> str:
        """The absolute path of ``key`` (validated; touches no file).

        >>> LocalStore("/srv/media").location("thumbs/42.jpg")
        '/srv/media/thumbs/42.jpg'
        """
        folder, name = check_key(key)
        return os.path.join(self.root, folder, name)

    def folder(self, folder: str) -> Path:
        """The resolved folder, created if missing; ``unsafe_path`` if it resolves outside the root."""
        name = check_folder(folder)
        root = Path(self.root)
        try:
            os.makedirs(self.root, exist_ok=True)
            real_root = os.path.realpath(self.root)
            wanted = os.path.join(real_root, name)
            try:
                os.mkdir(wanted, 0o755)
            except FileExistsError:
                pass
            real = os.path.realpath(wanted)
        except OSError as exc:
            raise _storage_error(exc, root / name) from None
        if os.path.commonpath([real_root, real]) != real_root:
            raise PermanentJobError("unsafe_path", f"{root / name} resolves to {real}, outside the storage "
                                    f"root {real_root}; refusing to write there", path=str(root / name))
        if not os.path.isdir(real):
            raise PermanentJobError("unsafe_path", f"{root / name} is not a folder", path=str(root / name))
        return Path(real)

    # -- writing ----------------------------------------------------------------------------------
    def write(self, key: str, data: bytes) -> str:
        """Atomically make ``{root}/{key}`` hold ``data``; returns its path.

        Rewriting the same bytes gives the same file (same name, same content).
        """
        folder, name = check_key(key)
        target = Path(self.root, folder, name)
        dir_fd = self._open_folder(folder)
        tmp = f".{name}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
            try:
                _hold(fd)  # until renamed: a sweeper tells a dead writer's file by its free lock
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                tmp = ""
            finally:
                os.close(fd)
            if self.fsync_dir:
                os.fsync(dir_fd)
        except OSError as exc:
            raise _storage_error(exc, target) from None
        finally:
            if tmp:
                _unlink_quietly(tmp, dir_fd)
            os.close(dir_fd)
        return str(target)

    def remove(self, key: str) -> bool:
        """Delete one output if it exists (a stale variant); True if a file was removed."""
        folder, name = check_key(key)
        dir_fd = self._open_folder(folder)
        try:
            os.unlink(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(exc, Path(self.root, folder, name)) from None
        finally:
            os.close(dir_fd)

    def read(self, key: str) -> bytes:
        """The bytes of ``{root}/{key}`` (opened relative to its folder, without following links)."""
        folder, name = check_key(key)
        path = Path(self.root, folder, name)
        try:
            dir_fd = os.open(Path(self.root, folder), _DIR_FLAGS)
        except OSError as exc:
            raise _read_error(exc, path) from None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as f:
                return f.read()
        except OSError as exc:
            raise _read_error(exc, path) from None
        finally:
            os.close(dir_fd)

    def list(self, prefix: str = "") -> Iterator[list[Entry]]:
        """Every file under the root whose relative path starts with ``prefix`` (sorted), 1,000 at a time;
        hidden files (temporary ones included) are left out."""
        batch: list[Entry] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
                batch.append(Entry(key, size))
                if len(batch) >= 1000:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def sweep(self, min_age: float | None = None) -> list[str]:
        """Remove temporary files left by dead writers in every folder of the root; returns them.

        A file is removed when it is older than ``min_age`` seconds (default ``stale_after``) and
        no live writer holds its lock (see :func:`sweep_abandoned`).
        """
        return [str(p) for p in sweep_abandoned(self.root, min_age=self.stale_after if min_age is None else min_age)]

    # -- internals --------------------------------------------------------------------------------
    def _open_folder(self, folder: str) -> int:
        real = self.folder(folder)
        try:
            return os.open(real, _DIR_FLAGS)
        except OSError as exc:
            raise _storage_error(exc, real) from None


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def _hold(fd: int) -> None:
    """Lock a temporary file while it is written (see :func:`sweep_abandoned`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no lock support (some network file systems): the age rule still applies
        pass


def sweep_abandoned(root: str | os.PathLike[str], *, min_age: float = 2.0,
                    folders: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files (``.<name>.<random>.tmp``) that no live writer holds, in every folder
    of the storage root (or only ``folders``); returns them. Workers run it at start and after a death
    (:mod:`mediaq.runtime.recovery`).

    :meth:`Storage.write` holds an exclusive ``flock`` on its temporary file from the moment it
    creates it until it has renamed it, so a temporary file whose lock can be taken belongs to a
    writer that died (the kernel drops the locks of a dead process); it is unlinked while we hold
    that lock. ``min_age`` (seconds since the last change) covers the instant between creating the
    file and locking it.

    >>> import tempfile
    >>> sweep_abandoned(tempfile.mkdtemp())
    []
    """
    base = Path(root)
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    limit = time.time() - min_age
    subs = [base / f for f in folders] if folders is not None else sorted(base.iterdir())
    for sub in subs:
        if not FOLDER_PATTERN.fullmatch(sub.name) or sub.is_symlink() or not sub.is_dir():
            continue
        try:
            dir_fd = os.open(sub, _DIR_FLAGS)
        except OSError:
            continue
        try:
            with os.scandir(dir_fd) as entries:
                names = [e.name for e in entries if _is_temp(e.name)]
            for name in names:
                if _remove_if_abandoned(dir_fd, name, limit):
                    removed.append(sub / name)
        finally:
            os.close(dir_fd)
    return removed


def _remove_if_abandoned(dir_fd: int, name: str, limit: float) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime > limit:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live writer
            return False
        try:
            os.unlink(name, dir_fd=dir_fd)  # while holding the lock
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


def _unlink_quietly(name: str, dir_fd: int | None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _read_error(exc: OSError, path: Path) -> Exception:
    where = str(path)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PermanentJobError("missing_file", f"no such file: {where}", path=where)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermanentJobError("storage_denied", f"cannot read {where}: permission denied", path=where,
                                 errno=exc.errno)
    if exc.errno == errno.ELOOP:
        return PermanentJobError("unsafe_path", f"cannot read {where}: it is a symbolic link", path=where)
    return TransientJobError("storage_io_error", f"reading {where} failed: {exc}", path=where, errno=exc.errno)


def _storage_error(exc: OSError, path: Path) -> Exception:
    where = str(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PermanentJobError("storage_full", f"no space left to write {where}: free space, then re-run the "
                                 "failed jobs", path=where, errno=exc.errno)
    if exc.errno == errno.EROFS:
        return PermanentJobError("storage_read_only", f"cannot write {where}: the file system is read-only",
                                 path=where, errno=exc.errno)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermanentJobError("storage_denied", f"cannot write {where}: permission denied", path=where,
                                 errno=exc.errno)
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
        return PermanentJobError("unsafe_path", f"cannot write {where}: {exc.strerror}", path=where,
                                 errno=exc.errno)
    return TransientJobError("storage_io_error", f"writing {where} failed: {exc}", path=where, errno=exc.errno)
