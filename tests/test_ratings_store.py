"""The SQL ratings store on real SQLite files: round trips, validation, set-based recalculation."""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import random_ratings

from mediaq.errors import ConfigError, InvalidRatingsError
from mediaq.pure.ratings import MOVIELENS_SCALE, SEED_SCALE, RatingScale, bayesian_ratings
from mediaq.runtime.ratings_store import RatingsStore
from mediaq.runtime.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def store(tmp_path: Path):
    s = RatingsStore(f"sqlite:///{tmp_path}/ratings.db")
    yield s
    s.close()


def test_round_trip_frame(store: RatingsStore) -> None:
    frame = random_ratings(1)
    assert store.load_frame(frame) == len(frame)
    back = store.ratings_frame().sort_values(["image_id", "user_id"]).reset_index(drop=True)
    want = frame.sort_values(["image_id", "user_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, want.astype({"image_id": object, "user_id": "int64", "score": "int64"}))


def test_recalculate_agrees_with_pandas(store: RatingsStore) -> None:
    frame = random_ratings(2)
    store.load_frame(frame)
    C, m = store.prior()
    assert (C, m) == pytest.approx(tuple(map(float, (len(frame) / frame["image_id"].nunique(),
                                                     frame["score"].mean()))))
    ids = sorted(frame["image_id"].unique())
    result = store.recalculate([*ids[:100], "missing-1"])
    assert result["updated"] == 100 and result["unknown"] == ["missing-1"]
    assert (result["C"], result["m"]) == pytest.approx((C, m))
    result = store.recalculate(ids[100:])
    assert result["updated"] == len(ids) - 100 and result["unknown"] == []
    stats = store.stats()
    want = bayesian_ratings(frame).loc[stats.index]
    assert len(stats) == len(ids)
    np.testing.assert_array_equal(stats["count"], want["count"])
    np.testing.assert_allclose(stats["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats["bayesian"], want["bayesian"], rtol=1e-12)
    assert stats["updated_at"].notna().all()


def test_recalculate_all_and_given_prior(store: RatingsStore) -> None:
    frame = random_ratings(3)
    store.load_frame(frame)
    result = store.recalculate_all(C=4.0, m=9.0)
    assert result["updated"] == frame["image_id"].nunique()
    stats = store.stats()
    want = bayesian_ratings(frame, C=4.0, m=9.0).loc[stats.index]
    np.testing.assert_allclose(stats["bayesian"], want["bayesian"], rtol=1e-12)
    with pytest.raises(ConfigError, match="both C and m"):
        store.recalculate(["p0001"], C=1.0)
    with pytest.raises(ValueError, match="prior C=-2"):
        store.recalculate(["p0001"], C=-2, m=5)


def test_with_stats_returns_the_rows(store: RatingsStore) -> None:
    store.load_frame(pd.DataFrame({"image_id": ["a", "a", "b"], "user_id": [1, 2, 1], "score": [10, 8, 3]}))
    store.add_images(["quiet"])
    got = store.recalculate(["b", "quiet", "a", "ghost"], with_stats=True)
    assert got["unknown"] == ["ghost"] and got["updated"] == 3
    rows = {r["image_id"]: r for r in got["stats"]}
    assert rows["a"]["count"] == 2 and rows["a"]["mean"] == 9.0
    assert rows["a"]["bayesian"] == pytest.approx((1.5 * 7 + 18) / 3.5)
    assert rows["quiet"] == {"image_id": "quiet", "count": 0, "mean": None, "bayesian": 0.0}


def test_rerating_replaces_and_deleted_ratings_go_back_to_zero(store: RatingsStore, tmp_path: Path) -> None:
    store.load_frame(pd.DataFrame({"image_id": ["a", "b"], "user_id": [1, 1], "score": [2, 4]}))
    store.recalculate(["a", "b"])
    store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [10]}))  # user 1 changes their mind
    assert store.ratings_frame().set_index("image_id").loc["a", "score"] == 10
    with sqlite3.connect(tmp_path / "ratings.db") as raw:  # someone deletes b's only rating
        raw.execute("DELETE FROM ratings WHERE image_id = 'b'")
    got = store.recalculate(["a", "b"], with_stats=True)
    assert got["unknown"] == [] and got["updated"] == 2
    rows = {r["image_id"]: r for r in got["stats"]}
    assert rows["b"] == {"image_id": "b", "count": 0, "mean": None, "bayesian": 0.0}
    assert rows["a"]["bayesian"] == pytest.approx(10.0)  # C=1, m=10: the only rating left


def test_add_images_makes_unrated_images_known(store: RatingsStore) -> None:
    assert store.add_images(["x", "y", "x"]) == 2
    assert store.add_images(["y", "z"]) == 1
    assert store.image_ids() == ["x", "y", "z"]
    got = store.recalculate(["x", "nope"])
    assert got["unknown"] == ["nope"] and got["updated"] == 1
    assert store.stats(["x"]).loc["x", "bayesian"] == 0.0


def _ranges(bounds: list[str]) -> list[tuple[str | None, str | None]]:
    return list(zip([None, *bounds], [*bounds, None], strict=True))


def _check_ranges_match_id_lists(store: RatingsStore, seed: int) -> None:
    """Key ranges over a library (rated images, registered unrated ones, one whose ratings were all
    deleted) give what id lists give, to the bit; ranges cover ids added after the bounds were read."""
    frame = random_ratings(seed, images=240, rows=2500)
    store.load_frame(frame)
    store.add_images(["p0100x", "quiet"])  # known, never rated
    ids = sorted(frame["image_id"].unique())
    gone = ids[7]
    store.recalculate([gone])  # has a stats row ...
    with store.engine.begin() as conn:  # ... then loses every rating
        conn.execute(sa.text("DELETE FROM ratings WHERE image_id = :i"), {"i": gone})
    frame = frame[frame["image_id"] != gone]
    known = store.image_ids()
    for size in (1, 7, 100, len(known), len(known) + 5):
        assert store.range_bounds(size) == known[size::size]
    rated = sorted(frame["image_id"].unique())
    for size in (1, 7, 100, len(rated), len(rated) + 5):
        bounds, images, prior = store.library_plan(size, with_prior=True)
        assert bounds == rated[size::size] and images == len(rated)
        assert prior == pytest.approx(store.prior(), rel=1e-15)
        assert store.library_plan(size) == (bounds, images, None)
    bounds = store.range_bounds(50)
    late = pd.DataFrame({"image_id": ["a-first", "p0150z", "zz-last"], "user_id": [1, 1, 1], "score": [3, 9, 6]})
    store.load_frame(late)  # after the bounds were read: below the first, between, above the last
    frame = pd.concat([frame, late], ignore_index=True)
    C, m = store.prior()
    got = [store.recalculate_range(lo, hi, C, m) for lo, hi in _ranges(bounds)]
    assert all(g["unknown"] == [] and (g["C"], g["m"]) == (C, m) for g in got)
    assert sum(g["updated"] for g in got) == len(known) + 3
    by_ranges = store.stats()
    assert store.recalculate_range(*_ranges(bounds)[1], C, m)["updated"] == 50  # idempotent
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM rating_stats"))
    store.add_images(["p0100x", "quiet", gone])
    assert store.recalculate(store.image_ids(), C, m)["unknown"] == []
    by_ids = store.stats()
    cols = ["count", "mean", "bayesian"]
    pd.testing.assert_frame_equal(by_ranges.loc[by_ids.index, cols], by_ids[cols])
    assert by_ranges.loc[["p0100x", "quiet", gone], "bayesian"].tolist() == [0.0, 0.0, 0.0]
    assert by_ranges.loc[[gone], "count"].tolist() == [0]
    want = bayesian_ratings(frame).loc[by_ids.index.difference(["p0100x", "quiet", gone])]
    np.testing.assert_allclose(by_ranges.loc[want.index, "bayesian"], want["bayesian"], rtol=1e-12)
    assert store.recalculate_range(None, None, C, m)["updated"] == len(by_ids)  # one range: everything


def test_key_ranges_recalculate_exactly_what_id_lists_do(store: RatingsStore) -> None:
    _check_ranges_match_id_lists(store, 21)
    with store.engine.connect() as conn:  # the other databases' boundary query agrees with SQLite's hops
        for size in (1, 13, 50):
            assert list(conn.scalars(store._window_bounds(), {"size": size})) == store.range_bounds(size)
            rated = list(conn.scalars(store._window_bounds(rated_only=True), {"size": size}))
            assert rated == store.library_plan(size)[0]
    assert store.range_bounds(1000) == []
    assert store.recalculate_range("zzzz", None) == {"updated": 0, "unknown": [], "C": pytest.approx(store.prior()[0]),
                                                     "m": pytest.approx(store.prior()[1])}
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="range size"):
            store.range_bounds(bad)
        with pytest.raises(ConfigError, match="range size"):
            store.library_plan(bad)
    empty = RatingsStore(f"sqlite:///{store.engine.url.database}-empty")
    assert empty.library_plan(10, with_prior=True) == ([], 0, (0.0, 0.0))
    empty.close()


