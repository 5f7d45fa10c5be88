"""Recalculate a whole library through the queue, in chunks instead of one job per image: with no
ids, one ``recalculate_ratings_range`` job per key range of about ``chunk_size`` images (one range
scan each); with ids, one ``recalculate_ratings`` job per ``chunk_size`` of them (one set-based query each).

>>> import mediaq
>>> from mediaq.client.ratings import enqueue_library
>>> client = await mediaq.connect()                              # doctest: +SKIP
>>> batch = await enqueue_library(client)                        # every known image, in key ranges  # doctest: +SKIP
>>> await batch.wait()                                           # doctest: +SKIP
>>> (await batch.results())["result"].str["unknown"].explode().dropna()  # ids nobody knew  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mediaq.errors import ConfigError
from mediaq.runtime import keys

if TYPE_CHECKING:
    from mediaq.client.batch import Batch
    from mediaq.client.connection import Client

__all__ = ["MAX_AUTO_CHUNK", "chunk_job_id", "enqueue_library", "prior_job_id", "range_job_id"]

#: the largest chunk ``chunk_size=None`` makes (a 20k-id job runs ~0.1 s on SQLite; larger ones only
#: add to the job's payload and to what a retry redoes)
MAX_AUTO_CHUNK = 20_000


def chunk_job_id(batch: str, image_ids: list[str]) -> str:
    """The job id of one chunk: ``ratings:<batch>:<digest of its ids>``. Deterministic, so rerunning
    :func:`enqueue_library` with the same ``batch`` name skips chunks already enqueued or done, while a
    new batch (the default) recalculates again.

    >>> chunk_job_id("lib", ["a", "b"])
    'ratings:lib:f04cdced9736a69d'
    """
    digest = hashlib.sha256("\x1f".join(image_ids).encode()).hexdigest()[:16]
    return f"ratings:{batch}:{digest}"


def range_job_id(batch: str, start: str | None, stop: str | None) -> str:
    """The job id of one key-range chunk of a whole-library run (``enqueue_library`` with no ids):
    ``ratings:<batch>:range:<digest of its bounds>``, deterministic as :func:`chunk_job_id` is.

    >>> range_job_id("lib", None, "img0001000")
    'ratings:lib:range:37cc2d891fcc1b60'
    """
    digest = hashlib.sha256(json.dumps([start, stop]).encode()).hexdigest()[:16]
    return f"ratings:{batch}:range:{digest}"


def prior_job_id(batch: str) -> str:
    """The id of the ``refresh_rating_prior`` job that ``enqueue_library(..., refresh_prior=True)``
    enqueues ahead of batch ``batch``'s chunks (outside the batch: its result has no chunk's columns).

    >>> prior_job_id("lib")
    'ratings:lib:prior'
    """
    return f"ratings:{batch}:prior"


async def enqueue_library(
    client: Client,
    image_ids: Iterable[object] | None = None,
    chunk_size: int | None = None,
    batch: str | None = None,
    *,
    prior: tuple[float, float] | None = None,
    refresh_prior: bool = False,
    ratings_url: str | None = None,
) -> Batch:
    """Enqueue the recalculation of a whole library, or of ``image_ids``, ``chunk_size`` images per
    job, in one named :class:`~mediaq.client.batch.Batch` (``batch``; default a new name).

    * No ``image_ids`` (the whole library of the store at ``ratings_url``, default
      ``client.settings.resolved_ratings_url``): ``recalculate_ratings_range`` jobs, one per key range
      of about ``chunk_size`` rated images (boundaries read from the database:
      :meth:`~mediaq.runtime.ratings_store.RatingsStore.library_plan`; job ids :func:`range_job_id`).
      The first range is open below and the last open above, so images added after the
      boundaries were read are recalculated too, as are registered images without ratings; each
      job scans its range (cheaper than looking up a list of ids) and recalculates every image in
      it. ``unknown`` is then always empty.
    * ``image_ids``: ``recalculate_ratings`` jobs with ``chunk_size`` of those ids each (job ids
      :func:`chunk_job_id`); ids nobody knows come back in ``unknown``.

    Both give the same result columns (``updated``, ``unknown``, ``C``, ``m``, ``prior_source``,
    ``db_seconds``) and the same stats.

    Chunk size: a worker starts about ``max_jobs`` jobs per poll (10 per poll), and chunk jobs
    of 1000 ids take a few ms, so a library of 100 chunks waits on ~10 polls. The default
    ``chunk_size=None`` makes ``max_jobs`` chunks (``ceil(len / settings.max_jobs)`` ids each, from 1000 to 20,000): one
    poll starts them all. Many workers? Use ``len / (workers * max_jobs)`` or smaller.

    ``prior=(C, m)`` uses that prior in every chunk (experiments); otherwise the workers use the seed
    prior cached in Redis for ``rating_cache_ttl`` s, and ``refresh_prior=True`` drops the cached one
    first so the run starts from the current ratings. For a whole library the client then reads
    the prior in the same pass as the boundaries (it scans the same keys, so the prior costs one
    ``count``/``sum`` scan on a second connection instead of two scans in a worker) and caches it
    for the chunks, whose ``prior_source`` is then ``"cache"``. For id lists it enqueues a
    ``refresh_rating_prior`` job (id :func:`prior_job_id`, outside the batch) before the chunks, so
    that a worker scans for the prior while the chunks are still being enqueued and picked up,
    instead of after. Should that job fail or run elsewhere, or the cache be off
    (``rating_cache_ttl=0``), the chunks compute the prior themselves, as without it.
    """
    from mediaq.client.batch import new_batch_name
    from mediaq.pure.ratings_input import clean_ids
    from mediaq.runtime.ratings_store import RatingsStore

    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ConfigError(f"chunk_size={chunk_size!r} must be an integer >= 1, or None (max_jobs chunks)")
    url = ratings_url or client.settings.resolved_ratings_url
    extra: dict[str, Any] = {}
    if prior is not None:
        C, m = prior
        from mediaq.pure.ratings import check_prior

        check_prior(C, m)
        extra = {"C": float(C), "m": float(m)}
    name = batch or new_batch_name("recalculate_ratings")
    if refresh_prior:
        await client.cache.delete(keys.ratings_prior(url))
    if image_ids is None:
        ttl = float(client.settings.rating_cache_ttl)
        fill = refresh_prior and prior is None and ttl > 0
        store = await asyncio.to_thread(RatingsStore, url)
        try:
            bounds, fresh = await asyncio.to_thread(_library_plan, store, chunk_size, client.settings.max_jobs, fill)
        finally:
            store.close()
        if fresh is not None:  # read in the same pass as the bounds: cached for the chunks, as the prior job would
            await client.cache.set(keys.ratings_prior(url), json.dumps(list(fresh)), px=max(1, int(ttl * 1000)))
        ranges = [{"start": lo, "stop": hi, **extra} for lo, hi in zip([None, *bounds], [*bounds, None], strict=True)]
        b = await client.enqueue_many("recalculate_ratings_range", ranges, batch=name,
                                      job_id=lambda item: range_job_id(name, item["start"], item["stop"]))
    else:
        if refresh_prior and prior is None:  # first, so a worker computes it while the chunks are enqueued
            await client.enqueue_job("refresh_rating_prior", _job_id=prior_job_id(name))
        ids = list(dict.fromkeys(clean_ids(image_ids)))
        if chunk_size is None:
            chunk_size = _auto_chunk(len(ids), client.settings.max_jobs)
        chunks = [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]
        items = [{"image_ids": chunk, **extra} for chunk in chunks]
        b = await client.enqueue_many("recalculate_ratings", items, batch=name,
                                      job_id=lambda item: chunk_job_id(name, item["image_ids"]))
    skipped = b.skipped
    await b.load()  # ids ready for len(batch) / batch.ids
    b.skipped = skipped
    return b


def _auto_chunk(images: int, max_jobs: int) -> int:
    """``chunk_size=None``: ``max_jobs`` chunks of 1000 to ``MAX_AUTO_CHUNK`` images."""
    return min(MAX_AUTO_CHUNK, max(1000, -(-images // max_jobs)))


def _library_plan(store: Any, chunk_size: int | None, max_jobs: int,
                  with_prior: bool) -> tuple[list[str], tuple[float, float] | None]:
    """The range boundaries of a whole-library run (every ``chunk_size``-th rated image), and the
    prior read in the same pass when ``with_prior``. ``chunk_size=None``: boundaries every 1000
    images (the pass also counts them), then every ``k``-th of them, for about ``max_jobs`` ranges of
    :func:`_auto_chunk` images (a multiple of 1000)."""
    if chunk_size is not None:
        bounds, _, prior = store.library_plan(chunk_size, with_prior=with_prior)
        return bounds, prior
    fine, images, prior = store.library_plan(1000, with_prior=with_prior)
    step = -(-_auto_chunk(images, max_jobs) // 1000)
    return fine[step - 1 :: step], prior
