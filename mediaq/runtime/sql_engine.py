"""SQLAlchemy engines for the ratings store: SQLite in WAL mode with a busy timeout, or any other URL.

>>> resolve_busy_timeout("sqlite:///r.sqlite3?timeout=5", None)
5.0
>>> make_engine("sqlite://", 30.0).dialect.name
'sqlite'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from mediaq.errors import ConfigError

__all__ = ["DEFAULT_BUSY_TIMEOUT", "make_engine", "resolve_busy_timeout"]

#: seconds a SQLite writer waits for another's lock before "database is locked" (``?timeout=`` in the URL)
DEFAULT_BUSY_TIMEOUT = 30.0


def resolve_busy_timeout(url: str, given: float | None) -> float:
    """Seconds a SQLite writer waits for the lock: the argument, else ``?timeout=`` in the URL, else 30."""
    if given is not None:
        return float(given)
    try:
        query = sa.engine.make_url(url).query
    except sa.exc.ArgumentError:
        return DEFAULT_BUSY_TIMEOUT  # make_engine reports the bad URL
    raw = query.get("timeout")
    if raw is None:
        return DEFAULT_BUSY_TIMEOUT
    try:
        return float(raw if isinstance(raw, str) else raw[-1])
    except ValueError:
        raise ConfigError(f"ratings_url timeout={raw!r} must be a number of seconds") from None


def make_engine(url: str, busy_timeout: float, **engine_kw: Any) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"ratings_url {url!r} is not a SQLAlchemy URL (e.g. sqlite:///path/ratings.sqlite3, "
                          "postgresql+psycopg://user:pw@host/db)") from exc
    if parsed.get_backend_name() != "sqlite":
        engine_kw.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, **engine_kw)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if "timeout" in parsed.query:  # ours (busy_timeout) wins; the URL's was read into it already
        parsed = parsed.difference_update_query(["timeout"])
    engine_kw.setdefault("connect_args", {}).setdefault("timeout", busy_timeout)
    if in_memory:  # one shared connection, or every thread would see its own empty database
        engine_kw.setdefault("poolclass", sa.pool.StaticPool)
        engine_kw["connect_args"].setdefault("check_same_thread", False)
    engine = sa.create_engine(parsed, **engine_kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below (the SQLAlchemy pysqlite recipe)
        cursor = dbapi_conn.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("mediaq_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
