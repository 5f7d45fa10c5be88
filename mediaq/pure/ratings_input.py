"""Ratings input checks: every bad row is named, and nothing is written when any is bad.

One rule for every way ratings come in (a DataFrame, a CSV, a list of ids):

* ``image_id``: text, kept exactly as written (``"007"`` is not ``"7"``), 1..255 characters without
  control characters (NUL, tab, newline...); an integer becomes its digits. A float is refused: ``31.0``
  could be ``"31"`` or ``"31.0"`` (pandas makes floats of integer columns with a gap), and so is a bool;
* ``user_id``: an integer (``7``, ``7.0`` or ``"7"``), not a bool;
* ``score``: a number on the :class:`~mediaq.pure.ratings.RatingScale` (the seed's 1..10 integers by
  default), not a bool.

``columns`` renames the input's columns first (``{"movieId": "image_id", "userId": "user_id",
"rating": "score"}`` for MovieLens); other columns (a timestamp) are ignored.

>>> import pandas as pd
>>> validate_ratings(pd.DataFrame({"image_id": [7], "user_id": [1.0], "score": [9]})).dtypes.to_dict()
{'image_id': dtype('O'), 'user_id': dtype('int64'), 'score': dtype('int64')}
>>> clean_ids([1, "a"])
['1', 'a']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from mediaq.errors import ConfigError, InvalidRatingsError
from mediaq.pure.ratings import SEED_SCALE, RatingScale

__all__ = ["RATING_COLUMNS", "clean_ids", "validate_ratings"]

RATING_COLUMNS = ("image_id", "user_id", "score")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_ratings(frame: pd.DataFrame, *, columns: Mapping[str, str] | None = None,
                     scale: RatingScale | Any = SEED_SCALE, duplicates: str = "error",
                     lines: bool = False) -> pd.DataFrame:
    """The rows of ``frame`` as clean columns (``image_id`` str, ``user_id`` int64, ``score`` int64 on
    an integer scale, else float64), or :class:`InvalidRatingsError` naming every bad row.
    ``lines``: index labels are CSV line numbers."""
    if duplicates not in ("error", "last"):
        raise ConfigError(f"duplicates={duplicates!r}: expected 'error' or 'last'")
    scale = RatingScale.parse(scale)
    if columns:
        frame = frame.rename(columns=dict(columns))
    missing = [c for c in RATING_COLUMNS if c not in frame.columns]
    if missing:
        hint = f" after renaming {dict(columns)}" if columns else " (pass columns={'yours': 'image_id', ...})"
        raise InvalidRatingsError(f"ratings need columns image_id, user_id, score; missing {missing}{hint} "
                                  f"(got {list(frame.columns)})")
    raw = frame[list(RATING_COLUMNS)]
    image_id = raw["image_id"].map(_id_text).astype(object)
    _reject(raw, image_id.isna(), "image_id must be text or an integer (not missing, a float or a bool: read a "
            "CSV with dtype=str, or use RatingsStore.load_csv, to keep ids exactly as written)", lines)
    text = image_id.astype(str)
    bad_text = ~text.str.len().between(1, 255) | text.str.contains(_CONTROL)
    _reject(raw, bad_text, "image_id must be 1 to 255 characters without control characters", lines)
    user = _numbers(raw["user_id"])
    bad_user = user.isna() | (user != np.floor(user)) | (user.abs() >= 2**63)
    _reject(raw, bad_user, "user_id must be an integer", lines)
    score = _numbers(raw["score"])
    _reject(raw, scale.bad(score), f"score must be {scale}", lines)
    clean = pd.DataFrame({"image_id": image_id, "user_id": user.astype("int64"),
                          "score": score.astype("int64" if scale.integral else "float64")}, index=raw.index)
    dup = clean.duplicated(["image_id", "user_id"], keep=False)
    if dup.any():
        if duplicates == "error":
            _reject(raw, dup, "the same (image_id, user_id) appears more than once "
                    "(pass duplicates='last' to keep the last one)", lines)
        clean = clean.drop_duplicates(["image_id", "user_id"], keep="last")
    return clean


def _numbers(column: pd.Series) -> pd.Series:
    """Numbers as float64; bools and anything that is no number become NaN (so they are refused)."""
    if pd.api.types.is_bool_dtype(column):
        return pd.Series(np.nan, index=column.index)
    if column.dtype == object:
        column = column.map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v)
    return pd.to_numeric(column, errors="coerce").astype("float64")


def _reject(raw: pd.DataFrame, bad: pd.Series, reason: str, lines: bool, show: int = 10) -> None:
    if not bad.any():
        return
    rows = raw[bad]
    word = "line" if lines else "row"
    shown = ", ".join(
        f"{word} {label} (image_id={rec[0]!r}, user_id={rec[1]!r}, score={rec[2]!r})"
        for label, rec in zip(rows.index[:show], rows.head(show).itertuples(index=False, name=None), strict=True)
    )
    more = f" and {len(rows) - show} more" if len(rows) > show else ""
    raise InvalidRatingsError(f"{len(rows)} rating row(s) rejected, nothing written: {reason}: {shown}{more}",
                              rows=rows, reason=reason)


def _id_text(value: object) -> Any:
    """An image id as text (exact: no stripping); an integer as its digits; anything else is NaN."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return np.nan
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return np.nan


def clean_ids(image_ids: Iterable[object]) -> list[str]:
    """Image ids as the store keeps them (see the module doc); :class:`ConfigError` for a bad one."""
    if isinstance(image_ids, (str, bytes)):
        raise ConfigError(f"image_ids must be a list of ids, not the single string {image_ids!r}")
    if isinstance(image_ids, list) and _plain_text(image_ids):
        return image_ids  # already text (the usual case): no copy
    out = []
    for value in image_ids:
        text = _id_text(value)
        if not isinstance(text, str) or not text or _CONTROL.search(text):
            raise ConfigError(f"invalid image id {value!r}: expected a non-empty string without control "
                              "characters (or an integer)")
        out.append(text)
    return out


def _plain_text(ids: list[Any]) -> bool:
    """Every id a non-empty ``str`` without control characters, checked in C-speed passes (a regex
    per id cost ~15 ms per 100k ids, on the path of every library recalculation)."""
    if not all(ids) or set(map(type, ids)) - {str}:
        return False
    return not _CONTROL.search("".join(ids))
