"""Make ``data/ratings.csv`` and ``data/movielens_sample.csv``: small, realistic ratings samples,
deterministically from a seed.

Images: the sample photos in this folder (ids = their file names, as ``mediaq.image_frame`` names
them, e.g. ``astronaut.jpg``) plus synthetic ids ``synthetic-0001``... for volume. Each image has a latent
quality; each user rates it ``round(quality + user bias + noise)`` clipped to 1..10. Popularity is
heavy tailed (Pareto): the photos and a few synthetic images get dozens of ratings, many get one.
One user rates an image at most once.

``movielens_sample.csv`` has MovieLens' layout and scale instead (``userId,movieId,rating,timestamp``,
half stars 0.5..5, integer movie ids): the same generator, scores mapped to half stars. It is not
MovieLens data: that cannot be fetched here (no PyPI, Debian or npm package ships it), and the
notebooks and tests need only its shape.

Usage::

    python data/make_ratings.py                       # writes data/ratings.csv and data/movielens_sample.csv
    python data/make_ratings.py -o other.csv --seed 7 --synthetic 200 --users 800

>>> frame = make_ratings(seed=1, synthetic=10, users=50, rows=80)
>>> list(frame.columns), frame["score"].between(1, 10).all()
(['image_id', 'user_id', 'score'], np.True_)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

#: The sample photos present in data/ when this file was written (their file stems are the image ids).
SAMPLE_IMAGES = ("astronaut.jpg", "camera.png", "chelsea.png", "coffee.jpg", "hubble_deep_field.jpg", "retina.jpg",
                 "rocket.jpg")


def make_ratings(seed: int = 2024, synthetic: int = 60, users: int = 150, rows: int = 520) -> pd.DataFrame:
    """A ratings frame (``image_id``, ``user_id``, ``score``) with about ``rows`` rows, sorted."""
    rng = np.random.default_rng(seed)
    ids = list(SAMPLE_IMAGES) + [f"synthetic-{i:04d}" for i in range(1, synthetic + 1)]
    popularity = rng.pareto(1.1, len(ids)) + 0.03
    popularity[: len(SAMPLE_IMAGES)] += popularity.max() / 3  # the real photos are the popular ones
    quality = np.clip(rng.normal(6.0, 1.6, len(ids)), 1.5, 9.5)
    user_bias = rng.normal(0.0, 1.0, users)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[str, int, int]] = []
    for image in range(len(ids)):  # every image gets at least one rating
        user = int(rng.integers(users))
        seen.add((image, user))
        out.append((ids[image], user + 1, _score(rng, quality[image], user_bias[user])))
    p = popularity / popularity.sum()
    while len(out) < rows:
        image, user = int(rng.choice(len(ids), p=p)), int(rng.integers(users))
        if (image, user) in seen:
            continue
        seen.add((image, user))
        out.append((ids[image], user + 1, _score(rng, quality[image], user_bias[user])))
    frame = pd.DataFrame(out, columns=["image_id", "user_id", "score"])
    return frame.sort_values(["image_id", "user_id"]).reset_index(drop=True)


def _score(rng: np.random.Generator, quality: float, bias: float) -> int:
    return int(np.clip(np.rint(quality + bias + rng.normal(0.0, 1.2)), 1, 10))


def make_movielens(seed: int = 1995, movies: int = 120, users: int = 90, rows: int = 600) -> pd.DataFrame:
    """MovieLens-layout ratings (``userId``, ``movieId``, ``rating`` in half stars, ``timestamp``).

    >>> frame = make_movielens(seed=1, movies=10, users=20, rows=40)
    >>> list(frame.columns), sorted(set(frame["rating"]))[:3]
    (['userId', 'movieId', 'rating', 'timestamp'], [0.5, 1.0, 1.5])
    """
    frame = make_ratings(seed, synthetic=movies - len(SAMPLE_IMAGES), users=users, rows=rows)
    movie_ids = {image: 1 + 7 * k for k, image in enumerate(sorted(frame["image_id"].unique()))}
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "userId": frame["user_id"],
        "movieId": frame["image_id"].map(movie_ids),
        "rating": frame["score"] / 2.0,  # 1..10 -> 0.5..5: half stars
        "timestamp": 1_260_000_000 + rng.integers(0, 300_000_000, len(frame)),
    }).sort_values(["userId", "movieId"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=HERE / "ratings.csv")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--synthetic", type=int, default=60)
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--rows", type=int, default=520)
    parser.add_argument("--movielens-out", type=Path, default=HERE / "movielens_sample.csv")
    args = parser.parse_args(argv)
    missing = [s for s in SAMPLE_IMAGES if not (HERE / s).exists()]
    if missing:
        print(f"note: no file in {HERE} for sample image id(s) {missing}")
    frame = make_ratings(args.seed, args.synthetic, args.users, args.rows)
    frame.to_csv(args.out, index=False)
    counts = frame["image_id"].value_counts()
    print(f"wrote {args.out}: {len(frame)} ratings of {len(counts)} images by {frame['user_id'].nunique()} users "
          f"(ratings per image: min {counts.min()}, median {int(counts.median())}, max {counts.max()})")
    movielens = make_movielens()
    movielens.to_csv(args.movielens_out, index=False)
    print(f"wrote {args.movielens_out}: {len(movielens)} ratings of {movielens['movieId'].nunique()} movies in "
          "MovieLens' layout (half stars 0.5..5)")


if __name__ == "__main__":
    main()