def test_a_range_of_rated_images_skips_the_unrated_update_on_sqlite(store: RatingsStore) -> None:
    """All rated: the upsert's row count equals the range's stats rows, so no UPDATE probes them."""
    store.load_frame(random_ratings(4))
    seen = _statements(store)
    store.recalculate_range("p0050", "p0100", 2.0, 6.0)
    assert not any(sql.lstrip().upper().startswith("UPDATE") for sql in seen)
    assert sum("BETWEEN" in sql or ">=" in sql for sql in seen) == 2  # the upsert and the count


def _statements(store: RatingsStore) -> list[str]:
    """Every SQL statement the store's engine sends from now on (a real SQLite, listened to)."""
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: seen.append(sql))
    return seen


def test_a_chunk_of_rated_images_is_one_statement_on_sqlite(store: RatingsStore, tmp_path: Path) -> None:
    """More ids than one expanding IN may carry elsewhere (5000), all rated: one upsert, no anti-join;
    an id without ratings in the chunk brings the anti-join back, and its row goes to 0."""
    ids = [f"i{n:05d}" for n in range(6000)]
    frame = pd.DataFrame({"image_id": ids * 2, "user_id": [1] * 6000 + [2] * 6000,
                          "score": [n % 10 + 1 for n in range(12000)]})
    store.load_frame(frame)
    seen = _statements(store)
    got = store.recalculate(ids, C=2.0, m=5.0)
    assert got == {"updated": 6000, "unknown": [], "C": 2.0, "m": 5.0}
    touching = [sql for sql in seen if "rating" in sql]
    assert len(touching) == 1 and touching[0].startswith("INSERT INTO rating_stats")
    stats = store.stats()
    want = bayesian_ratings(frame, C=2.0, m=5.0).loc[stats.index]
    np.testing.assert_allclose(stats["bayesian"], want["bayesian"], rtol=1e-12)

    with sqlite3.connect(tmp_path / "ratings.db") as raw:  # i00007 loses its ratings, stays known
        raw.execute("DELETE FROM ratings WHERE image_id = 'i00007'")
    seen.clear()
    got = store.recalculate([*ids, "ghost"], C=2.0, m=5.0, with_stats=True)
    assert got["unknown"] == ["ghost"] and got["updated"] == 6000
    assert len([sql for sql in seen if "rating" in sql]) > 1  # the anti-join, the UPDATE to 0, the stats
    assert store.stats(["i00007"]).loc["i00007", ["count", "bayesian"]].tolist() == [0, 0.0]


