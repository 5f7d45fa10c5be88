"""Ratings input checks: every bad row is named, and nothing is written when any is bad.

>>> import pandas as pd
>>> validate_ratings(pd.DataFrame({"image_id": [7], "user_id": [1.0], "score": [9]})).dtypes.to_dict()
{'image_id': dtype('O'), 'user_id': dtype('int64'), 'score': dtype('int64')}
>>> clean_ids([1, "a"])
['1', 'a']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from mediaq.errors import ConfigError, InvalidRatingsError
from mediaq.pure.ratings import MAX_SCORE, MIN_SCORE

__all__ = ["clean_ids", "validate_ratings"]


def validate_ratings(frame: pd.DataFrame, *, duplicates: str = "error", lines: bool = False) -> pd.DataFrame:
    """The rows of ``frame`` as clean columns (``image_id`` str, ``user_id`` int64, ``score`` int64),
    or :class:`InvalidRatingsError` naming every bad row. ``lines``: index labels are CSV line numbers."""
    if duplicates not in ("error", "last"):
        raise ConfigError(f"duplicates={duplicates!r}: expected 'error' or 'last'")
    missing = [c for c in ("image_id", "user_id", "score") if c not in frame.columns]
    if missing:
        raise InvalidRatingsError(f"ratings need columns image_id, user_id, score; missing {missing} "
                                  f"(got {list(frame.columns)})")
    raw = frame[["image_id", "user_id", "score"]]
    image_id = raw["image_id"].map(_id_text, na_action="ignore")
    bad_id = image_id.isna() | (image_id == "") | (image_id.str.len() > 255)
    _reject(raw, bad_id, "image_id must be a non-empty string of at most 255 characters", lines)
    user_num = pd.to_numeric(raw["user_id"], errors="coerce")
    bad_user = user_num.isna() | (user_num != np.floor(user_num)) | (user_num.abs() >= 2**63)
    _reject(raw, bad_user, "user_id must be an integer", lines)
    score_num = pd.to_numeric(raw["score"], errors="coerce")
    bad_score = score_num.isna() | (score_num != np.floor(score_num))
    bad_score |= (score_num < MIN_SCORE) | (score_num > MAX_SCORE)
    _reject(raw, bad_score, f"score must be an integer {MIN_SCORE}..{MAX_SCORE}", lines)
    clean = pd.DataFrame({"image_id": image_id.astype(object), "user_id": user_num.astype("int64"),
                          "score": score_num.astype("int64")}, index=raw.index)
    dup = clean.duplicated(["image_id", "user_id"], keep=False)
    if dup.any():
        if duplicates == "error":
            _reject(raw, dup, "the same (image_id, user_id) appears more than once "
                    "(pass duplicates='last' to keep the last one)", lines)
        clean = clean.drop_duplicates(["image_id", "user_id"], keep="last")
    return clean


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
    """An image id as text (ids are exact: no stripping); integers are accepted; anything else is NaN."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return np.nan
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return np.nan


def clean_ids(image_ids: Iterable[object]) -> list[str]:
    if isinstance(image_ids, (str, bytes)):
        raise ConfigError(f"image_ids must be a list of ids, not the single string {image_ids!r}")
    if isinstance(image_ids, list) and all(type(value) is str and value for value in image_ids):
        return image_ids  # already text (the usual case): no copy
    out = []
    for value in image_ids:
        text = _id_text(value)
        if not isinstance(text, str) or not text:
            raise ConfigError(f"invalid image id {value!r}: expected a non-empty string (or an integer)")
        out.append(text)
    return out
