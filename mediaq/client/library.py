"""An image library as a DataFrame: ``image_id`` and ``source_path`` for every image under a folder or prefix.

The library is a local folder or an object-store prefix (``s3://bucket/originals/``; see
:mod:`mediaq.runtime.storage.urls`). A source path is then an absolute path or a URL, so the jobs
made from the frame can run on any worker that can read it (for a local folder: the same machine, or
every machine mounting it at the same path; for object storage: any machine with credentials).

>>> image_frame("data").head(2).to_dict("records")     # doctest: +SKIP
[{'image_id': 'astronaut', 'source_path': '/.../data/astronaut.jpg'}, ...]
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

__all__ = ["IMAGE_SUFFIXES", "image_frame"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def image_frame(folder: Any, pattern: str = "**/*") -> pd.DataFrame:
    """``image_id``, ``source_path`` for every image under ``folder`` (a path or a URL), sorted by path.

    ``pattern``: a glob over the path relative to ``folder`` (``**/*`` every file, ``*.jpg`` the top
    level's JPEGs). The image id is that relative path without its suffix, ``/`` written ``__``.
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
    return pd.DataFrame({"image_id": [_image_id(k) for k in keys],
                         "source_path": [_join(root, k) for k in keys]})


def _image_id(relative: str) -> str:
    return os.path.splitext(relative)[0].replace("/", "__")


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
