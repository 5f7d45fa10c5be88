"""Rating jobs: the prior cache (pure logic on fakeredis, then for real), errors, and chunked and
per-image recalculation through a real worker subprocess agreeing with each other and with pandas."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis.asyncio as aioredis
from arq.jobs import JobStatus
from arq.worker import Retry
from helpers import eventually, random_ratings

import mediaq
from mediaq.client.ratings import chunk_job_id, enqueue_library, prior_job_id, range_job_id
from mediaq.errors import PermanentJobError, TransientJobError
from mediaq.jobs.ratings import (
    close_stores,
    get_prior,
    recalculate_rating,
    recalculate_ratings,
    recalculate_ratings_range,
)
from mediaq.pure.ratings import bayesian_ratings
from mediaq.runtime import keys
from mediaq.runtime.connections import with_db
from mediaq.runtime.ratings_store import RatingsStore

DATA = Path(__file__).resolve().parent.parent / "data"


# -- the prior cache, pure logic (fakeredis) ---------------------------------------------------------
class Counter:
    def __init__(self, values: list[tuple[float, float]]) -> None:
        self.values = values
        self.calls = 0

    async def __call__(self) -> tuple[float, float]:
        self.calls += 1
        await asyncio.sleep(0.01)
        return self.values[min(self.calls - 1, len(self.values) - 1)]


async def test_prior_is_cached_until_it_expires_fakeredis() -> None:
    fakeredis = pytest.importorskip("fakeredis")
    cache = fakeredis.FakeAsyncRedis()
    compute = Counter([(2.0, 6.0), (3.0, 7.0)])
    # a TTL long enough that a busy machine cannot expire it between the first two calls
    assert await get_prior(cache, "k", compute, ttl=1.0) == (2.0, 6.0, "db")
    assert 0 < await cache.pttl("k") <= 1000
    assert await get_prior(cache, "k", compute, ttl=1.0) == (2.0, 6.0, "cache")
    assert compute.calls == 1
    await asyncio.sleep(1.05)
    assert await get_prior(cache, "k", compute, ttl=1.0) == (3.0, 7.0, "db")
    assert compute.calls == 2


async def test_prior_cache_single_flight_garbage_and_off_fakeredis() -> None:
    fakeredis = pytest.importorskip("fakeredis")
    cache = fakeredis.FakeAsyncRedis()
    compute = Counter([(2.0, 6.0)])
    lock = asyncio.Lock()
    got = await asyncio.gather(*(get_prior(cache, "k", compute, 60, lock) for _ in range(8)))
    assert compute.calls == 1 and {g[:2] for g in got} == {(2.0, 6.0)}
    assert sorted(g[2] for g in got) == ["cache"] * 7 + ["db"]
    await cache.set("k", b"not json")  # garbage under our key is replaced, not trusted
    assert await get_prior(cache, "k", compute, 60) == (2.0, 6.0, "db")
    assert await cache.get("k") == b"[2.0, 6.0]"
    assert await get_prior(cache, "k2", compute, 0) == (2.0, 6.0, "db")  # ttl 0: no caching
    assert not await cache.exists("k2")


async def test_prior_cache_failure_falls_back_to_the_database() -> None:
    class Broken:
        async def get(self, key: str) -> bytes:
            raise ConnectionError("cache down")

        async def set(self, *a: Any, **k: Any) -> None:
            raise ConnectionError("cache down")

    compute = Counter([(1.0, 5.0)])
    assert await get_prior(Broken(), "k", compute, 60) == (1.0, 5.0, "db")


# -- jobs called directly (real Redis cache, real SQLite) --------------------------------------------
@pytest.fixture
async def ctx(settings: mediaq.Settings, redis_server: Any, tmp_path: Path):
    cache = aioredis.Redis.from_url(with_db(redis_server.url, settings.cache_db, keep_explicit=False))
    context = {"settings": settings.replace(ratings_url=f"sqlite:///{tmp_path}/direct.db?timeout=0.2"),
               "cache": cache, "job_try": 1, "resources": {}}
    yield context
    await cache.aclose()
    close_stores(context)


async def test_jobs_report_unknown_ids_and_use_the_cached_prior(ctx: dict[str, Any]) -> None:
    store = RatingsStore(ctx["settings"].resolved_ratings_url)
    store.load_frame(pd.DataFrame({"image_id": ["a", "a", "b"], "user_id": [1, 2, 1], "score": [10, 8, 3]}))
    got = await recalculate_rating(ctx, "a")
    assert got["prior_source"] == "db" and (got["C"], got["m"]) == (1.5, 7.0)
    assert got["count"] == 2 and got["mean"] == 9.0 and got["bayesian"] == pytest.approx(28.5 / 3.5)
    assert got["unknown"] == []
    ghost = await recalculate_rating(ctx, "ghost")
    assert ghost["unknown"] == ["ghost"] and ghost["bayesian"] is None and ghost["prior_source"] == "cache"
    chunk = await recalculate_ratings(ctx, ["b", "ghost", "a", 7])
    assert chunk.pop("db_seconds") > 0
    assert chunk == {"updated": 2, "unknown": ["ghost", "7"], "C": 1.5, "m": 7.0, "prior_source": "cache"}
    ranged = await recalculate_ratings_range(ctx, None, "b")
    assert ranged.pop("db_seconds") > 0
    assert ranged == {"updated": 1, "unknown": [], "C": 1.5, "m": 7.0, "prior_source": "cache"}
    given = await recalculate_ratings(ctx, ["a"], C=0, m=0)
    assert given["prior_source"] == "given"
    assert store.stats(["a"]).loc["a", "bayesian"] == 9.0  # no prior: the plain mean
    store.close()


@pytest.mark.parametrize(
    ("function", "args", "kwargs"),
    [
        (recalculate_rating, [""], {}),
        (recalculate_rating, [None], {}),
        (recalculate_rating, [True], {}),
        (recalculate_rating, ["x" * 300], {}),
        (recalculate_ratings, ["abc"], {}),
        (recalculate_ratings, [["ok", {"id": 1}]], {}),
        (recalculate_ratings, [["ok"]], {"C": 5}),
        (recalculate_ratings, [["ok"]], {"C": -1, "m": 5}),
        (recalculate_ratings, [["ok"]], {"C": "5", "m": 5}),
        (recalculate_rating, ["ok"], {"C": 1, "m": float("nan")}),
        (recalculate_ratings_range, [5], {}),
        (recalculate_ratings_range, [None, ["b"]], {}),
        (recalculate_ratings_range, ["a", "x" * 300], {}),
        (recalculate_ratings_range, [None, None], {"m": 5}),
    ],
)
async def test_bad_arguments_fail_permanently(ctx: dict[str, Any], function: Any, args: list[Any],
                                              kwargs: dict[str, Any]) -> None:
    with pytest.raises(PermanentJobError) as info:
        await function(ctx, *args, **kwargs)
    assert info.value.code == "bad_argument"


async def test_locked_database_is_transient(ctx: dict[str, Any]) -> None:
    store = RatingsStore(ctx["settings"].resolved_ratings_url)
    store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [5]}))
    holder = sqlite3.connect(store.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Retry):  # not the last try: arq retries it after the seed backoff
            await recalculate_ratings(ctx, ["a"])
        with pytest.raises(TransientJobError) as info:  # the last try fails with the real reason
            await recalculate_ratings({**ctx, "job_try": 3}, ["a"])
        assert info.value.code == "ratings_db_unavailable" and "locked" in info.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await recalculate_ratings(ctx, ["a"]))["updated"] == 1
    store.close()


# -- through a real worker ---------------------------------------------------------------------------
async def test_chunked_and_per_image_jobs_agree_through_a_worker(client: mediaq.Client, start_worker: Any,
                                                                 tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    store = RatingsStore(url)
    store.load_csv(DATA / "ratings.csv")
    store.load_frame(random_ratings(11, 80, 600, id_format="s{:03d}", keep="first"))
    store.add_images(["lonely"])  # known, never rated: 0 as in the seed
    ids = [*store.image_ids(), "ghost-1"]
    start_worker(ratings_url=url)

    chunked = await enqueue_library(client, ids, chunk_size=16, ratings_url=url)
    assert len(chunked) == math.ceil(len(ids) / 16)
    assert chunked.ids[0] == chunk_job_id(chunked.name, ids[:16])
    await chunked.wait(progress=False, timeout=60, poll_interval=0.05)
    frame = await chunked.results()
    assert frame["success"].all()
    assert frame["updated"].sum() == len(ids) - 1
    assert [u for us in frame["unknown"] for u in us] == ["ghost-1"]
    assert frame["C"].nunique() == 1 and set(frame["prior_source"]) <= {"db", "cache"}
    after_chunks = store.stats()

    per_image = await client.enqueue_many("recalculate_rating", [{"image_id": i} for i in ids],
                                          job_id="rr:{image_id}")
    await per_image.wait(progress=False, timeout=120, poll_interval=0.05)
    single = (await per_image.results()).set_index("result_image_id")
    assert single["success"].all() and len(single) == len(ids)
    assert single.loc["ghost-1", "unknown"] == ["ghost-1"]
    known = single.drop(index="ghost-1")
    assert (known["unknown"].map(len) == 0).all()
    assert set(known["prior_source"]) == {"cache"}  # within 5 minutes of the chunked run
    assert (known["C"] == frame["C"].iloc[0]).all()

    # both forms agree with each other and with pandas on the same ratings
    want = bayesian_ratings(store.ratings_frame(), images=after_chunks.index)
    np.testing.assert_array_equal(known.loc[after_chunks.index, "count"].astype(int), after_chunks["count"])
    np.testing.assert_allclose(known.loc[after_chunks.index, "bayesian"].astype(float), after_chunks["bayesian"],
                               rtol=1e-12)
    np.testing.assert_allclose(after_chunks["bayesian"], want["bayesian"], rtol=1e-12)
    assert after_chunks.loc["lonely"].to_dict() | {"updated_at": None} == {
        "count": 0, "mean": pytest.approx(math.nan, nan_ok=True), "bayesian": 0.0, "updated_at": None}
    assert known.loc["lonely", "bayesian"] == 0.0 and known.loc["lonely", "count"] == 0

    # the same batch name again skips every chunk (deterministic ids); a new batch runs again
    again = await enqueue_library(client, ids, chunk_size=16, batch=chunked.name, ratings_url=url)
    assert len(again.skipped) == len(chunked)
    fresh = await enqueue_library(client, chunk_size=50, ratings_url=url, prior=(0.0, 0.0))  # whole library
    await fresh.wait(progress=False, timeout=60, poll_interval=0.05)
    res = await fresh.results()
    assert res["updated"].sum() == len(ids) - 1 and set(res["prior_source"]) == {"given"}
    assert not any(len(u) for u in res["unknown"])  # ranges hold known images only ("ghost-1" is not one)
    assert set(frame.columns) - {"image_ids"} <= set(res.columns)  # the id-list chunks' columns, and:
    assert set(res.columns) - set(frame.columns) == {"start", "stop", "result_C", "result_m"}  # (C, m given)
    stats = store.stats()
    rated = stats["count"] > 0
    np.testing.assert_allclose(stats.loc[rated, "bayesian"], stats.loc[rated, "mean"], rtol=1e-12)
    store.close()


async def test_refresh_prior_runs_ahead_of_the_chunks_through_a_worker(client: mediaq.Client, start_worker: Any,
                                                                       tmp_path: Path) -> None:
    """refresh_prior=True: a stale cached prior is dropped, a refresh_rating_prior job (outside the
    batch) computes the current one, and every chunk uses that same prior."""
    url = f"sqlite:///{tmp_path}/r.db"
    store = RatingsStore(url)
    frame = random_ratings(13)
    store.load_frame(frame)
    start_worker(ratings_url=url)
    key = keys.ratings_prior(url)
    await client.cache.set(key, "[1.0, 2.0]")  # stale
    ids = sorted(frame["image_id"].unique())
    batch = await enqueue_library(client, ids, chunk_size=50, ratings_url=url, refresh_prior=True)
    assert len(batch) == math.ceil(len(ids) / 50)  # chunks only
    assert prior_job_id(batch.name) not in batch.ids
    await batch.wait(progress=False, timeout=60, poll_interval=0.05)
    res = await batch.results()
    prior = await client.result(prior_job_id(batch.name), timeout=20)
    want = (len(frame) / len(ids), frame["score"].mean())
    assert (prior["C"], prior["m"]) == pytest.approx(want, rel=1e-15)
    assert prior["prior_source"] in ("db", "cache")
    assert (res["C"] == prior["C"]).all() and (res["m"] == prior["m"]).all()
    assert json.loads(await client.cache.get(key)) == pytest.approx(list(want), rel=1e-15)
    stats = store.stats()
    np.testing.assert_allclose(stats["bayesian"], bayesian_ratings(frame).loc[stats.index, "bayesian"], rtol=1e-12)

    given = await enqueue_library(client, ids[:5], ratings_url=url, refresh_prior=True, prior=(0.0, 0.0))
    await given.wait(progress=False, timeout=60, poll_interval=0.05)
    assert await client.job(prior_job_id(given.name)).status() == JobStatus.not_found  # a given prior: no job
    store.close()


async def test_whole_library_ranges_cover_images_added_after_the_bounds_through_a_worker(
        client: mediaq.Client, start_worker: Any, tmp_path: Path) -> None:
    """``enqueue_library`` with no ids: key-range jobs that recalculate every image in their range,
    also images rated after the client read the boundaries (below the first, between, above the
    last), as the per-image job would, with the prior refreshed ahead of them."""
    url = f"sqlite:///{tmp_path}/r.db"
    store = RatingsStore(url)
    frame = random_ratings(17, images=200, rows=2000)
    store.load_frame(frame)
    store.add_images(["p0100-unrated"])
    await client.cache.set(keys.ratings_prior(url), "[1.0, 2.0]")  # stale
    batch = await enqueue_library(client, chunk_size=40, ratings_url=url, refresh_prior=True)  # no worker yet
    assert await client.job(prior_job_id(batch.name)).status() == JobStatus.not_found  # read with the bounds
    C, m = len(frame) / frame["image_id"].nunique(), frame["score"].mean()
    assert json.loads(await client.cache.get(keys.ratings_prior(url))) == pytest.approx([C, m], rel=1e-15)
    late = pd.DataFrame({"image_id": ["a-first", "p0100-late", "z-last"], "user_id": [1, 2, 3], "score": [2, 9, 7]})
    store.load_frame(late)
    frame = pd.concat([frame, late], ignore_index=True)
    start_worker(ratings_url=url)
    await batch.wait(progress=False, timeout=60, poll_interval=0.05)
    res = await batch.results()
    assert res["success"].all() and len(res) == math.ceil((frame["image_id"].nunique() - 3) / 40)
    assert res["updated"].sum() == frame["image_id"].nunique() + 1
    assert set(res["prior_source"]) == {"cache"} and res["C"].tolist() == pytest.approx([C] * len(res), rel=1e-15)
    stats = store.stats()
    want = bayesian_ratings(frame, C=res["C"].iloc[0], m=res["m"].iloc[0])  # the prior read with the bounds
    np.testing.assert_allclose(stats.loc[want.index, "bayesian"], want["bayesian"], rtol=1e-12)
    assert stats.loc["p0100-unrated", "bayesian"] == 0.0 and len(stats) == len(want) + 1
    single = await client.result(await client.enqueue_job("recalculate_rating", "z-last"), timeout=20)
    assert single["prior_source"] == "cache" and single["bayesian"] == stats.loc["z-last", "bayesian"]
    store.close()


async def test_prior_cache_expires_through_a_worker(client: mediaq.Client, start_worker: Any,
                                                    tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    store = RatingsStore(url)
    store.load_frame(pd.DataFrame({"image_id": ["a", "a", "b"], "user_id": [1, 2, 1], "score": [10, 8, 3]}))
    start_worker(ratings_url=url, rating_cache_ttl=2.0)
    key = keys.ratings_prior(url)

    async def run() -> dict[str, Any]:
        return await client.result(await client.enqueue_job("recalculate_rating", "a"), timeout=20)

    first = await run()
    assert (first["C"], first["m"], first["prior_source"]) == (1.5, 7.0, "db")
    assert 0 < await client.cache.pttl(key) <= 2000
    store.load_frame(pd.DataFrame({"image_id": ["c"] * 3, "user_id": [1, 2, 3], "score": [1, 1, 1]}))
    stale = await run()  # within the TTL the seed keeps using the cached prior
    assert (stale["C"], stale["m"], stale["prior_source"]) == (1.5, 7.0, "cache")
    await eventually(lambda: _gone(client, key), timeout=10)
    fresh = await run()
    assert fresh["prior_source"] == "db"
    assert (fresh["C"], fresh["m"]) == (2.0, 4.0)  # 6 ratings of 3 images, mean 24 / 6
    assert fresh["bayesian"] == pytest.approx((2 * 4.0 + 18) / 4)
    store.close()


async def _gone(client: mediaq.Client, key: str) -> bool:
    return not await client.cache.exists(key)


async def test_locked_database_is_retried_then_succeeds_through_a_worker(client: mediaq.Client, start_worker: Any,
                                                                         tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}?timeout=0.3"
    store = RatingsStore(url)
    store.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [5]}))
    start_worker(ratings_url=url)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        job_id = await client.enqueue_job("recalculate_ratings", ["a"])

        async def second_try_started() -> bool:
            return int(await client.redis.get(f"arq:retry:{job_id}") or 0) >= 2

        await eventually(second_try_started, timeout=20)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await client.result(job_id, timeout=20))["updated"] == 1
    info = await client.job(job_id).result_info()
    assert info is not None and info.job_try >= 2
    store.close()


async def test_unreachable_database_fails_after_the_retries(client: mediaq.Client, start_worker: Any,
                                                            tmp_path: Path) -> None:
    start_worker(ratings_url=f"sqlite:///{tmp_path}")  # a folder: SQLite cannot open it
    job_id = await client.enqueue_job("recalculate_rating", "a")
    with pytest.raises(mediaq.JobError) as info:
        await client.result(job_id, timeout=30)
    assert info.value.code == "ratings_db_unavailable"
    assert "unable to open database file" in info.value.message
    result = await client.job(job_id).result_info()
    assert result is not None and result.job_try == 3  # the seed's max_tries


async def test_enqueue_library_chunking_and_validation(client: mediaq.Client, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    store = RatingsStore(url)

    def rate(images: range) -> None:
        store.load_frame(pd.DataFrame({"image_id": [f"i{k:05d}" for k in images], "user_id": 1, "score": 5}))

    rate(range(2500))
    store.add_images([f"u{k:05d}" for k in range(5000)])  # unrated: covered by the last range, not counted
    batch = await enqueue_library(client, ratings_url=url)  # the whole library: key ranges of 1000 images
    assert len(batch) == 3
    jobs = [await client.job(job_id).info() for job_id in batch.ids]
    assert {j.function for j in jobs} == {"recalculate_ratings_range"}
    assert [(j.kwargs["start"], j.kwargs["stop"]) for j in jobs] == [(None, "i01000"), ("i01000", "i02000"),
                                                                     ("i02000", None)]
    assert batch.ids[0] == range_job_id(batch.name, None, "i01000")
    rate(range(2500, 25_000))
    auto = await enqueue_library(client, ratings_url=url)  # max_jobs ranges of a multiple of 1000 images
    assert [(await client.job(job_id).info()).kwargs["stop"] for job_id in auto.ids] == [
        *(f"i{k:05d}" for k in range(3000, 25_000, 3000)), None]  # 25k images: 9 ranges of 3000 (>= 2500)
    sized = await enqueue_library(client, chunk_size=10_000, ratings_url=url, prior=(1, 5))
    assert [(await client.job(job_id).info()).kwargs for job_id in sized.ids] == [
        {"start": lo, "stop": hi, "C": 1.0, "m": 5.0} for lo, hi in [(None, "i10000"), ("i10000", "i20000"),
                                                                     ("i20000", None)]]
    again = await enqueue_library(client, chunk_size=10_000, ratings_url=url, batch=sized.name, prior=(1, 5))
    assert len(again.skipped) == 3  # same bounds, same batch: nothing new
    ids = [f"x{k}" for k in range(25_000)]
    auto = await enqueue_library(client, ids, chunk_size=None, ratings_url=url)  # max_jobs chunks of >= 1000
    assert len(auto) == client.settings.max_jobs  # 10 chunks of 2500
    big = await enqueue_library(client, [f"y{k}" for k in range(210_000)], chunk_size=None, ratings_url=url)
    assert len(big) == 11  # capped at MAX_AUTO_CHUNK ids a job
    with_prior = await enqueue_library(client, ["a"], prior=(2, 5.5), ratings_url=url)
    assert (await client.job(with_prior.ids[0]).info()).kwargs == {"image_ids": ["a"], "C": 2.0, "m": 5.5}
    for bad in (0, -5, 2.5, True):
        with pytest.raises(mediaq.ConfigError, match="chunk_size"):
            await enqueue_library(client, ["a"], chunk_size=bad, ratings_url=url)
    with pytest.raises(ValueError, match="prior C=-1"):
        await enqueue_library(client, ["a"], prior=(-1, 5), ratings_url=url)
    await client.cache.set(keys.ratings_prior(url), "[1, 2]")
    refreshed = await enqueue_library(client, ["a"], refresh_prior=True, ratings_url=url)
    assert not await client.cache.exists(keys.ratings_prior(url))
    assert (await client.job(prior_job_id(refreshed.name)).info()).function == "refresh_rating_prior"
    store.close()
