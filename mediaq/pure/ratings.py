"""Bayesian rating math, as pure functions over pandas/numpy (no arq, no Redis, no database).

The seed's formula for an image with ``n`` ratings of mean ``r``::

    bayesian = (C*m + n*r) / (C + n)        and 0 for an image with no ratings

where the prior is ``C`` = ratings per rated image (all ratings / distinct rated images) and ``m`` =
the global mean rating. Pass another ``C``/``m`` to experiment with other priors.

>>> import pandas as pd
>>> df = pd.DataFrame({"image_id": ["a", "a", "b"], "user_id": [1, 2, 1], "score": [10, 8, 3]})
>>> prior(df)
(1.5, 7.0)
>>> bayesian_ratings(df, images=["a", "b", "c"])["bayesian"].round(3).to_dict()
{'a': 8.143, 'b': 5.4, 'c': 0.0}
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["MAX_SCORE", "MIN_SCORE", "bayesian", "bayesian_ratings", "check_prior", "prior"]

MIN_SCORE = 1
MAX_SCORE = 10


def prior(ratings: pd.DataFrame) -> tuple[float, float]:
    """The seed's prior ``(C, m)`` of a ratings frame (columns ``image_id`` and ``score``).

    ``C`` is the number of ratings per rated image, ``m`` the mean of all scores. With no ratings
    at all the prior is ``(0.0, 0.0)`` (every image then gets 0).

    >>> import pandas as pd
    >>> prior(pd.DataFrame({"image_id": ["x", "x", "y", "z"], "score": [1, 3, 5, 7]}))
    (1.3333333333333333, 4.0)
    """
    n = len(ratings)
    if n == 0:
        return 0.0, 0.0
    images = ratings["image_id"].nunique()
    return float(n / images), float(ratings["score"].mean())


def check_prior(C: float, m: float) -> None:
    """Raise :class:`ValueError` unless ``C`` is a finite number >= 0 and ``m`` a finite number.

    >>> check_prior(-1, 5)
    Traceback (most recent call last):
    ...
    ValueError: prior C=-1 is invalid: expected a finite number >= 0 (ratings per rated image)
    """
    if not (isinstance(C, (int, float, np.number)) and np.isfinite(C) and C >= 0):
        raise ValueError(f"prior C={C!r} is invalid: expected a finite number >= 0 (ratings per rated image)")
    if not (isinstance(m, (int, float, np.number)) and np.isfinite(m)):
        raise ValueError(f"prior m={m!r} is invalid: expected a finite number (the mean score)")


def bayesian(count: np.ndarray | pd.Series | float, mean: np.ndarray | pd.Series | float, C: float, m: float):
    """The formula ``(C*m + n*r) / (C + n)``, elementwise; 0 where ``count`` is 0 (``mean`` may be NaN there).

    >>> bayesian(2, 9.0, C=1.5, m=7.0)
    8.142857142857142
    >>> bayesian(0, float("nan"), C=1.5, m=7.0)
    0.0
    """
    n = np.asarray(count, dtype="float64")
    r = np.asarray(mean, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n > 0, (C * m + n * np.where(n > 0, r, 0.0)) / (C + n), 0.0)
    if isinstance(count, pd.Series):
        return pd.Series(value, index=count.index, name="bayesian")
    return float(value) if value.ndim == 0 else value


def bayesian_ratings(
    ratings: pd.DataFrame,
    C: float | None = None,
    m: float | None = None,
    images: Iterable[object] | None = None,
) -> pd.DataFrame:
    """Per-image ``count``, ``mean`` and ``bayesian`` rating, indexed by ``image_id``.

    ``ratings`` needs columns ``image_id`` and ``score`` (other columns are ignored). ``C`` and ``m``
    default to :func:`prior` of ``ratings``; pass your own to try another prior. ``images`` adds
    images with no ratings (count 0, mean NaN, bayesian 0) and restricts the result to those ids,
    in that order; without it the result has every rated image (in order of first appearance).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"image_id": ["a", "a", "b"], "score": [10, 8, 3]})
    >>> bayesian_ratings(df, C=0, m=0).loc["a", "bayesian"]   # no prior: the plain mean
    np.float64(9.0)
    """
    default_C, default_m = prior(ratings) if C is None or m is None else (0.0, 0.0)
    C = default_C if C is None else C
    m = default_m if m is None else m
    check_prior(C, m)
    C, m = float(C), float(m)
    grouped = ratings.groupby("image_id", sort=False, observed=True)["score"]
    out = pd.DataFrame({"count": grouped.count(), "sum": grouped.sum()})
    if images is not None:
        ids = pd.Index(list(images), name="image_id")
        out = out.reindex(ids)
        out["count"] = out["count"].fillna(0)
    out["count"] = out["count"].astype("int64")
    total = out.pop("sum").astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean"] = total / out["count"].where(out["count"] > 0)
        out["bayesian"] = ((C * m + total) / (C + out["count"])).where(out["count"] > 0, 0.0)
    out.index.name = "image_id"
    return out
