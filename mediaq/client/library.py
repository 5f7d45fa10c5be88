"""An image library as a DataFrame: ``image_id`` and ``source_path`` for every image under a folder.

An image id is the file's path under the folder, extension included, with ``/`` as ``__``
(``2024/IMG_1.jpg`` -> ``2024__IMG_1.jpg``): one id per file (``a.gif`` and ``a.webp`` are two
images), the same on every run. A path that is no valid image id (spaces, accents, over 128
characters: see :func:`~mediaq.runtime.storage.validate_image_id`) becomes a safe id plus 10 hex digits
of a hash of the path (``Été 2024.jpg`` -> ``t_2024.jpg-3f1c...``). Two files that would still share
an id (``a__b.jpg`` and ``a/b.jpg``) are a :class:`~mediaq.errors.ConfigError` naming both.

>>> image_frame("data").head(2).to_dict("records")     # doctest: +SKIP
[{'image_id': 'astronaut.jpg', 'source_path': '/.../data/astronaut.jpg'}, ...]
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mediaq.errors import ConfigError

__all__ = ["IMAGE_SUFFIXES", "file_image_id", "image_frame", "plain_id"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def image_frame(folder: Any, pattern: str = "**/*") -> pd.DataFrame:
    """``image_id``, ``source_path`` for every image file under ``folder`` (sorted, recursive)."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a folder of images")
    paths = sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    ids: dict[str, str] = {}
    for p in paths:
        rel = p.relative_to(root).as_posix()
        image_id = file_image_id(rel)
        if image_id in ids:
            raise ConfigError(f"{ids[image_id]!r} and {rel!r} under {str(root)!r} would both be image id {image_id!r}: "
                              "rename one, or pass reindex a DataFrame with ids of your own")
        ids[image_id] = rel
    return pd.DataFrame({"image_id": list(ids), "source_path": [str(p.absolute()) for p in paths]})


def file_image_id(relative_path: str) -> str:
    """The image id of a file from its POSIX path under the library folder (see the module doc).

    >>> file_image_id("2024/IMG_1.jpg"), file_image_id("a.gif")
    ('2024__IMG_1.jpg', 'a.gif')
    """
    import hashlib
    import re

    from mediaq.runtime.storage import IMAGE_ID_PATTERN

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
