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

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mediaq.errors import ConfigError

__all__ = ["MAX_SCORE", "MIN_SCORE", "MOVIELENS_SCALE", "SEED_SCALE", "RatingScale", "bayesian", "bayesian_ratings",
           "check_prior", "prior"]


@dataclass(frozen=True)
class RatingScale:
    """The scores a ratings database holds: ``low`` to ``high`` in steps of ``step`` from ``low``.

    The seed's scale is 1 to 10 in whole numbers (:data:`SEED_SCALE`, the default everywhere);
    MovieLens uses half stars, 0.5 to 5 (:data:`MOVIELENS_SCALE`). The Bayesian math works in the
    scale's own units (``m`` is a mean score).

    >>> RatingScale.parse("0.5:5:0.5"), str(SEED_SCALE), str(MOVIELENS_SCALE)
    (RatingScale(low=0.5, high=5.0, step=0.5), 'an integer 1..10', '0.5..5 in steps of 0.5')
    >>> MOVIELENS_SCALE.bad(pd.Series([0.5, 3.5, 5.5, 0.25])).tolist()
    [False, False, True, True]
    """

    low: float = 1
    high: float = 10
    step: float = 1

    def __post_init__(self) -> None:
        values = (self.low, self.high, self.step)
        if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values):
            raise ConfigError(f"a rating scale is three finite numbers (low, high, step), got {values!r}")
        count = (self.high - self.low) / self.step if self.step > 0 else 0
        if not (self.low < self.high and self.step > 0 and abs(count - round(count)) < 1e-9):
            raise ConfigError(f"rating scale {values!r}: need low < high and a step > 0 that reaches high from low")
        for name, value in zip(("low", "high", "step"), values, strict=True):  # 1 and 1.0 are one scale
            object.__setattr__(self, name, int(value) if float(value).is_integer() and self.integral else float(value))

    @property
    def integral(self) -> bool:
        """Whole numbers only (then scores are stored and returned as integers)."""
        return float(self.low).is_integer() and float(self.step).is_integer()

    @classmethod
    def parse(cls, value: Any) -> RatingScale:
        """A scale from a :class:`RatingScale`, ``(low, high, step)``, ``(low, high)`` (step 1) or
        ``"low:high:step"``."""
        if isinstance(value, RatingScale):
            return value
        if isinstance(value, str):
            try:
                value = [float(part) for part in value.split(":")]
            except ValueError:
                raise ConfigError(f"a rating scale is 'low:high:step', got {value!r}") from None
        if isinstance(value, (tuple, list)) and len(value) in (2, 3):
            return cls(*value)
        raise ConfigError(f"a rating scale is (low, high, step) or 'low:high:step', got {value!r}")

    def bad(self, scores: pd.Series) -> pd.Series:
        """True where a numeric score is missing, outside ``low..high`` or off the steps."""
        numbers = pd.to_numeric(scores, errors="coerce").astype("float64")
        steps = (numbers - self.low) / self.step
        off_grid = ~np.isclose(steps, np.round(steps), rtol=0, atol=1e-9)
        return numbers.isna() | (numbers < self.low) | (numbers > self.high) | off_grid

    @property
    def text(self) -> str:
        """``"low:high:step"``, as :meth:`parse` reads it (and the ratings database records it)."""
        return f"{self.low}:{self.high}:{self.step}"

    def __str__(self) -> str:
        if self.integral and self.step == 1:
            return f"an integer {self.low:g}..{self.high:g}"
        return f"{self.low:g}..{self.high:g} in steps of {self.step:g}"


#: The seed application's scale: whole numbers 1 to 10.
SEED_SCALE = RatingScale(1, 10, 1)
#: MovieLens' half stars: 0.5 to 5.
MOVIELENS_SCALE = RatingScale(0.5, 5, 0.5)
MIN_SCORE = SEED_SCALE.low
MAX_SCORE = SEED_SCALE.high


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
