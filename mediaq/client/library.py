"""An image library as a DataFrame: ``image_id`` and ``source_path`` for every image under a folder or prefix.

The library is a local folder or an object-store prefix (``s3://bucket/originals/``; see
:mod:`mediaq.runtime.storage.urls`). A source path is then an absolute path or a URL, so the jobs
made from the frame can run on any worker that can read it (for a local folder: the same machine, or
every machine mounting it at the same path; for object storage: any machine with credentials).

An image id is the file's path under the folder or prefix, extension included, with ``/`` as ``__``
(``2024/IMG_1.jpg`` -> ``2024__IMG_1.jpg``): one id per file (``a.gif`` and ``a.webp`` are two
images), the same on every run. A path that is no valid image id (spaces, accents, over 128
characters: see :func:`~mediaq.runtime.storage.layout.validate_image_id`) becomes a safe id plus 10 hex
digits of a hash of the path (``Été 2024.jpg`` -> ``t_2024.jpg-3f1c...``). Two files that would still
share an id (``a__b.jpg`` and ``a/b.jpg``) are a :class:`~mediaq.errors.ConfigError` naming both.

>>> image_frame("data").head(2).to_dict("records")     # doctest: +SKIP
[{'image_id': 'astronaut.jpg', 'source_path': '/.../data/astronaut.jpg'}, ...]
>>> image_frame("s3://library/originals/")             # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

import pandas as pd

from mediaq.errors import ConfigError, JobFailure
from mediaq.runtime.storage.urls import is_url, normalize_root, open_store

__all__ = ["IMAGE_SUFFIXES", "file_image_id", "image_frame", "plain_id"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def image_frame(folder: Any, pattern: str = "**/*") -> pd.DataFrame:
    """``image_id``, ``source_path`` for every image under ``folder`` (a path or a URL), sorted by path.

    ``pattern``: a glob over the path relative to ``folder`` (``**/*`` every file, ``*.jpg`` the top
    level's JPEGs). Image ids: see the module doc.
    """
    location = os.fspath(folder) if isinstance(folder, (str, os.PathLike)) else folder
    if not isinstance(location, str):
        raise ConfigError(f"image_frame takes a folder or a URL, not {type(folder).__name__}")
    root = normalize_root(location)
    if not is_url(root) and not os.path.isdir(root):
        raise ConfigError(f"{location!r} is not a folder of images")
    store = open_store(root)
    match = _glob(pattern).fullmatch
    try:
        keys = [entry.key for batch in store.list() for entry in batch
                if os.path.splitext(entry.key)[1].lower() in IMAGE_SUFFIXES and match(entry.key)]
    except JobFailure as exc:
        raise ConfigError(f"cannot list {location!r}: {exc.message}") from None
    keys.sort()
    ids: dict[str, str] = {}
    for key in keys:
        image_id = file_image_id(key)
        if image_id in ids:
            raise ConfigError(f"{ids[image_id]!r} and {key!r} under {location!r} would both be image id "
                              f"{image_id!r}: rename one, or pass reindex a DataFrame with ids of your own")
        ids[image_id] = key
    return pd.DataFrame({"image_id": list(ids), "source_path": [_join(root, k) for k in keys]})


def file_image_id(relative_path: str) -> str:
    """The image id of a file from its POSIX path under the library folder (see the module doc).

    >>> file_image_id("2024/IMG_1.jpg"), file_image_id("a.gif")
    ('2024__IMG_1.jpg', 'a.gif')
    """
    import hashlib

    from mediaq.runtime.storage.layout import IMAGE_ID_PATTERN

    text = relative_path.replace("/", "__")
    if IMAGE_ID_PATTERN.fullmatch(text) and ".." not in text:
        return text
    safe = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", text)).strip("._-")[:100] or "image"
    return f"{safe}-{hashlib.sha256(relative_path.encode()).hexdigest()[:10]}"


def plain_id(value: Any) -> int | str:
    """An image id as job arguments carry it: integers (numpy's too) stay integers, anything else is text.

    >>> import numpy as np
    >>> plain_id(np.int64(7)), plain_id("coffee.jpg"), plain_id(3.0)
    (7, 'coffee.jpg', '3.0')
    """
    import numpy as np

    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return str(value)


def _join(root: str, key: str) -> str:
    return f"{root}{key}" if root.endswith("/") else f"{root}/{key}"


@lru_cache(maxsize=32)
def _glob(pattern: str) -> re.Pattern[str]:
    """A glob over ``/``-separated relative paths: ``**/`` any folders (or none), ``*`` and ``?`` within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
