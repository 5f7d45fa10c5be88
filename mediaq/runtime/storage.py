"""Output files under a storage root: safe names, atomic writes, clear errors.

Layout, the one place it is written down: ``{root}/{folder}/{image_id}.{ext}``, the folder of each
output in :data:`FOLDERS` (``thumbs``, ``medium``, ``large``); :meth:`Storage.output_path` builds it and
:meth:`Storage.locate` resolves a path relative to the root (what jobs and the display helpers use).

* **Safe paths**: an image id matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` and holds no ``..``, so it
  can never name another folder or an absolute path; the folder, after resolving symlinks, must
  lie inside the resolved root (a ``thumbs`` symlink pointing elsewhere is refused, ``unsafe_path``).
  Files are then opened relative to that folder's descriptor, with ``O_NOFOLLOW``.
* **Atomic writes**: bytes go to a temporary file in the same folder (``.{name}.{random}.tmp``), are
  fsynced, then ``os.replace``-d over the target: readers see the old file or the new one, never a
  part. Any error removes the temporary file. A process killed mid-write can leave a temporary
  file behind (never a partial target). The writer holds an ``flock`` on its temporary file until
  the rename, so the worker's janitor removes a dead writer's leftovers at once
  (:func:`sweep_abandoned`); :meth:`Storage.sweep` does the same by hand. Writes
  never list the folder themselves: with 100k thumbnails that would cost more than the write.
* **Errors**: a full disk (``ENOSPC``, ``EDQUOT``) -> ``storage_full``, a read-only file system
  (``EROFS``) -> ``storage_read_only``, no permission (``EACCES``, ``EPERM``) -> ``storage_denied``,
  all :class:`~mediaq.errors.PermanentJobError`. A full disk is *permanent* on purpose: the job's
  retries come 5 and 10 s later, far too soon for an operator to free space, and each retry would
  decode the image again; failing at once with a clear code lets the batch be re-run when there is
  room. Any other ``OSError`` (EIO, a network file system hiccup) -> transient ``storage_io_error``.

>>> import tempfile
>>> store = Storage(tempfile.mkdtemp())
>>> path = store.write("thumbs", "img-1", "jpg", b"...")
>>> path.relative_to(store.root).as_posix(), path.read_bytes()
('thumbs/img-1.jpg', b'...')
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mediaq.errors import PermanentJobError, TransientJobError

__all__ = ["FOLDERS", "IMAGE_ID_PATTERN", "Storage", "validate_image_id"]

#: The folder of each output kind under a storage root.
FOLDERS = {"thumbnail": "thumbs", "medium": "medium", "large": "large"}
IMAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FOLDER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_EXT_PATTERN = re.compile(r"[a-z0-9]{1,8}")
_TMP_SUFFIX = ".tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def validate_image_id(image_id: Any) -> str:
    """``image_id`` as a safe file name stem (a non-negative int is accepted), else ``bad_argument``.

    >>> validate_image_id("post-123_a.b"), validate_image_id(42)
    ('post-123_a.b', '42')
    >>> validate_image_id("../etc/passwd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mediaq.errors.PermanentJobError: [bad_argument] image_id='../etc/passwd' is not allowed: ...
    """
    if isinstance(image_id, int) and not isinstance(image_id, bool) and image_id >= 0:
        image_id = str(image_id)
    if not isinstance(image_id, str) or not IMAGE_ID_PATTERN.fullmatch(image_id) or ".." in image_id:
        raise PermanentJobError(
            "bad_argument",
            f"image_id={image_id!r} is not allowed: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'",
            argument="image_id", value=repr(image_id)[:200])
    return image_id


class Storage:
    """The storage root of image outputs. Cheap to build; keeps no open files."""

    def __init__(self, root: str | os.PathLike[str], *, stale_after: float = 2.0, fsync_dir: bool = False):
        #: the root as given (absolute); outputs are checked against its resolved form
        self.root = Path(os.path.abspath(root))
        #: :meth:`sweep` removes unlocked temporary files older than this (seconds)
        self.stale_after = stale_after
        #: also fsync the folder after the rename (survives power loss; costs a journal commit per file)
        self.fsync_dir = fsync_dir

    def __repr__(self) -> str:
        return f"Storage({str(self.root)!r})"

    # -- names ------------------------------------------------------------------------------------
    def path(self, folder: str, image_id: str | int, ext: str) -> Path:
        """Where ``image_id`` goes in ``folder`` (validated; touches no file).

        >>> Storage("/srv/media").path("thumbs", "42", "jpg").as_posix()
        '/srv/media/thumbs/42.jpg'
        """
        return self.root / _check_folder(folder) / _file_name(image_id, ext)

    def output_path(self, kind: str, image_id: str | int, ext: str) -> Path:
        """Where output ``kind`` (a key of :data:`FOLDERS`) of ``image_id`` goes (validated; touches no file).

        >>> Storage("/srv/media").output_path("thumbnail", 42, "jpg").as_posix()
        '/srv/media/thumbs/42.jpg'
        """
        if kind not in FOLDERS:
            raise PermanentJobError("bad_argument", f"output kind {kind!r} is not one of {sorted(FOLDERS)}",
                                    argument="kind", value=repr(kind))
        return self.path(FOLDERS[kind], image_id, ext)

    def locate(self, path: str | os.PathLike[str]) -> Path:
        """``path`` as an absolute path: as given when absolute, else under the root.

        >>> Storage("/srv/media").locate("thumbs/42.jpg").as_posix()
        '/srv/media/thumbs/42.jpg'
        """
        given = Path(path)
        return given if given.is_absolute() else self.root / given

    def folder(self, folder: str) -> Path:
        """The resolved folder, created if missing; ``unsafe_path`` if it resolves outside the root."""
        name = _check_folder(folder)
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
            raise _storage_error(exc, self.root / name) from None
        if os.path.commonpath([real_root, real]) != real_root:
            raise PermanentJobError("unsafe_path", f"{self.root / name} resolves to {real}, outside the storage "
                                    f"root {real_root}; refusing to write there", path=str(self.root / name))
        if not os.path.isdir(real):
            raise PermanentJobError("unsafe_path", f"{self.root / name} is not a folder", path=str(self.root / name))
        return Path(real)

    # -- writing ----------------------------------------------------------------------------------
    def write(self, folder: str, image_id: str | int, ext: str, data: bytes) -> Path:
        """Atomically make ``{root}/{folder}/{image_id}.{ext}`` hold ``data``; returns its path.

        Rewriting the same bytes gives the same file (same name, same content).
        """
        name = _file_name(image_id, ext)
        target = self.root / _check_folder(folder) / name
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
        return target

    def remove(self, folder: str, image_id: str | int, ext: str) -> bool:
        """Delete one output if it exists (a stale variant); True if a file was removed."""
        name = _file_name(image_id, ext)
        dir_fd = self._open_folder(folder)
        try:
            os.unlink(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(exc, self.root / folder / name) from None
        finally:
            os.close(dir_fd)

    def sweep(self, older_than: float | None = None) -> list[Path]:
        """Remove temporary files left by dead writers in every folder of the root; returns them.

        A file is removed when it is older than ``older_than`` seconds (default ``stale_after``) and
        no live writer holds its lock (see :func:`sweep_abandoned`).
        """
        return sweep_abandoned(self.root, min_age=self.stale_after if older_than is None else older_than)

    # -- internals --------------------------------------------------------------------------------
    def _open_folder(self, folder: str) -> int:
        real = self.folder(folder)
        try:
            return os.open(real, _DIR_FLAGS)
        except OSError as exc:
            raise _storage_error(exc, real) from None


def _check_folder(folder: Any) -> str:
    if not isinstance(folder, str) or not _FOLDER_PATTERN.fullmatch(folder):
        raise PermanentJobError("bad_argument", f"storage folder {folder!r} must be a simple lowercase name",
                                argument="folder", value=repr(folder))
    return folder


def _file_name(image_id: str | int, ext: str) -> str:
    stem = validate_image_id(image_id)
    if not isinstance(ext, str) or not _EXT_PATTERN.fullmatch(ext):
        raise PermanentJobError("bad_argument", f"file extension {ext!r} must be 1 to 8 lowercase letters or digits",
                                argument="ext", value=repr(ext))
    return f"{stem}.{ext}"


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
        if not _FOLDER_PATTERN.fullmatch(sub.name) or sub.is_symlink() or not sub.is_dir():
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
