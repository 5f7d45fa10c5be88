"""Notebook display helpers: image grids and near-duplicate pairs as self-contained HTML.

Pictures are made as the thumbnail job makes thumbnails (:mod:`mediaq.pure.imaging`, one decoding
path for both) and inlined as base64 ``data:`` URIs, so a saved notebook shows them on GitHub or
nbviewer with no files beside it. Nothing here needs ipywidgets, and IPython is
imported only inside the two functions that build a display object: the HTML builders
(:func:`grid_html`, :func:`pairs_html`) are plain functions that return a string.

>>> html = grid_html(["data/astronaut.jpg", "data/no-such-file.jpg"], columns=2, size=64)
>>> html.count("data:image/jpeg;base64,"), "no-such-file.jpg" in html, "cannot show" in html
(1, True, True)
>>> thumbnail_grid(["data/astronaut.jpg", "data/chelsea.png"], columns=2)   # in a notebook  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html as _html
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mediaq.errors import JobFailure
from mediaq.runtime.storage.layout import FOLDERS, file_name
from mediaq.runtime.storage.urls import open_source, open_store, source_name

if TYPE_CHECKING:
    import pandas as pd
    from IPython.display import HTML

__all__ = ["grid_html", "image_data_uri", "pairs_html", "pairs_side_by_side", "thumbnail_grid"]

PathLike = str | os.PathLike[str]
#: Where :func:`pairs_side_by_side` finds a picture: a storage root (``Settings``, ``Storage``, a folder),
#: a mapping ``image_id -> path`` or a function of the id.
StorageLike = Any

_CELL = "padding:4px;text-align:center;vertical-align:top;border:none"
_CAPTION = "font-size:11px;font-family:monospace;overflow-wrap:anywhere;max-width:{size}px;margin:2px auto 0"
_MISSING = ("display:flex;align-items:center;justify-content:center;width:{size}px;height:{h}px;"
            "background:#f3f3f3;color:#a33;font-size:11px;font-family:monospace;margin:auto")


def image_data_uri(path: PathLike, size: int = 160, quality: int = 85) -> str:
    """A ``data:image/...;base64,...`` URI of the picture at ``path`` fitted within ``size`` x ``size``.

    Made exactly as the thumbnail job makes a thumbnail (:mod:`mediaq.pure.imaging`: first frame,
    upright, sRGB, deep images to 8-bit by the same rule), encoded as JPEG, or PNG when it has
    transparency. A file that cannot be shown raises the job's error
    (:class:`~mediaq.errors.PermanentJobError` with ``missing_file``, ``corrupt_image``...).

    >>> image_data_uri("data/chelsea.png", size=32)[:23]
    'data:image/jpeg;base64,'
    """
    from mediaq.pure import imaging

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} must be an integer >= 1")
    box = (size, size)
    with open_source(path) as f:  # a path or a URL (s3://...), as the jobs read them
        source = imaging.decode(f, [box], name=str(path))
    im = imaging.render(source, box)
    kind = "png" if im.mode in ("LA", "RGBA") else "jpeg"
    data = imaging.encode(im, kind, quality)
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(path: PathLike | None, caption: str | None, size: int) -> str:
    """One picture with its caption; a grey box saying why when it cannot be shown."""
    cap = f'<div style="{_CAPTION.format(size=size)}">{_breakable(caption)}</div>' if caption else ""
    reason = "no file"
    if path is not None:
        try:
            uri = image_data_uri(path, size)
            return f'<img src="{uri}" style="max-width:{size}px;max-height:{size}px" alt="">{cap}'
        except JobFailure as exc:  # a file the thumbnail job could not read either: say why, as it would
            reason = exc.code
    box = _MISSING.format(size=size, h=max(24, size * 2 // 3))
    return f'<div style="{box}">cannot show ({_html.escape(reason)})</div>{cap}'


def _breakable(text: str) -> str:
    """Escaped ``text`` that may wrap after ``_``, ``/`` and ``-`` (ids such as ``2024__edits__IMG_0001``)."""
    return re.sub(r"([_/-]+)", r"\1<wbr>", _html.escape(text))


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN / pd.NA
    except TypeError:  # pd.NA in a boolean context
        return True


def _items(images: Any, path_column: str, caption: Any) -> list[tuple[PathLike | None, str | None]]:
    """``(path, caption)`` pairs from paths, a Series of paths, or a DataFrame."""
    import pandas as pd

    if isinstance(images, pd.DataFrame):
        if path_column not in images.columns:
            raise ValueError(f"the frame has no {path_column!r} column (columns: {list(images.columns)}); "
                             "pass path_column=")
        if caption is None and "image_id" in images.columns:
            caption = "image_id"
        paths = images[path_column].tolist()
        if isinstance(caption, str):
            if caption not in images.columns:
                raise ValueError(f"caption column {caption!r} is not in the frame")
            captions = [None if _is_missing(c) else str(c) for c in images[caption]]
        else:
            captions = [None] * len(paths)
        return [(None if _is_missing(p) else p, c) for p, c in zip(paths, captions, strict=True)]
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    out = []
    for value in images:
        if _is_missing(value):
            out.append((None, None))
        else:
            name = source_name(value) if caption is None else caption(value) if callable(caption) else None
            out.append((value, name))
    return out


def grid_html(
    images: Iterable[PathLike] | pd.DataFrame | pd.Series,
    columns: int = 6,
    size: int = 160,
    *,
    path_column: str = "path",
    caption: str | Callable[[Any], str] | None = None,
    max_images: int = 60,
) -> str:
    """HTML of a table of pictures, ``columns`` to a row, each fitted within ``size`` px.

    ``images``: paths, or a DataFrame with a ``path_column`` (a results frame from
    ``batch.results()``: failed rows have no path and show a grey box). Captions: the ``image_id``
    column of a frame (or the column named by ``caption``), else the file name; ``caption`` may also be a
    function of the path. At most ``max_images`` are drawn; a note says how many were left out.
    """
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns={columns!r} must be an integer >= 1")
    items = _items(images, path_column, caption)
    shown = items[:max_images]
    rows = []
    for start in range(0, len(shown), columns):
        cells = "".join(f'<td style="{_CELL}">{_figure(p, c, size)}</td>' for p, c in shown[start:start + columns])
        rows.append(f"<tr>{cells}</tr>")
    note = ""
    if len(items) > len(shown):
        note = f"<p><small>{len(shown)} of {len(items)} pictures shown (max_images={max_images})</small></p>"
    return f'<table style="border-collapse:collapse;border:none">{"".join(rows)}</table>{note}'


def thumbnail_grid(
    images: Iterable[PathLike] | pd.DataFrame | pd.Series,
    columns: int = 6,
    size: int = 160,
    *,
    path_column: str = "path",
    caption: str | Callable[[Any], str] | None = None,
    max_images: int = 60,
) -> HTML:
    """Show pictures inline as a grid: :func:`grid_html` wrapped in ``IPython.display.HTML``.

    >>> df = await batch.results()                              # doctest: +SKIP
    >>> thumbnail_grid(df[df.status == "complete"], columns=4)  # doctest: +SKIP
    """
    from IPython.display import HTML

    return HTML(grid_html(images, columns, size, path_column=path_column, caption=caption, max_images=max_images))


def _path_finder(storage: StorageLike, folder: str, ext: str) -> Callable[[Any], PathLike | None]:
    if callable(storage) and not isinstance(storage, type):
        return storage
    if isinstance(storage, Mapping):
        return storage.get
    root = storage
    if not isinstance(root, (str, os.PathLike)):
        root = getattr(storage, "storage", None) or getattr(storage, "root", None)  # Settings, Storage
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError("storage must be a folder, Settings, Storage, a mapping image_id -> path or a function, "
                        f"not {type(storage).__name__}")
    store = open_store(root)

    def find(image_id: Any) -> PathLike | None:
        try:
            return store.location(f"{folder}/{file_name(image_id, ext)}")
        except JobFailure:  # an id that names no file in the layout
            return None

    return find


def pairs_html(
    duplicates: pd.DataFrame,
    storage: StorageLike,
    n: int = 10,
    size: int = 160,
    *,
    folder: str = FOLDERS["thumbnail"],
    ext: str = "jpg",
) -> str:
    """HTML of the ``n`` best pairs of ``duplicates`` (columns ``image_id``, ``match_id``, ``score``),
    one pair a row: both pictures and the score. Pictures come from ``storage`` (see :data:`StorageLike`;
    with a root: ``{root}/{folder}/{image_id}.{ext}``, the worker's thumbnails)."""
    missing = {"image_id", "match_id", "score"} - set(duplicates.columns)
    if missing:
        raise ValueError(f"duplicates needs columns image_id, match_id, score; missing {sorted(missing)}")
    find = _path_finder(storage, folder, ext)
    best = duplicates.sort_values("score", ascending=False, kind="stable").head(n)
    rows = []
    for a, b, score in zip(best["image_id"], best["match_id"], best["score"], strict=True):
        left, right = _figure(find(a), str(a), size), _figure(find(b), str(b), size)
        rows.append(f'<tr><td style="{_CELL}">{left}</td><td style="{_CELL}">{right}</td>'
                    f'<td style="{_CELL};vertical-align:middle;font-size:14px"><b>{float(score):.2f}</b></td></tr>')
    head = (f'<tr><th style="{_CELL}">image</th><th style="{_CELL}">near duplicate</th>'
            f'<th style="{_CELL}">score</th></tr>')
    note = f"<p><small>{len(best)} of {len(duplicates)} pairs shown</small></p>" if len(duplicates) > len(best) else ""
    if not rows:
        return "<p>no pairs</p>"
    return f'<table style="border-collapse:collapse;border:none">{head}{"".join(rows)}</table>{note}'


def pairs_side_by_side(
    duplicates: pd.DataFrame,
    storage: StorageLike,
    n: int = 10,
    size: int = 160,
    *,
    folder: str = FOLDERS["thumbnail"],
    ext: str = "jpg",
) -> HTML:
    """Show near-duplicate pairs side by side with their scores (:func:`pairs_html` as ``HTML``).

    >>> dups = await IqdbIndex(client.redis).find_duplicates(90)        # doctest: +SKIP
    >>> pairs_side_by_side(dups, client.settings, n=10)                  # doctest: +SKIP
    """
    from IPython.display import HTML

    return HTML(pairs_html(duplicates, storage, n, size, folder=folder, ext=ext))
