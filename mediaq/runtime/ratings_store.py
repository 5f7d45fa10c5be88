"""The ratings store: individual ratings and per-image stats in a SQL database (SQLAlchemy 2 Core).

SQLite is the embedded default (``Settings.resolved_ratings_url``: ``ratings.sqlite3`` in the state
folder, WAL mode, a busy timeout of 30 s or ``?timeout=SECONDS`` in the URL); any SQLAlchemy URL works
otherwise (PostgreSQL, MySQL/MariaDB: the upserts are written for those three dialects).

Tables:

* ``ratings``: ``image_id`` (text), ``user_id`` (integer), ``score`` (a number on the database's
  :class:`~mediaq.pure.ratings.RatingScale`: the seed's whole numbers 1..10 unless the first load said
  otherwise, e.g. MovieLens' half stars 0.5..5); one row per ``(image_id, user_id)`` (a new score from
  the same user replaces the old one).
* ``rating_meta``: ``key`` -> ``value``; ``scale`` is the database's scale, recorded by the first load,
  so later loads (and notebooks) cannot mix scales. A table made before the scale was recorded holds
  the seed's 1..10.
* ``rating_stats``: ``image_id``, ``count``, ``mean`` (NULL when unrated), ``bayesian``, ``updated_at``.
  An image is *known* when it has ratings or a stats row (:meth:`RatingsStore.add_images` registers
  images that have no ratings yet); recalculating an unknown id reports it instead of inventing a row.

Recalculation is set based: one ``INSERT .. SELECT .. GROUP BY .. ON CONFLICT DO UPDATE`` for the
rated images of a chunk (on SQLite one statement per chunk, its ids in one JSON parameter); only when
that statement wrote fewer rows than there are ids (or on MySQL/MariaDB, whose row counts are not
exact for upserts), one anti-join ``SELECT`` for the ids that have no ratings, then an ``UPDATE`` to 0
for the known ones, as in the seed. The prior ``(C, m)`` comes from SQL aggregates. A whole library
goes by key ranges instead (:meth:`RatingsStore.range_bounds`, :meth:`RatingsStore.recalculate_range`):
``image_id >= ? AND image_id < ?`` is a range scan of the clustered key, ~30% cheaper than looking up
a list of the same ids, and a range holds no unknown ids.

>>> store = RatingsStore("sqlite://")          # in memory; a file URL or Settings in real use
>>> import pandas as pd
>>> store.load_frame(pd.DataFrame({"image_id": ["a", "a", "b"], "user_id": [1, 2, 1], "score": [10, 8, 3]}))
3
>>> store.scale
RatingScale(low=1, high=10, step=1)
>>> store.prior()
(1.5, 7.0)
>>> store.recalculate(["a", "b", "nope"])["unknown"]
['nope']
>>> store.stats()["bayesian"].round(3).to_dict()
{'a': 8.143, 'b': 5.4}
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mediaq.errors import ConfigError, InvalidRatingsError
from mediaq.pure.ratings import SEED_SCALE, RatingScale, check_prior
from mediaq.pure.ratings_input import clean_ids, validate_ratings
from mediaq.runtime.sql_engine import make_engine, resolve_busy_timeout

if TYPE_CHECKING:
    from mediaq.runtime.settings import Settings

__all__ = ["InvalidRatingsError", "RatingsStore", "metadata", "rating_meta", "rating_stats", "ratings"]

#: ids per statement when recalculating (keeps bind parameters well under every backend's limit)
ID_BATCH = 5000
#: rows per executemany when loading
LOAD_BATCH = 50_000

metadata = sa.MetaData()

ratings = sa.Table(
    "ratings",
    metadata,
    sa.Column("image_id", sa.String(255), primary_key=True),
    sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
    # any scale (checked against rating_meta's on load); tables made before scales were integer 1..10
    sa.Column("score", sa.Double, nullable=False),
    sqlite_with_rowid=False,  # clustered by (image_id, user_id): a chunk of ids is a few range scans
)

rating_meta = sa.Table(
    "rating_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

rating_stats = sa.Table(
    "rating_stats",
    metadata,
    sa.Column("image_id", sa.String(255), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    # Double, not Float: SQLAlchemy's Float is a 4-byte FLOAT on MySQL/MariaDB (6 significant digits)
    sa.Column("mean", sa.Double, nullable=True),
    sa.Column("bayesian", sa.Double, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sqlite_with_rowid=False,
)


class RatingsStore:
    """Ratings and per-image Bayesian stats in one SQL database.

    ``RatingsStore(url)`` or ``RatingsStore.from_settings(settings)``; tables are created if missing.
    Thread safe (one engine, a connection pool); on SQLite, writes from one process take turns on a
    lock and use ``BEGIN IMMEDIATE`` so concurrent writers wait for the busy timeout, never deadlock.

    >>> RatingsStore("sqlite://").recalculate([])
    {'updated': 0, 'unknown': [], 'C': 0.0, 'm': 0.0}
    """

    def __init__(self, url: str, *, busy_timeout: float | None = None, create: bool = True,
                 **engine_kw: Any) -> None:
        self.url = str(url)
        self.busy_timeout = resolve_busy_timeout(self.url, busy_timeout)
        self.engine: Engine = make_engine(self.url, self.busy_timeout, **engine_kw)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = threading.RLock() if self.is_sqlite else None
        self._memory = isinstance(self.engine.pool, sa.pool.StaticPool)
        # SQLite gets a chunk's ids as one JSON parameter: no bind limit, so one statement per chunk
        self._id_batch = 1 << 62 if self.is_sqlite else ID_BATCH
        self._cache: dict[Any, Any] = {}
        if create:
            self.create_tables()

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> RatingsStore:
        """The store at ``settings.resolved_ratings_url`` (SQLite in ``state_dir`` by default)."""
        return cls(settings.resolved_ratings_url, **kw)

    def __repr__(self) -> str:
        return f"RatingsStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    dispose = close  # the name the worker's shutdown looks for on per-process resources

    def create_tables(self) -> None:
        """Create ``ratings``, ``rating_stats`` and ``rating_meta`` if they do not exist."""
        with self._writing() as conn:
            metadata.create_all(conn, checkfirst=True)

    # -- the scale ----------------------------------------------------------------------------------
    @property
    def scale(self) -> RatingScale:
        """The scale of the scores in this database (the seed's 1..10 until a load records another)."""
        with self._reading() as conn:
            return self._recorded_scale(conn) or SEED_SCALE

    @staticmethod
    def _recorded_scale(conn: Connection) -> RatingScale | None:
        value = conn.scalar(sa.select(rating_meta.c.value).where(rating_meta.c.key == "scale"))
        return None if value is None else RatingScale.parse(value)

    def _scale_for(self, conn: Connection, wanted: Any) -> tuple[RatingScale, bool]:
        """The scale a load uses, and whether it still has to be recorded; :class:`ConfigError` when
        ``wanted`` cannot go into this database."""
        recorded = self._recorded_scale(conn)
        scale = RatingScale.parse(wanted) if wanted is not None else recorded or SEED_SCALE
        if recorded is not None:
            if scale != recorded:
                raise ConfigError(f"{self!r} holds ratings on the {recorded} scale, not {scale}: load these into "
                                  f"another database (MEDIAQ_RATINGS_URL), or pass scale={recorded}")
            return scale, False
        if scale != SEED_SCALE:  # a table from before scales were recorded holds the seed's 1..10
            rated = conn.scalar(sa.select(sa.func.count()).select_from(ratings))
            whole = any(c["name"] == "score" and isinstance(c["type"], sa.Integer)
                        for c in sa.inspect(conn).get_columns("ratings"))
            if rated or (whole and not scale.integral):
                raise ConfigError(f"{self!r} already holds ratings on the seed's scale ({SEED_SCALE})"
                                  f"{' in a column of whole numbers' if whole else ''}: load ratings on the {scale} "
                                  "scale into another database (MEDIAQ_RATINGS_URL)")
        return scale, True

    # -- loading ------------------------------------------------------------------------------------
    def load_frame(self, frame: pd.DataFrame, *, columns: Mapping[str, str] | None = None, scale: Any = None,
                   duplicates: str = "error", _lines: bool = False) -> int:
        """Insert ratings from a DataFrame with columns ``image_id``, ``user_id``, ``score`` (or others
        named by ``columns``: ``{"movieId": "image_id", ...}``); returns the number of rows written.

        ``scale``: a :class:`~mediaq.pure.ratings.RatingScale` or ``(low, high, step)``; default the
        database's (the seed's 1..10 for a new one). The first load records it; a later load on
        another scale is a :class:`ConfigError`. All or nothing: every row is validated first (see
        :mod:`mediaq.pure.ratings_input`) and :class:`InvalidRatingsError` names the bad rows. An
        existing ``(image_id, user_id)`` rating is replaced. Repeated pairs *within* the input are an
        error with ``duplicates="error"`` (default) or resolved by the last one with ``"last"``.

        >>> s = RatingsStore("sqlite://")
        >>> s.load_frame(pd.DataFrame({"image_id": ["a"], "user_id": [1], "score": [11]}))
        ... # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        InvalidRatingsError: 1 rating row(s) rejected, nothing written: score must be an integer 1..10:
        row 0 (image_id='a', user_id=1, score=11)
        """
        with self._reading() as conn:
            chosen, _ = self._scale_for(conn, scale)
        clean = validate_ratings(frame, columns=columns, scale=chosen, duplicates=duplicates, lines=_lines)
        if clean.empty:
            return 0
        stmt = self._upsert(ratings, ["image_id", "user_id"], ["score"])
        clean = clean.sort_values(["image_id", "user_id"], kind="stable")  # in key order: B-tree appends
        columns_out = {name: clean[name].tolist() for name in ("image_id", "user_id", "score")}
        with self._writing() as conn:
            again, record = self._scale_for(conn, chosen)  # in the write transaction: no other scale since
            if record:
                conn.execute(rating_meta.insert(), [{"key": "scale", "value": again.text}])
            if self.is_sqlite:  # straight to the driver's executemany: 3-4x faster than per-row dicts
                compiled = stmt.compile(dialect=self.engine.dialect)
                rows = list(zip(*(columns_out[name] for name in compiled.positiontup), strict=True))
                for start in range(0, len(rows), LOAD_BATCH):
                    conn.exec_driver_sql(str(compiled), rows[start : start + LOAD_BATCH])
            else:
                records = [dict(zip(columns_out, values, strict=True)) for values in zip(*columns_out.values(),
                                                                                         strict=True)]
                for start in range(0, len(records), LOAD_BATCH):
                    conn.execute(stmt, records[start : start + LOAD_BATCH])
        return len(clean)

    def load_csv(self, path: str | Path, *, columns: Mapping[str, str] | None = None, scale: Any = None,
                 duplicates: str = "error", **read_csv_kw: Any) -> int:
        """Insert ratings from a CSV with a header ``image_id,user_id,score``, or the columns named by
        ``columns`` (see :meth:`load_frame`; ids are kept exactly as written). Errors name the CSV
        line numbers of the bad rows (the header is line 1). MovieLens' ``ratings.csv`` in one call::

            store.load_csv("ml-latest-small/ratings.csv", scale=MOVIELENS_SCALE,
                           columns={"movieId": "image_id", "userId": "user_id", "rating": "score"})
        """
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, **read_csv_kw)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InvalidRatingsError(f"cannot read ratings CSV {str(path)!r}: {exc}") from exc
        frame.index = frame.index + 2  # CSV line numbers
        return self.load_frame(frame, columns=columns, scale=scale, duplicates=duplicates, _lines=True)

    def add_images(self, image_ids: Iterable[object]) -> int:
        """Register images (so that an image with no ratings is known, and gets 0); returns how many
        were new. Existing stats rows are left alone."""
        ids = clean_ids(image_ids)
        if not ids:
            return 0
        now = _now()
        with self._writing() as conn:
            have = set()
            for part in _batches(ids, ID_BATCH):
                have.update(conn.scalars(sa.select(rating_stats.c.image_id).where(rating_stats.c.image_id.in_(part))))
            new = [i for i in dict.fromkeys(ids) if i not in have]
            if new:
                conn.execute(rating_stats.insert(), [
                    {"image_id": i, "count": 0, "mean": None, "bayesian": 0.0, "updated_at": now} for i in new
                ])
        return len(new)

    # -- reading ------------------------------------------------------------------------------------
    def prior(self, conn: Connection | None = None) -> tuple[float, float]:
        """The seed prior from SQL aggregates: ``C`` = ratings / distinct rated images, ``m`` = mean
        score; ``(0.0, 0.0)`` with no ratings."""
        if conn is None and self.is_sqlite and not self._memory:
            n, images, total = self._sqlite_prior_side_by_side()
        elif conn is None:
            with self._reading() as conn:
                n, images, total = conn.execute(self._prior_query()).one()
        else:
            n, images, total = conn.execute(self._prior_query()).one()
        return _prior_of(n, images, total)

    @staticmethod
    def _prior_query() -> Any:
        # SUM, not AVG: MySQL/MariaDB return AVG of integers as a DECIMAL with 4 decimals
        return sa.select(sa.func.count(), sa.func.count(sa.distinct(ratings.c.image_id)), sa.func.sum(ratings.c.score))

    def _sqlite_prior_side_by_side(self) -> tuple[int, int, Any]:
        """``(ratings, distinct rated images, sum of scores)`` from two scans run at once on two
        connections (the driver lets go of the GIL while SQLite works). The CPU is the same as one
        statement's (~80 ms for 1M ratings); the wall time nearly halves only when the second core is
        free (measured 46-88 ms against 88-144 ms on a quiet 2-core machine, no gain under load).
        Each scan reads its own snapshot, so a load that commits between the two starts can tilt the
        prior by its own ratings, as it can between computing a prior and using it (the prior is
        cached for minutes anyway); an empty/non-empty mismatch is read again in one statement.
        ``SELECT DISTINCT`` reads the key in index order: no temporary B-tree, which
        ``count(DISTINCT ..)`` builds."""
        distinct = sa.select(sa.func.count()).select_from(sa.select(ratings.c.image_id).distinct().subquery())
        with ThreadPoolExecutor(1, thread_name_prefix="mediaq-prior") as pool:
            images = pool.submit(self._read_one, distinct)
            n, total = self._read_one(_TOTALS)
            (count_images,) = images.result()
        if bool(n) != bool(count_images):  # a load (or a delete of everything) came between the two
            return self._read_one(self._prior_query())
        return n, count_images, total

    def _read_one(self, query: Any) -> Any:
        """The one row of ``query`` on a read connection of its own (callable from another thread)."""
        with self._reading() as conn:
            return conn.execute(query).one()

    def ratings_frame(self) -> pd.DataFrame:
        """Every rating as a DataFrame (``image_id``, ``user_id``, ``score``)."""
        with self._reading() as conn:
            rows = conn.execute(sa.select(ratings.c.image_id, ratings.c.user_id, ratings.c.score)).all()
        frame = pd.DataFrame(rows, columns=["image_id", "user_id", "score"])
        score = "int64" if self.scale.integral else "float64"
        return frame.astype({"image_id": object, "user_id": "int64", "score": score})

    def stats(self, image_ids: Iterable[object] | None = None) -> pd.DataFrame:
        """Stored per-image stats indexed by ``image_id`` (``count``, ``mean``, ``bayesian``,
        ``updated_at``); only ``image_ids`` (those that are known) when given."""
        cols = [rating_stats.c.image_id, rating_stats.c.count, rating_stats.c.mean, rating_stats.c.bayesian,
                rating_stats.c.updated_at]
        rows: list[Any] = []
        with self._reading() as conn:
            if image_ids is None:
                rows = list(conn.execute(sa.select(*cols)))
            else:
                for part in _batches(clean_ids(image_ids), ID_BATCH):
                    rows.extend(conn.execute(self._stats_query(), self._id_params(part)))
        frame = pd.DataFrame(rows, columns=["image_id", "count", "mean", "bayesian", "updated_at"])
        frame = frame.astype({"image_id": object, "count": "int64", "mean": "float64", "bayesian": "float64"})
        return frame.set_index("image_id")

    def image_ids(self) -> list[str]:
        """Every known image id (rated, or registered in ``rating_stats``), sorted."""
        query = sa.union(sa.select(ratings.c.image_id).distinct(), sa.select(rating_stats.c.image_id))
        with self._reading() as conn:
            return sorted(conn.scalars(query))

    # -- recalculation ------------------------------------------------------------------------------
    def recalculate(
        self,
        image_ids: Iterable[object],
        C: float | None = None,
        m: float | None = None,
        *,
        with_stats: bool = False,
    ) -> dict[str, Any]:
        """Recompute ``count``, ``mean`` and ``bayesian`` of ``image_ids`` in a few set-based statements.

        ``C``/``m`` default to :meth:`prior` (computed in the same transaction); pass them to reuse a
        cached prior or to try another one. Returns plain data: ``{"updated": n, "unknown": [ids],
        "C": C, "m": m}``, plus ``"stats": [{"image_id", "count", "mean", "bayesian"}, ...]`` with
        ``with_stats=True``. Unknown ids (no ratings, not registered) are reported, not written.
        """
        ids = list(dict.fromkeys(clean_ids(image_ids)))
        if (C is None) != (m is None):
            raise ConfigError("pass both C and m (a whole prior), or neither to use the seed prior")
        if C is not None:
            check_prior(C, m)  # type: ignore[arg-type]
        now = _now()
        unknown: set[str] = set()
        rows: list[Any] = []
        with self._writing() as conn:
            if C is None:
                C, m = self.prior(conn)
            for part in _batches(ids, self._id_batch):
                params = self._id_params(part)
                written = self._recalculate_part(conn, params, float(C), float(m), now)  # type: ignore[arg-type]
                if written != len(part):  # some ids have no ratings (or the count is not exact here)
                    unknown.update(self._settle_unrated(conn, part, params, now))
                if with_stats:
                    rows.extend(conn.execute(self._stats_query(), params))
        result: dict[str, Any] = {"updated": len(ids) - len(unknown), "unknown": [i for i in ids if i in unknown],
                                  "C": float(C), "m": float(m)}  # type: ignore[arg-type]
        if with_stats:
            result["stats"] = [{"image_id": i, "count": int(n), "mean": None if r is None else float(r),
                                "bayesian": float(b)} for i, n, r, b, _ in rows]
        return result

    def recalculate_all(self, C: float | None = None, m: float | None = None) -> dict[str, Any]:
        """Recompute every known image in one pass (no id list): the whole-library SQL path."""
        if (C is None) != (m is None):
            raise ConfigError("pass both C and m (a whole prior), or neither to use the seed prior")
        if C is not None:
            check_prior(C, m)  # type: ignore[arg-type]
        now = _now()
        with self._writing() as conn:
            if C is None:
                C, m = self.prior(conn)
            self._recalculate_part(conn, None, float(C), float(m), now)  # type: ignore[arg-type]
            updated = conn.scalar(sa.select(sa.func.count()).select_from(rating_stats))
        return {"updated": int(updated or 0), "unknown": [], "C": float(C), "m": float(m)}  # type: ignore[arg-type]

    def range_bounds(self, size: int) -> list[str]:
        """Boundaries that split the known images into key ranges of about ``size`` images: every
        ``size``-th known id (rated, or registered in ``rating_stats``) in the database's own order
        (its collation: the ranges the database evaluates are then exactly consecutive), from the
        ``size + 1``-th on; ``[]`` for ``size`` images or fewer (one range: everything).

        With boundaries ``b1 < .. < bk`` the ranges ``(None, b1)``, ``[b1, b2)``, .., ``[bk, None)``
        cover every id there is, including ids added after the boundaries were read: the boundaries
        only decide how evenly the work is split. On SQLite, one ``LIMIT 1 OFFSET size`` hop per
        boundary over the merged keys of both tables (SQLite merges the two index-ordered scans
        and stops at the boundary: one pass over the keys in all, ~55 ms for 100k images / 1M
        ratings, against ~160 ms for a window function); elsewhere one ``row_number()`` query.

        >>> s = RatingsStore("sqlite://"); s.add_images(["a", "b", "c", "d", "e"])
        5
        >>> s.range_bounds(2)
        ['c', 'e']
        """
        _check_range_size(size)
        with self._reading() as conn:
            if not self.is_sqlite:
                return list(conn.scalars(self._window_bounds(), {"size": size}))
            hop = self._cache.get("hop")
            if hop is None:
                after = sa.bindparam("after", type_=sa.String)
                hop = self._cache["hop"] = (
                    sa.union(sa.select(ratings.c.image_id).where(ratings.c.image_id >= after),
                             sa.select(rating_stats.c.image_id).where(rating_stats.c.image_id >= after))
                    .order_by(sa.literal_column("image_id")).limit(1).offset(sa.bindparam("size", type_=sa.Integer)))
            return _hops(conn, hop, size)

    def library_plan(self, size: int, *, with_prior: bool = False) -> tuple[list[str], int, tuple[float, float] | None]:
        """``(bounds, rated images, prior or None)`` for a whole-library run in one pass over the keys:
        boundaries every ``size``-th *rated* image id in the database's order (as :meth:`range_bounds`,
        but registered images without ratings do not count towards the split: the ranges still cover
        them), the number of rated images, and with ``with_prior`` the seed prior ``(C, m)``.

        The pass that finds the boundaries counts the rated images on the way (the prior's costly
        ``DISTINCT``), so the prior only adds ``count``/``sum`` over the ratings, read side by side on
        a second connection on SQLite (as :meth:`prior` does). For 100k images / 1M ratings on a
        shared 2-core machine: 59-81 ms for bounds and prior (bench_ratings, 2 runs), against
        56-60 ms for :meth:`range_bounds` alone and ~100 ms more for :meth:`prior`. The two
        connections read their own snapshots (see :meth:`_sqlite_prior_side_by_side`).

        >>> s = RatingsStore("sqlite://")
        >>> _ = s.load_frame(pd.DataFrame({"image_id": list("aabcde"), "user_id": [1, 2, 1, 1, 1, 1],
        ...                                "score": [10, 8, 3, 5, 5, 5]}))
        >>> s.library_plan(2, with_prior=True)
        (['c', 'e'], 5, (1.2, 6.0))
        """
        _check_range_size(size)
        if not self.is_sqlite or self._memory:
            with self._reading() as conn:
                bounds = list(conn.scalars(self._window_bounds(rated_only=True), {"size": size}))
                images = conn.scalar(sa.select(sa.func.count(sa.distinct(ratings.c.image_id))))
                prior = self.prior(conn) if with_prior else None
            return bounds, int(images or 0), prior
        with ThreadPoolExecutor(1, thread_name_prefix="mediaq-prior") as pool:
            summed = pool.submit(self._read_one, _TOTALS) if with_prior else None
            bounds, images = self._sqlite_rated_hops(size)
            n, total = summed.result() if summed is not None else (None, None)
        if summed is None:
            return bounds, images, None
        if bool(n) != bool(images):  # a load (or a delete of everything) came between the two
            return bounds, images, self.prior()
        return bounds, images, _prior_of(n, images, total)

    def _sqlite_rated_hops(self, size: int) -> tuple[list[str], int]:
        """Every ``size``-th distinct rated id by ``LIMIT 1 OFFSET`` hops, and the count of them (the
        hops plus the tail), in one read transaction (one snapshot)."""
        if "rated_hop" not in self._cache:
            after = sa.bindparam("after", type_=sa.String)
            rated = sa.select(ratings.c.image_id).distinct().where(ratings.c.image_id >= after)
            self._cache["rated_hop"] = rated.order_by(ratings.c.image_id).limit(1).offset(
                sa.bindparam("size", type_=sa.Integer))
            self._cache["rated_tail"] = sa.select(sa.func.count()).select_from(rated.subquery())
        with self._reading() as conn, conn.begin():
            bounds = _hops(conn, self._cache["rated_hop"], size)
            tail = conn.scalar(self._cache["rated_tail"], {"after": bounds[-1] if bounds else ""})
        return bounds, len(bounds) * size + int(tail or 0)

    @staticmethod
    def _window_bounds(rated_only: bool = False) -> Any:
        known = (sa.select(ratings.c.image_id).distinct() if rated_only
                 else sa.union(sa.select(ratings.c.image_id), sa.select(rating_stats.c.image_id))).subquery()
        numbered = sa.select(known.c.image_id,
                             sa.func.row_number().over(order_by=known.c.image_id).label("n")).subquery()
        size = sa.bindparam("size", type_=sa.Integer)
        return (sa.select(numbered.c.image_id).where(numbered.c.n > size, (numbered.c.n - 1) % size == 0)
                .order_by(numbered.c.n))

    def recalculate_range(self, start: str | None, stop: str | None, C: float | None = None,
                          m: float | None = None) -> dict[str, Any]:
        """Recompute every known image whose id is in ``[start, stop)`` (``None``: open on that side)
        with one range scan: the whole-library form of :meth:`recalculate` (see :meth:`range_bounds`).

        Unlike an id list, a range means "every image in it", so nothing in it is unknown: images
        with ratings are upserted, registered images without ratings go back to 0 (only when the
        upsert's row count leaves room for them, as in :meth:`recalculate`). Returns
        ``{"updated": n, "unknown": [], "C": C, "m": m}``, ``n`` the known images in the range.

        >>> s = RatingsStore("sqlite://")
        >>> _ = s.load_frame(pd.DataFrame({"image_id": ["a", "b", "c"], "user_id": [1, 1, 1], "score": [4, 6, 8]}))
        >>> s.recalculate_range("b", None)["updated"], sorted(s.stats().index)
        (2, ['b', 'c'])
        """
        if (C is None) != (m is None):
            raise ConfigError("pass both C and m (a whole prior), or neither to use the seed prior")
        if C is not None:
            check_prior(C, m)  # type: ignore[arg-type]
        now = _now()
        bounds = (start is not None, stop is not None)
        params = {"lo": start, "hi": stop}
        with self._writing() as conn:
            if C is None:
                C, m = self.prior(conn)
            values = {"cm": float(C) * float(m), "c": float(C), "now": now, **params}  # type: ignore[arg-type]
            written = conn.execute(self._statements("upsert", bounds), values).rowcount
            exact = self.engine.dialect.name in ("sqlite", "postgresql") and written is not None and written >= 0
            known = conn.scalar(self._statements("known", bounds), params)
            if not exact or known != written:  # some known images in the range have no ratings left
                conn.execute(self._statements("unrated", bounds), values)
        return {"updated": int(known or 0), "unknown": [], "C": float(C), "m": float(m)}  # type: ignore[arg-type]

    def _recalculate_part(self, conn: Connection, params: dict[str, Any] | None, C: float, m: float,
                          now: dt.datetime) -> int:
        """Upsert the rated images among the ids in ``params``; with ``params=None`` every rated image,
        and known images left without ratings go back to 0. Statements are built once (SQLAlchemy
        then reuses their compiled form).

        Returns the number of rated images written when the database counts an upsert's rows
        exactly (SQLite, PostgreSQL: one per inserted or updated row), else -1 (MySQL/MariaDB count
        an updated row as 2, or 0 when unchanged)."""
        values = {"cm": C * m, "c": C, "now": now, **(params or {})}
        written = conn.execute(self._statements("upsert", params is not None), values).rowcount
        if params is None:
            conn.execute(self._statements("unrated", False), values)
        exact = self.engine.dialect.name in ("sqlite", "postgresql")
        return written if exact and written is not None and written >= 0 else -1

    def _settle_unrated(self, conn: Connection, ids: Sequence[str], params: dict[str, Any],
                        now: dt.datetime) -> set[str]:
        """After the upsert: the ids without any rating are set back to 0 when known, and returned
        when unknown. One anti-join per chunk (cheaper than an UPDATE probing every id); skipped when
        the upsert's row count shows that every id had ratings (the usual case)."""
        if self.is_sqlite:
            if "no_ratings" not in self._cache:
                je = self._json_ids()
                self._cache["no_ratings"] = sa.select(je.c.value).where(
                    ~sa.exists().where(ratings.c.image_id == je.c.value))
            unrated = set(conn.scalars(self._cache["no_ratings"], params))
        else:
            rated = conn.scalars(sa.select(ratings.c.image_id).where(self._in_ids(ratings.c.image_id)).distinct(),
                                 params)
            unrated = set(ids) - set(rated)
        if not unrated:
            return set()
        some = sa.bindparam("some", expanding=True)
        conn.execute(rating_stats.update().where(rating_stats.c.image_id.in_(some))
                     .values(count=0, mean=None, bayesian=0.0, updated_at=now), {"some": sorted(unrated)})
        known = conn.scalars(sa.select(rating_stats.c.image_id).where(rating_stats.c.image_id.in_(some)),
                             {"some": sorted(unrated)})
        return unrated - set(known)

    def _statements(self, kind: str, by: bool | tuple[bool, bool]) -> Any:
        """The statement ``kind`` (``upsert``, ``unrated``, ``known``) for the ids in a parameter
        (``by=True``), every image (``False``), or a key range ``(has start, has stop)``."""
        key = (kind, by)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        r = ratings.c
        if isinstance(by, tuple):
            def where(column: Any) -> Any:
                lo, hi = by
                return sa.and_(sa.true(), *([column >= sa.bindparam("lo", type_=sa.String)] if lo else []),
                               *([column < sa.bindparam("hi", type_=sa.String)] if hi else []))
        elif by:
            where = self._in_ids
        else:
            def where(column: Any) -> Any:
                return sa.true()
        if kind == "upsert":
            n = sa.func.count()
            total = sa.cast(sa.func.sum(r.score), sa.Double)  # one aggregate fewer than AVG: ~15% faster
            agg = sa.select(
                r.image_id,
                n,
                total / n,
                (sa.bindparam("cm", type_=sa.Float) + total) / (sa.bindparam("c", type_=sa.Float) + n),
                sa.bindparam("now", type_=sa.DateTime(timezone=True)),
            )
            # SQLite: INSERT .. SELECT .. ON CONFLICT needs a WHERE clause to parse
            agg = agg.where(where(r.image_id)).group_by(r.image_id)
            cols = ["image_id", "count", "mean", "bayesian", "updated_at"]
            stmt = self._upsert(rating_stats, ["image_id"], cols[1:], select=agg, columns=cols)
        elif kind == "known":
            stmt = sa.select(sa.func.count()).select_from(rating_stats).where(where(rating_stats.c.image_id))
        else:  # every known image (of the range) whose ratings are all gone: back to the seed's 0
            unrated = ~sa.exists().where(r.image_id == rating_stats.c.image_id)
            stmt = rating_stats.update().where(where(rating_stats.c.image_id), unrated).values(
                count=0, mean=None, bayesian=0.0, updated_at=sa.bindparam("now", type_=sa.DateTime(timezone=True))
            )
        self._cache[key] = stmt
        return stmt

    def _in_ids(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """``column IN (the ids)``: on SQLite one JSON parameter read by ``json_each`` (one bind for
        thousands of ids, and a statement SQLAlchemy compiles once); elsewhere an expanding ``IN``."""
        if self.is_sqlite:
            return column.in_(sa.select(self._json_ids().c.value))
        return column.in_(sa.bindparam("ids", expanding=True))

    @staticmethod
    def _json_ids() -> Any:
        return sa.func.json_each(sa.bindparam("ids_json", type_=sa.String)).table_valued("value")

    def _id_params(self, ids: Sequence[str]) -> dict[str, Any]:
        return {"ids_json": json.dumps(list(ids))} if self.is_sqlite else {"ids": list(ids)}

    def _stats_query(self) -> Any:
        c = rating_stats.c
        return sa.select(c.image_id, c.count, c.mean, c.bayesian, c.updated_at).where(self._in_ids(c.image_id))

    # -- plumbing -----------------------------------------------------------------------------------
    def _upsert(self, table: sa.Table, keys: list[str], update: list[str], *, select: Any = None,
                columns: list[str] | None = None) -> Any:
        """``INSERT .. ON CONFLICT (keys) DO UPDATE`` in this database's dialect."""
        name = self.engine.dialect.name
        if name in ("sqlite", "postgresql"):
            if name == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(table)
            if select is not None:
                stmt = stmt.from_select(columns, select)
            return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})
        if name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as my_insert

            stmt = my_insert(table)
            if select is not None:
                stmt = stmt.from_select(columns, select)
            return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in update})
        raise ConfigError(f"ratings store: the {name!r} dialect has no upsert support here; "
                          "use SQLite, PostgreSQL or MySQL/MariaDB")

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read connection (an in-memory SQLite database has one connection: take turns on it)."""
        if self._memory:
            with self._write_lock, self.engine.connect() as conn:  # type: ignore[union-attr]
                yield conn
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` and an in-process lock on SQLite)."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn = conn.execution_options(mediaq_immediate=True)
            with conn.begin():
                yield conn


#: ``(ratings, sum of scores)``: the prior's cheap scan, read beside the pass that counts rated images
_TOTALS = sa.select(sa.func.count(), sa.func.sum(ratings.c.score))


def _prior_of(n: int | None, images: int | None, total: Any) -> tuple[float, float]:
    """``(C, m)`` from the count of ratings, of distinct rated images and the sum of scores;
    ``(0.0, 0.0)`` with no ratings."""
    if not n:
        return 0.0, 0.0
    return float(n) / float(images), float(total) / float(n)  # type: ignore[arg-type]


def _check_range_size(size: object) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"range size {size!r} must be an integer >= 1")


def _hops(conn: Connection, hop: Any, size: int) -> list[str]:
    """Every id the ``LIMIT 1 OFFSET size`` statement ``hop`` lands on, each hop starting at the last
    (``after``: from below every id, as ids are non-empty)."""
    bounds: list[str] = []
    after = ""
    while (after := conn.scalar(hop, {"after": after, "size": size})) is not None:
        bounds.append(after)
    return bounds


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