def test_prior_from_two_scans_matches_one_statement(store: RatingsStore) -> None:
    """On a SQLite file the prior comes from two scans side by side; inside a transaction (and on an
    empty or in-memory database) from one statement: the same figures."""
    assert store.prior() == (0.0, 0.0)
    frame = random_ratings(12)
    store.load_frame(frame)
    side_by_side = store.prior()
    with store._reading() as conn:
        assert store.prior(conn) == side_by_side
    assert side_by_side == pytest.approx((len(frame) / frame["image_id"].nunique(), frame["score"].mean()),
                                         rel=1e-15)
    memory = RatingsStore("sqlite://")
    memory.load_frame(frame)
    assert memory.prior() == side_by_side


def test_csv_round_trip_keeps_ids_exact(store: RatingsStore, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("image_id,user_id,score\n007,1,5\n7,1,6\n007,2,7\n")
    assert store.load_csv(path) == 3
    back = store.ratings_frame().sort_values(["image_id", "user_id"])
    assert back["image_id"].tolist() == ["007", "007", "7"]  # "007" is not 7
    assert store.stats().empty  # loading does not compute stats; recalculation does
    store.recalculate_all()
    assert store.stats().loc["007", "mean"] == 6.0


@pytest.mark.parametrize(
    ("body", "reason", "lines"),
    [
        ("a,1,5\nb,2,11\nc,3,0\nd,4,7\n", "score must be an integer 1..10", [3, 4]),
        ("a,1,5\nb,2,7.5\nc,3,ten\nd,4,\n", "score must be an integer 1..10", [3, 4, 5]),
        ("a,1,5\nb,x,7\n", "user_id must be an integer", [3]),
        (",1,5\nb,2,7\n", "image_id must be 1 to 255 characters", [2]),
        ("a,1,5\na,1,6\n", "appears more than once", [2, 3]),
    ],
)
def test_bad_csv_rows_are_named_and_nothing_is_written(store: RatingsStore, tmp_path: Path, body: str,
                                                       reason: str, lines: list[int]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("image_id,user_id,score\n" + body)
    with pytest.raises(InvalidRatingsError, match=reason) as info:
        store.load_csv(path)
    assert list(info.value.rows.index) == lines
    for line in lines:
        assert f"line {line} (" in str(info.value)
    assert store.ratings_frame().empty


def test_bad_frame_rows_and_columns(store: RatingsStore) -> None:
    with pytest.raises(InvalidRatingsError, match="missing \\['user_id'\\]"):
        store.load_frame(pd.DataFrame({"image_id": ["a"], "score": [1]}))
    frame = pd.DataFrame({"image_id": ["a", "b", "c"], "user_id": [1, 2, 3], "score": [5, np.nan, 3]})
    with pytest.raises(InvalidRatingsError, match=r"row 1 \(image_id='b', user_id=2, score=nan\)"):
        store.load_frame(frame)
    many = pd.DataFrame({"image_id": [f"i{k}" for k in range(25)], "user_id": range(25), "score": [99] * 25})
    with pytest.raises(InvalidRatingsError, match=r"25 rating row\(s\) rejected.* and 15 more"):
        store.load_frame(many)
    assert store.ratings_frame().empty


@pytest.mark.parametrize(
    ("column", "values", "reason", "rows"),
    [
        ("image_id", [np.nan, "b"], "image_id must be text or an integer", [0]),  # was AttributeError
        ("image_id", [1.5, 2.5], "image_id must be text or an integer", [0, 1]),  # was AttributeError
        ("image_id", [31.0, 32.0], "image_id must be text or an integer", [0, 1]),  # was "31": or is it "31.0"?
        ("image_id", [True, "b"], "image_id must be text or an integer", [0]),
        ("image_id", ["a\x00b", "b"], "control characters", [0]),  # was accepted
        ("image_id", ["a", "line\nbreak"], "control characters", [1]),
        ("user_id", [True, False], "user_id must be an integer", [0, 1]),  # was OverflowError
        ("user_id", [1, True], "user_id must be an integer", [1]),
        ("score", [True, 5], "score must be", [0]),  # was stored as 1
        ("score", [False, True], "score must be", [0, 1]),
    ],
)
def test_ratings_input_defects_are_clear_errors(store: RatingsStore, column: str, values: list, reason: str,
                                               rows: list[int]) -> None:
    frame = pd.DataFrame({"image_id": ["a", "b"], "user_id": [1, 2], "score": [5, 6]})
    frame[column] = pd.Series(values, dtype=object if len({type(v) for v in values}) > 1 else None)
    with pytest.raises(InvalidRatingsError, match=reason) as info:
        store.load_frame(frame)
    assert list(info.value.rows.index) == rows
    assert store.ratings_frame().empty


def test_a_csv_gives_the_same_ids_through_load_csv_and_load_frame(store: RatingsStore, tmp_path: Path) -> None:
    """One rule: ids are text as written, integers become their digits, floats are refused (31.0 could be
    "31" or "31.0"). So a file never loads under two sets of ids: where pandas would have guessed, the
    error says how to read it."""
    ints = tmp_path / "ints.csv"
    ints.write_text("image_id,user_id,score\n31,1,5\n007,2,6\n")
    floats = tmp_path / "floats.csv"
    floats.write_text("image_id,user_id,score\n31.0,1,5\n32.0,2,6\n")
    assert store.load_csv(ints) == 2 and sorted(store.ratings_frame()["image_id"]) == ["007", "31"]
    other = RatingsStore("sqlite://")
    assert other.load_frame(pd.read_csv(ints, dtype={"image_id": str})) == 2
    assert sorted(other.ratings_frame()["image_id"]) == ["007", "31"]
    assert store.load_csv(floats) == 2 and "31.0" in set(store.ratings_frame()["image_id"])
    with pytest.raises(InvalidRatingsError, match="dtype=str"):
        other.load_frame(pd.read_csv(floats))  # pandas reads 31.0 as a float


MOVIELENS = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n2,31,4.5,1260759185\n"


def test_movielens_loads_in_one_call_with_its_columns_and_scale(store: RatingsStore, tmp_path: Path) -> None:
    path = tmp_path / "ml.csv"
    path.write_text(MOVIELENS)
    columns = {"movieId": "image_id", "userId": "user_id", "rating": "score"}
    assert store.load_csv(path, columns=columns, scale=(0.5, 5, 0.5)) == 3
    assert store.scale == RatingScale(0.5, 5, 0.5) == MOVIELENS_SCALE
    frame = store.ratings_frame().sort_values(["image_id", "user_id"])
    assert frame["image_id"].tolist() == ["1029", "31", "31"] and frame["score"].tolist() == [3.0, 2.5, 4.5]
    store.recalculate_all(C=0, m=0)
    assert store.stats().loc["31", "mean"] == 3.5
    assert store.load_csv(path, columns=columns) == 3  # the database remembers its scale
    path.write_text(MOVIELENS + "3,31,5.5,1\n3,7,0.25,2\n")
    with pytest.raises(InvalidRatingsError, match=r"score must be 0\.5\.\.5 in steps of 0\.5") as info:
        store.load_csv(path, columns=columns)
    assert list(info.value.rows.index) == [5, 6]  # CSV lines
    with pytest.raises(ConfigError, match=r"holds ratings on the 0\.5\.\.5 .* scale"):
        store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [7]}), scale=SEED_SCALE)
    with pytest.raises(InvalidRatingsError, match="missing"):
        store.load_csv(path, columns={"movie": "image_id"})


