"""Rating jobs: keep Bayesian ratings current in the ratings store.

* ``recalculate_rating(image_id)``: one image, as in the seed application;
* ``recalculate_ratings(image_ids)``: a whole chunk in one set-based query (one job per image spends
  most of its time in queue bookkeeping); :func:`mediaq.client.ratings.enqueue_library` enqueues a
  library in such chunks;
* ``recalculate_ratings_range(start, stop)``: every known image in a key range, in one range scan
  (the chunks of a whole library: ``enqueue_library`` with no ids);
* ``refresh_rating_prior()``: the prior alone, into the cache (enqueued ahead of a library's chunks).

Both use the seed prior ``(C, m)``, cached in Redis db ``cache_db`` (``ctx['cache']``) for
``settings.rating_cache_ttl`` seconds (300) under :func:`mediaq.runtime.keys.ratings_prior`, or an
explicit ``C``/``m``.
An unknown image id is reported in the result (``"unknown": [...]``), never raised. A locked or
unreachable database raises :class:`~mediaq.errors.TransientJobError` (``ratings_db_unavailable``,
retried with the seed backoff); bad arguments :class:`~mediaq.errors.PermanentJobError`
(``bad_argument``).

With ``data/ratings.csv`` loaded (the single 10 of ``synthetic-0022`` ranks below ``coffee.jpg``'s 19
ratings of mean 8.3: that is the point of the prior)::

>>> job_id = await client.enqueue_job("recalculate_rating", "astronaut.jpg")     # doctest: +SKIP
>>> await client.result(job_id)                                                 # doctest: +SKIP
{'image_id': 'astronaut.jpg', 'count': 23, 'mean': 6.565..., 'bayesian': 6.406..., 'unknown': [],
 'C': 7.761..., 'm': 5.936..., 'prior_source': 'db'}
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from mediaq.errors import ConfigError, PermanentJobError, TransientJobError
from mediaq.runtime import keys
from mediaq.runtime.jobspec import job, resources
from mediaq.runtime.settings import redact_url

__all__ = ["close_stores", "get_prior", "recalculate_rating", "recalculate_ratings", "recalculate_ratings_range",
           "refresh_rating_prior"]

logger = logging.getLogger("mediaq.jobs.ratings")

STORE_KEY = "mediaq_ratings_stores"  # {url: RatingsStore} (an engine and its pool), per process
LOCK_KEY = "mediaq_ratings_locks"  # {event loop: lock}: single flight for opening stores and the prior


async def get_prior(
    cache: Any,
    key: str,
    compute: Callable[[], Awaitable[tuple[float, float]]],
    ttl: float,
    lock: asyncio.Lock | None = None,
) -> tuple[float, float, str]:
    """``(C, m, source)``: the prior cached at ``key``, else ``await compute()`` stored for ``ttl``
    seconds. ``source`` is ``"cache"`` or ``"db"``. ``lock`` makes concurrent misses in one process
    compute once. A cache that fails (Redis away) is skipped, not fatal: the database is the truth.
    ``ttl <= 0`` or ``cache=None`` disables caching.
    """
    if cache is None or ttl <= 0:
        C, m = await compute()
        return C, m, "db"
    cached = await _read(cache, key)
    if cached is not None:
        return cached[0], cached[1], "cache"
    async with lock if lock is not None else contextlib.nullcontext():
        cached = await _read(cache, key)  # another job may have filled it while we waited
        if cached is not None:
            return cached[0], cached[1], "cache"
        C, m = await compute()
        try:
            await cache.set(key, json.dumps([C, m]), px=max(1, int(ttl * 1000)))
        except Exception as exc:  # the cache is an optimisation
            logger.warning("could not cache the rating prior in Redis: %s", exc)
        return C, m, "db"


async def _read(cache: Any, key: str) -> tuple[float, float] | None:
    try:
        raw = await cache.get(key)
    except Exception as exc:
        logger.warning("could not read the cached rating prior from Redis: %s", exc)
        return None
    if raw is None:
        return None
    try:
        C, m = json.loads(raw)
        return float(C), float(m)
    except (ValueError, TypeError):  # garbage under our key: recompute and overwrite
        return None


@job(timeout=60)
async def recalculate_rating(ctx: dict[str, Any], image_id: str, C: float | None = None,
                             m: float | None = None) -> dict[str, Any]:
    """Recalculate one image's count, mean and Bayesian rating (the seed's per-image job).

    Returns ``{"image_id", "count", "mean", "bayesian", "unknown", "C", "m", "prior_source"}``;
    for an unknown id ``count``/``mean``/``bayesian`` are ``None`` and ``unknown`` is ``[image_id]``.
    """
    image_id = _image_id(image_id, "image_id")
    prior = _given_prior(C, m)
    store = await _store(ctx)
    C, m, source = prior if prior else await _cached_prior(ctx, store)
    with _db_errors(store.url):
        got = await asyncio.to_thread(store.recalculate, [image_id], C, m, with_stats=True)
    stats = got["stats"][0] if got["stats"] else {"count": None, "mean": None, "bayesian": None}
    return {"image_id": image_id, "count": stats["count"], "mean": stats["mean"], "bayesian": stats["bayesian"],
            "unknown": got["unknown"], "C": C, "m": m, "prior_source": source}


@job(timeout=300)
async def recalculate_ratings(ctx: dict[str, Any], image_ids: list[str], C: float | None = None,
                              m: float | None = None) -> dict[str, Any]:
    """Recalculate a chunk of images in one set-based query.

    Returns ``{"updated": n, "unknown": [ids], "C", "m", "prior_source", "db_seconds"}`` (``db_seconds``:
    time in the store, including any wait for the write lock).
    """
    if not isinstance(image_ids, (list, tuple)):
        raise PermanentJobError("bad_argument", "image_ids must be a list of image ids, "
                                f"not {type(image_ids).__name__}", value=repr(image_ids)[:200])
    if all(type(value) is str and 0 < len(value) <= 255 for value in image_ids):  # the usual case, fast
        ids = list(image_ids)
    else:
        ids = [_image_id(value, f"image_ids[{i}]") for i, value in enumerate(image_ids)]
    return await _recalculate_chunk(ctx, C, m, lambda store, C, m: store.recalculate(ids, C, m))


@job(timeout=300)
async def recalculate_ratings_range(ctx: dict[str, Any], start: str | None = None, stop: str | None = None,
                                    C: float | None = None, m: float | None = None) -> dict[str, Any]:
    """Recalculate every known image whose id is in ``[start, stop)`` (``None``: open on that side)
    with one range scan: the whole-library form (:func:`~mediaq.client.ratings.enqueue_library` with
    no ids splits the library into such ranges, see
    :meth:`~mediaq.runtime.ratings_store.RatingsStore.recalculate_range`).

    Returns what :func:`recalculate_ratings` returns (``unknown`` is always empty: a range holds
    only images the store knows).
    """
    for name, value in (("start", start), ("stop", stop)):
        if value is not None and (type(value) is not str or len(value) > 255):
            raise PermanentJobError("bad_argument", f"{name}={value!r} must be an image id (a string of at most "
                                    "255 characters) or None (open)", value=repr(value)[:200])
    return await _recalculate_chunk(ctx, C, m, lambda store, C, m: store.recalculate_range(start, stop, C, m))


@job(timeout=60)
async def refresh_rating_prior(ctx: dict[str, Any]) -> dict[str, Any]:
    """Compute the seed prior ``(C, m)`` from the database and cache it for ``rating_cache_ttl`` s.

    :func:`~mediaq.client.ratings.enqueue_library` with ``refresh_prior=True`` enqueues it ahead of
    the chunks, so a worker computes the prior while the client is still enqueueing them; the chunk
    jobs of that worker wait for it (one computation per process) instead of starting it after
    they are picked up. Returns ``{"C", "m", "prior_source"}`` (``"cache"`` when a chunk job of
    this process filled the cache first).

    >>> await client.enqueue_job("refresh_rating_prior")     # doctest: +SKIP
    """
    store = await _store(ctx)
    C, m, source = await _cached_prior(ctx, store)
    return {"C": C, "m": m, "prior_source": source}


# -- helpers ---------------------------------------------------------------------------------------
async def _recalculate_chunk(ctx: dict[str, Any], C: float | None, m: float | None,
                             recalculate: Callable[[Any, float, float], dict[str, Any]]) -> dict[str, Any]:
    """What both chunk jobs do once their arguments are checked: the prior (given, or the cached seed
    prior), ``recalculate(store, C, m)`` in a thread, and their common result."""
    prior = _given_prior(C, m)
    store = await _store(ctx)
    C, m, source = prior if prior else await _cached_prior(ctx, store)
    started = time.perf_counter()
    with _db_errors(store.url):
        got = await asyncio.to_thread(recalculate, store, C, m)
    return {"updated": got["updated"], "unknown": got["unknown"], "C": C, "m": m, "prior_source": source,
            "db_seconds": round(time.perf_counter() - started, 6)}


def _image_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise PermanentJobError("bad_argument", f"{name}={value!r} must be a non-empty string (or an integer)",
                                value=repr(value)[:200])
    text = str(value)
    if len(text) > 255:
        raise PermanentJobError("bad_argument", f"{name} is {len(text)} characters long; at most 255",
                                value=text[:200])
    return text


def _given_prior(C: Any, m: Any) -> tuple[float, float, str] | None:
    if C is None and m is None:
        return None
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (C, m))
    if not ok or C < 0:
        raise PermanentJobError("bad_argument", f"prior C={C!r}, m={m!r}: pass both, as finite numbers with C >= 0 "
                                "(or neither, for the seed prior)", C=repr(C), m=repr(m))
    return float(C), float(m), "given"


async def _store(ctx: dict[str, Any]) -> Any:
    """This process's :class:`~mediaq.runtime.ratings_store.RatingsStore` for the settings' URL, opened once."""
    from mediaq.runtime.ratings_store import RatingsStore

    url = ctx["settings"].resolved_ratings_url
    stores = resources(ctx).setdefault(STORE_KEY, {})
    store = stores.get(url)
    if store is not None:
        return store
    async with _lock(ctx):
        store = stores.get(url)
        if store is None:
            with _db_errors(url):
                try:
                    store = await asyncio.to_thread(RatingsStore, url)
                except ConfigError as exc:
                    raise PermanentJobError("bad_config", f"ratings store: {exc}", url=redact_url(url)) from None
                except ImportError as exc:
                    raise PermanentJobError("bad_config", f"ratings store {redact_url(url)}: database driver "
                                            f"missing ({exc}); install it in the worker's environment",
                                            url=redact_url(url)) from None
            stores[url] = store
    return store


def close_stores(ctx: dict[str, Any] | None = None) -> None:
    """Dispose of the stores this process opened (for ``ctx``'s resources, else the process-wide ones).
    Runs at exit for the process-wide ones, so SQLite checkpoints its WAL when a worker stops."""
    stores = resources(ctx or {}).pop(STORE_KEY, {})
    for store in stores.values():
        with contextlib.suppress(Exception):
            store.close()


atexit.register(close_stores)


def _lock(ctx: dict[str, Any]) -> asyncio.Lock:
    """One lock per event loop (an asyncio lock cannot be shared between loops)."""
    locks = resources(ctx).setdefault(LOCK_KEY, weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    lock = locks.get(loop)
    if lock is None:
        lock = locks[loop] = asyncio.Lock()
    return lock


async def _cached_prior(ctx: dict[str, Any], store: Any) -> tuple[float, float, str]:
    async def compute() -> tuple[float, float]:
        with _db_errors(store.url):
            return await asyncio.to_thread(store.prior)

    ttl = float(ctx["settings"].rating_cache_ttl)
    return await get_prior(ctx.get("cache"), keys.ratings_prior(store.url), compute, ttl, _lock(ctx))


@contextlib.contextmanager
def _db_errors(url: str) -> Iterator[None]:
    """Database errors as job errors: connection trouble and locks are transient, the rest permanent."""
    import sqlalchemy.exc as sa_exc

    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise TransientJobError("ratings_db_unavailable", f"ratings database {redact_url(url)} is locked or "
                                f"unreachable: {reason}", url=redact_url(url)) from None
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientJobError("ratings_db_unavailable", f"lost the connection to {redact_url(url)}: {exc.orig}",
                                    url=redact_url(url)) from None
        raise PermanentJobError("ratings_db_error", f"ratings database {redact_url(url)} refused the statement: "
                                f"{str(exc.orig).splitlines()[0]}", url=redact_url(url)) from None
