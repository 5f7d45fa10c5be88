"""Rating math against an independent computation (plain Python loops over the rows, no groupby)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from mediaq.pure.ratings import bayesian, bayesian_ratings, check_prior, prior


def make_ratings(seed: int, images: int = 60, rows: int = 500) -> pd.DataFrame:
    """Skewed random ratings: a few images with many ratings, many with one or two."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.1, images) + 0.05
    image = rng.choice(images, size=rows, p=weights / weights.sum())
    frame = pd.DataFrame({
        "image_id": [f"img{i:03d}" for i in image],
        "user_id": rng.integers(0, 10_000, rows),
        "score": rng.integers(1, 11, rows),
    })
    return frame.drop_duplicates(["image_id", "user_id"]).reset_index(drop=True)


def loop_reference(rows: list[tuple[str, int]], C: float | None = None, m: float | None = None,
                   images: list[str] | None = None) -> dict[str, tuple[int, float, float]]:
    """The seed formula, one row at a time: {image: (count, mean, bayesian)}."""
    sums: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for image, score in rows:
        sums[image] += score
        counts[image] += 1
    if C is None:
        C = len(rows) / len(counts) if counts else 0.0
        m = sum(s for _, s in rows) / len(rows) if rows else 0.0
    out = {}
    for image in images if images is not None else list(counts):
        n = counts.get(image, 0)
        if n == 0:
            out[image] = (0, math.nan, 0.0)
        else:
            r = sums[image] / n
            out[image] = (n, r, (C * m + n * r) / (C + n))
    return out