def test_a_database_made_before_scales_were_recorded_holds_the_seed_scale(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the table as mediaq made it before: whole numbers, CHECK 1..10
        db.execute("CREATE TABLE ratings (image_id VARCHAR(255) NOT NULL, user_id BIGINT NOT NULL, "
                   "score SMALLINT NOT NULL, PRIMARY KEY (image_id, user_id), "
                   "CONSTRAINT ck_ratings_score CHECK (score BETWEEN 1 AND 10)) WITHOUT ROWID")
        db.execute("INSERT INTO ratings VALUES ('a', 1, 7)")
    old = RatingsStore(f"sqlite:///{path}")
    try:
        assert old.scale == SEED_SCALE
        with pytest.raises(ConfigError, match=r"seed's scale \(an integer 1\.\.10\)"):
            old.load_frame(pd.DataFrame({"movieId": [1], "userId": [1], "rating": [4.5]}), scale=MOVIELENS_SCALE,
                           columns={"movieId": "image_id", "userId": "user_id", "rating": "score"})
        assert old.load_frame(pd.DataFrame({"image_id": ["b"], "user_id": [1], "score": [9]})) == 1
        assert old.ratings_frame()["score"].tolist() == [7, 9] and old.scale == SEED_SCALE
    finally:
        old.close()


def test_the_seed_scale_stays_the_default(store: RatingsStore, tmp_path: Path) -> None:
    assert store.scale == SEED_SCALE == RatingScale(1, 10, 1)
    with pytest.raises(InvalidRatingsError, match=r"score must be an integer 1\.\.10"):
        store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [4.5]}))
    store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [4]}))
    assert store.ratings_frame()["score"].dtype == "int64"
    for bad in ((5, 1, 1), (1, 10, 0), (0, 1, 0.3), "x"):
        with pytest.raises(ConfigError):
            RatingScale.parse(bad)


