"""An image library as a DataFrame: ``image_id`` and ``source_path`` for every image under a folder.

>>> image_frame("data").head(2).to_dict("records")     # doctest: +SKIP
[{'image_id': 'astronaut', 'source_path': '/.../data/astronaut.jpg'}, ...]
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mediaq.errors import ConfigError

__all__ = ["IMAGE_SUFFIXES", "image_frame"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def image_frame(folder: Any, pattern: str = "**/*") -> pd.DataFrame:
    """``image_id``, ``source_path`` for every image file under ``folder`` (sorted, recursive)."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a folder of images")
    paths = sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    ids = [str(p.relative_to(root).with_suffix("")).replace("/", "__") for p in paths]
    return pd.DataFrame({"image_id": ids, "source_path": [str(p.absolute()) for p in paths]})