def as_rows(frame: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(frame["image_id"].tolist(), frame["score"].tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_seed_prior_matches_loop(seed: int) -> None:
    frame = make_ratings(seed)
    got = bayesian_ratings(frame)
    want = loop_reference(as_rows(frame))
    assert list(got.index) == list(want)  # every rated image, in order of first appearance
    for image, (n, r, b) in want.items():
        assert got.loc[image, "count"] == n
        assert got.loc[image, "mean"] == pytest.approx(r, rel=1e-12)
        assert got.loc[image, "bayesian"] == pytest.approx(b, rel=1e-12)
    # the skew is real: some images with one rating, some with many
    assert got["count"].min() == 1 and got["count"].max() >= 20


@pytest.mark.parametrize(("C", "m"), [(0.0, 0.0), (25.0, 5.5), (1.0, 10.0), (3, 1)])
def test_other_priors_match_loop(C: float, m: float) -> None:
    frame = make_ratings(7)
    got = bayesian_ratings(frame, C=C, m=m)
    want = loop_reference(as_rows(frame), C=C, m=m)
    np.testing.assert_allclose(got["bayesian"].to_numpy(), [w[2] for w in want.values()], rtol=1e-12)
    if C == 0:  # no prior: the plain mean
        np.testing.assert_allclose(got["bayesian"], got["mean"], rtol=1e-12)


def test_prior_is_ratings_per_image_and_global_mean() -> None:
    frame = make_ratings(3)
    C, m = prior(frame)
    images = {image for image, _ in as_rows(frame)}
    assert C == pytest.approx(len(frame) / len(images))
    assert m == pytest.approx(sum(frame["score"].tolist()) / len(frame))


def test_unrated_images_get_zero_and_order_follows_images() -> None:
    frame = make_ratings(5)
    rated = list(dict.fromkeys(frame["image_id"]))
    images = ["never1", *reversed(rated[:5]), "never2"]
    got = bayesian_ratings(frame, images=images)
    want = loop_reference(as_rows(frame), images=images)
    assert list(got.index) == images
    for image, (n, r, b) in want.items():
        assert got.loc[image, "count"] == n
        assert got.loc[image, "bayesian"] == pytest.approx(b)
        assert math.isnan(got.loc[image, "mean"]) == math.isnan(r)
    assert got.loc["never1", "bayesian"] == 0.0 and got.loc["never1", "count"] == 0
    # the prior still comes from all the ratings, not only from the images asked for
    assert got.loc[rated[0], "bayesian"] == pytest.approx(bayesian_ratings(frame).loc[rated[0], "bayesian"])


def test_shrinks_towards_the_mean() -> None:
    frame = pd.DataFrame({"image_id": ["one"] + ["many"] * 50 + ["mid"] * 5,
                          "user_id": range(56), "score": [10] + [10] * 50 + [5] * 5})
    got = bayesian_ratings(frame, C=5, m=5)
    # a single 10 is pulled hard towards m; fifty 10s barely
    assert 5 < got.loc["one", "bayesian"] < got.loc["many", "bayesian"] < 10
    assert got.loc["mid", "bayesian"] == pytest.approx(5.0)


def test_empty_frame() -> None:
    empty = pd.DataFrame({"image_id": pd.Series([], dtype=object), "score": pd.Series([], dtype="int64")})
    assert prior(empty) == (0.0, 0.0)
    got = bayesian_ratings(empty, images=["a"])
    assert got.loc["a"].to_dict() == pytest.approx({"count": 0, "mean": math.nan, "bayesian": 0.0}, nan_ok=True)
    assert bayesian_ratings(empty).empty


def test_scalar_and_vector_formula() -> None:
    assert bayesian(2, 9.0, C=1.5, m=7.0) == pytest.approx((1.5 * 7 + 18) / 3.5)
    assert bayesian(0, math.nan, C=1.5, m=7.0) == 0.0
    out = bayesian(np.array([0, 1, 4]), np.array([np.nan, 10.0, 2.0]), C=2.0, m=6.0)
    np.testing.assert_allclose(out, [0.0, 22 / 3, 20 / 6])
    series = bayesian(pd.Series([1, 0], index=["x", "y"]), pd.Series([4.0, np.nan], index=["x", "y"]), 1.0, 2.0)
    assert series.to_dict() == {"x": 3.0, "y": 0.0}


@pytest.mark.parametrize(("C", "m"), [(-1, 5), (math.inf, 5), (1, math.nan), ("2", 5)])
def test_bad_priors_are_rejected(C: object, m: object) -> None:
    with pytest.raises(ValueError, match="prior"):
        check_prior(C, m)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prior"):
        bayesian_ratings(make_ratings(1), C=C, m=m)  # type: ignore[arg-type]


def test_math_imports_neither_arq_nor_redis() -> None:
    """The module's own imports (importing the ``mediaq`` package itself pulls in the client)."""
    import ast

    from helpers import parse_source

    import mediaq.pure.ratings as module

    tree = parse_source(module.__file__)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "collections", "dataclasses", "math", "typing", "numpy", "pandas", "mediaq"}
    assert {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module.startswith("mediaq")} == {"mediaq.errors"}


class Label(str):
    """A str subclass: taken through the per-id path, as before the one-pass check."""


@pytest.mark.parametrize("bad", [["a", ""], ["a", "b\tc"], ["a", "b\x7f"], ["ok", None], ["ok", 1.5], ["ok", True]])
def test_clean_ids_rejects_what_the_store_would_not_keep(bad: list) -> None:
    from mediaq.errors import ConfigError
    from mediaq.pure.ratings_input import clean_ids

    with pytest.raises(ConfigError, match="invalid image id"):
        clean_ids(bad)


def test_clean_ids_keeps_plain_text_as_is_and_converts_the_rest() -> None:
    from mediaq.pure.ratings_input import clean_ids

    ids = [f"img{i:05d}" for i in range(2000)] + ["é-ünïcode", "007"]
    assert clean_ids(ids) is ids  # the usual case: checked, not copied
    assert clean_ids([]) == []
    assert clean_ids(["a", 7, np.int64(8)]) == ["a", "7", "8"]
    got = clean_ids([Label("x")])
    assert got == ["x"]
    with pytest.raises(Exception, match="single string"):
        clean_ids("abc")