def test_duplicates_last_keeps_the_last(store: RatingsStore) -> None:
    frame = pd.DataFrame({"image_id": ["a", "a", "b"], "user_id": [1, 1, 1], "score": [3, 9, 4]})
    assert store.load_frame(frame, duplicates="last") == 2
    assert store.ratings_frame().set_index("image_id")["score"].to_dict() == {"a": 9, "b": 4}
    with pytest.raises(ConfigError, match="duplicates="):
        store.load_frame(frame, duplicates="first")


def test_integer_image_ids_become_text(store: RatingsStore) -> None:
    store.load_frame(pd.DataFrame({"image_id": [5, 6], "user_id": [1, 1], "score": [5, 6]}))
    assert store.recalculate([5, "6", "7"])["unknown"] == ["7"]
    with pytest.raises(ConfigError, match="invalid image id"):
        store.recalculate([None])
    with pytest.raises(ConfigError, match="not the single string"):
        store.recalculate("abc")


def test_sqlite_is_wal_with_busy_timeout(tmp_path: Path) -> None:
    store = RatingsStore(f"sqlite:///{tmp_path}/deep/er/r.db", busy_timeout=1.5)  # parents are created
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1500
    store.close()
    store = RatingsStore(f"sqlite:///{tmp_path}/t.db?timeout=0.25")  # the URL can carry it too
    assert store.busy_timeout == 0.25
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 250
    store.close()


