"""The output layout, the one place it is written down: ``{root}/{folder}/{image_id}.{ext}``.

The folder of each output kind is in :data:`FOLDERS`; a key is ``{folder}/{image_id}.{ext}``, the same
under a local folder and under an object-store prefix. Image ids are checked here, so a key can never
name another folder, an absolute path, or anything outside its root.

>>> output_key("thumbnail", 42, "jpg"), check_key("medium/a.b-1.webp")
('thumbs/42.jpg', ('medium', 'a.b-1.webp'))
"""

from __future__ import annotations

import re
from typing import Any

from mediaq.errors import PermanentJobError

__all__ = ["FOLDERS", "IMAGE_ID_PATTERN", "check_folder", "check_key", "file_name", "output_key", "validate_image_id"]

#: The folder of each output kind under a storage root.
FOLDERS = {"thumbnail": "thumbs", "medium": "medium", "large": "large"}
IMAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FOLDER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_EXT_PATTERN = re.compile(r"[a-z0-9]{1,8}")


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


def check_folder(folder: Any) -> str:
    if not isinstance(folder, str) or not FOLDER_PATTERN.fullmatch(folder):
        raise PermanentJobError("bad_argument", f"storage folder {folder!r} must be a simple lowercase name",
                                argument="folder", value=repr(folder))
    return folder


def file_name(image_id: str | int, ext: str) -> str:
    """``{image_id}.{ext}``, both checked."""
    stem = validate_image_id(image_id)
    if not isinstance(ext, str) or not _EXT_PATTERN.fullmatch(ext):
        raise PermanentJobError("bad_argument", f"file extension {ext!r} must be 1 to 8 lowercase letters or digits",
                                argument="ext", value=repr(ext))
    return f"{stem}.{ext}"


def output_key(kind: str, image_id: str | int, ext: str) -> str:
    """The key of output ``kind`` (a key of :data:`FOLDERS`) of ``image_id``."""
    if kind not in FOLDERS:
        raise PermanentJobError("bad_argument", f"output kind {kind!r} is not one of {sorted(FOLDERS)}",
                                argument="kind", value=repr(kind))
    return f"{FOLDERS[kind]}/{file_name(image_id, ext)}"


def check_key(key: Any) -> tuple[str, str]:
    """``(folder, file name)`` of a key ``folder/name.ext`` that stays inside its root, else ``bad_argument``."""
    if not isinstance(key, str) or key.count("/") != 1:
        raise PermanentJobError("bad_argument", f"storage key {key!r} must be 'folder/name.ext'", key=repr(key)[:200])
    folder, name = key.split("/")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        raise PermanentJobError("bad_argument", f"storage key {key!r} has no file extension", key=repr(key)[:200])
    return check_folder(folder), file_name(stem, ext)
