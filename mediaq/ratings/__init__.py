"""Ratings: Bayesian rating math (pure, :mod:`mediaq.ratings.math`), the SQL store
(:mod:`mediaq.ratings.store`) and the bulk enqueue helper (:mod:`mediaq.ratings.bulk`).

>>> import pandas as pd
>>> from mediaq.ratings import bayesian_ratings
>>> bayesian_ratings(pd.DataFrame({"image_id": ["a", "b"], "score": [9, 5]}))["bayesian"].to_dict()
{'a': 8.0, 'b': 6.0}
"""

from mediaq.ratings.bulk import chunk_job_id, enqueue_library
from mediaq.ratings.math import MAX_SCORE, MIN_SCORE, bayesian, bayesian_ratings, check_prior, prior
from mediaq.ratings.store import InvalidRatingsError, RatingsStore

__all__ = [
    "MAX_SCORE",
    "MIN_SCORE",
    "InvalidRatingsError",
    "RatingsStore",
    "bayesian",
    "bayesian_ratings",
    "check_prior",
    "chunk_job_id",
    "enqueue_library",
    "prior",
]