def test_locked_database_raises_operational_error_after_the_timeout(tmp_path: Path) -> None:
    import sqlalchemy.exc

    path = tmp_path / "r.db"
    store = RatingsStore(f"sqlite:///{path}", busy_timeout=0.2)
    store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [5]}))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
            store.recalculate(["a"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.recalculate(["a"])["updated"] == 1
    store.close()


def test_concurrent_writers_in_threads_all_land(store: RatingsStore) -> None:
    frame = random_ratings(4, images=400, rows=4000)
    store.load_frame(frame)
    ids = sorted(frame["image_id"].unique())
    chunks = [ids[i : i + 25] for i in range(0, len(ids), 25)]
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        try:
            store.recalculate(chunk)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = store.stats()
    want = bayesian_ratings(frame).loc[stats.index]
    assert len(stats) == len(ids)
    np.testing.assert_allclose(stats["bayesian"], want["bayesian"], rtol=1e-12)


def test_default_url_comes_from_settings(tmp_path: Path) -> None:
    settings = Settings.load(env={}, state_dir=tmp_path / "state")
    store = RatingsStore.from_settings(settings)
    assert store.url == f"sqlite:///{tmp_path / 'state' / 'ratings.sqlite3'}"
    assert (tmp_path / "state" / "ratings.sqlite3").exists()
    store.close()
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        RatingsStore("not a url")


def test_in_memory_store_is_shared_across_threads() -> None:
    store = RatingsStore("sqlite://")
    store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [5]}))
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(len(store.ratings_frame())))
    t.start()
    t.join()
    assert seen == [1]


def test_sample_csv_loads(store: RatingsStore) -> None:
    path = DATA / "ratings.csv"
    if not path.exists():
        pytest.fail("data/ratings.csv is missing: run data/make_ratings.py")
    frame = pd.read_csv(path, dtype={"image_id": str})
    assert store.load_csv(path) == len(frame)
    result = store.recalculate(store.image_ids())
    assert result["unknown"] == [] and result["updated"] == frame["image_id"].nunique()
    stats = store.stats()
    assert stats["count"].min() == 1 and stats["count"].max() >= 20  # realistic skew
    assert not math.isnan(stats["bayesian"].sum())


OTHER_URL = os.environ.get("RATINGS_TEST_URL")  # another scratch database, e.g. mysql+pymysql://u:pw@host/db
OTHER_SERVERS = ["postgresql", "mariadb"] + (["RATINGS_TEST_URL"] if OTHER_URL else [])


@pytest.fixture(scope="module", params=OTHER_SERVERS)
def other_url(request) -> Iterator[str]:
    """A real PostgreSQL or MariaDB server started for these tests (tests/dbservers.py)."""
    from dbservers import ServerUnavailable, mariadb_server, postgres_server

    if request.param == "RATINGS_TEST_URL":
        yield OTHER_URL
        return
    try:
        with (postgres_server if request.param == "postgresql" else mariadb_server)() as url:
            yield url
    except ServerUnavailable as exc:
        pytest.skip(str(exc))


def test_other_database_round_trip(other_url: str) -> None:
    """The non-SQLite code paths (dialect upserts, expanding IN) on a real server. Drops the tables first."""
    from mediaq.runtime.ratings_store import metadata

    store = RatingsStore(other_url, create=False)
    assert store.engine.dialect.name in ("postgresql", "mysql", "mariadb")
    metadata.drop_all(store.engine)
    store.create_tables()
    frame = random_ratings(9)
    store.load_frame(frame)
    store.load_frame(frame.head(5).assign(score=10))  # re-ratings replace
    frame.loc[:4, "score"] = 10
    store.add_images(["quiet"])
    ids = sorted(frame["image_id"].unique())
    got = store.recalculate([*ids, "quiet", "ghost"], with_stats=True)
    assert got["unknown"] == ["ghost"] and got["updated"] == len(ids) + 1
    C, m = store.prior()
    assert (C, m) == pytest.approx((len(frame) / len(ids), frame["score"].mean()))
    stats = store.stats()
    want = bayesian_ratings(frame, images=stats.index)
    np.testing.assert_allclose(stats["bayesian"], want["bayesian"], rtol=1e-9)
    assert stats.loc["quiet", "bayesian"] == 0.0
    with store.engine.begin() as conn:  # ids[0] loses its ratings: an all-rated chunk otherwise, so the
        conn.execute(sa.text("DELETE FROM ratings WHERE image_id = :i"), {"i": ids[0]})  # row count decides
    got = store.recalculate(ids)
    assert got["unknown"] == [] and got["updated"] == len(ids)
    assert store.stats([ids[0]]).loc[ids[0], ["count", "bayesian"]].tolist() == [0, 0.0]
    assert store.recalculate(ids[1:])["updated"] == len(ids) - 1
    frame = frame[frame["image_id"] != ids[0]]
    ids = ids[1:]
    store.recalculate_all(C=1.0, m=5.0)
    np.testing.assert_allclose(store.stats().loc[ids, "bayesian"],
                               bayesian_ratings(frame, C=1.0, m=5.0).loc[ids, "bayesian"], rtol=1e-9)
    metadata.drop_all(store.engine)
    store.close()


def test_other_database_key_ranges(other_url: str) -> None:
    """The whole-library form on a real server: the window-function boundaries, the range upserts
    (row counts inexact on MariaDB: the unrated update always runs there). Drops the tables first."""
    from mediaq.runtime.ratings_store import metadata

    store = RatingsStore(other_url, create=False)
    metadata.drop_all(store.engine)
    store.create_tables()
    try:
        _check_ranges_match_id_lists(store, 22)
    finally:
        metadata.drop_all(store.engine)
        store.close()
