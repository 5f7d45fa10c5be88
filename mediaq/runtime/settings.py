"""All of mediaq's knobs in one place, with the seed application's defaults.

Resolution order for every field, everywhere: keyword argument, then the ``MEDIAQ_<FIELD>``
environment variable, then the default below.

>>> from mediaq.runtime.settings import Settings
>>> s = Settings.load(max_jobs=4)
>>> s.max_jobs, s.max_tries, s.queue_db
(4, 3, 1)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from mediaq.errors import ConfigError
from mediaq.runtime import keys
from mediaq.runtime.storage.urls import normalize_root

__all__ = ["ENV_PREFIX", "Settings", "redact_url"]

ENV_PREFIX = "MEDIAQ_"
SERIALIZERS = ("msgpack", "pickle")


def _default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("mediaq", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Every mediaq setting. Build it with :meth:`load`; it is immutable (use :meth:`replace`)."""

    #: Redis URL (``redis://:password@host:port/db``), or Sentinels watching a primary and its replicas
    #: (``redis+sentinel://:password@host:port,host:port/<primary name>``; see
    #: :mod:`mediaq.runtime.connections`). ``None``: the embedded server in ``state_dir``.
    redis_url: str | None = None
    #: Folder of the embedded server (its config, data, password, log) and of local worker logs.
    state_dir: Path = field(default_factory=_default_state_dir)
    #: Path to a ``valkey-server`` / ``redis-server`` binary for the embedded server (default: found).
    redis_server: str | None = None
    #: An address the embedded server also listens on, for workers on other machines of a trusted LAN
    #: (``None``: loopback only). Always with its password; the traffic is NOT encrypted (no TLS in the
    #: embedded binary): on other networks run a Redis with TLS (README, "Workers on many machines").
    redis_bind: str | None = None
    #: Seconds to wait when connecting to Redis before giving up with a clear error.
    connect_timeout: float = 3.0

    #: Redis database of the arq queue, and of the cache (the seed keeps them apart).
    queue_db: int = 1
    cache_db: int = 0
    queue_name: str = keys.DEFAULT_QUEUE

    #: Durable mode: a bulk-enqueue chunk, an ``enqueue_job`` and a worker's result count as written
    #: only once this many replicas acknowledged them (``WAIT``); 0 is off (Redis replicates in the
    #: background, and a failover can lose the last writes the primary acknowledged).
    durable_replicas: int = 0
    #: Seconds to wait for those replicas before the write fails with ``ReplicationTimeout``.
    durable_timeout: float = 5.0
    #: Wait until the replicas have also written it to their append-only file (``WAITAOF``, Redis 7.2+ /
    #: Valkey; the replicas need ``appendonly yes``), not only received it.
    durable_aof: bool = False

    #: Worker settings from the seed.
    max_tries: int = 3
    job_timeout: float = 300.0
    retry_backoff: float = 5.0  # seconds x job_try
    max_jobs: int = 10
    keep_result: float = 86400.0
    health_check_interval: float = 5.0
    #: How often an idle worker looks for due jobs (a poll is one cheap command). mediaq's clients also
    #: ring the workers' doorbell when they queue jobs due now, and a busy worker reads on without
    #: waiting (see mediaq.runtime.worker_loop), so this bounds the wait only for jobs that a stock arq
    #: client queued or whose delay ran out.
    poll_delay: float = 0.05
    #: Bulk batches (``priority="bulk"``, see :mod:`mediaq.runtime.bulk`): at most this many of their jobs
    #: are in the queue at once, so a live job waits for at most this many to start ahead of it. 0:
    #: automatic, twice the slots (``max_jobs``) of the live workers (at least 20), grown by the
    #: workers to four polls' worth of the bulk jobs' measured throughput when that is more.
    bulk_window: int = 0
    #: Processes for CPU-bound work inside one worker (0: one per core).
    worker_processes: int = 0
    #: Safe ``msgpack`` (default) or arq-compatible ``pickle`` for jobs and results.
    serializer: str = "msgpack"
    #: Extra modules whose ``@mediaq.job`` functions the worker registers (comma-separated in env).
    job_modules: tuple[str, ...] = ()

    #: Where image outputs go: ``{storage}/thumbs``, ``/medium``, ``/large``. A local folder, or an
    #: object-store URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``memory://``): see
    #: :mod:`mediaq.runtime.storage.urls`. Kept as an absolute path or a URL. Default
    #: ``{state_dir}/media``: the same folder whatever the working folder (a notebook's kernel runs in
    #: ``notebooks/``).
    storage: str | None = None
    thumb_width: int = 250
    thumb_height: int = 200
    thumb_format: str = "jpeg"
    thumb_quality: int = 87
    medium_edge: int = 1280
    large_edge: int = 2560
    variant_quality: int = 90
    variant_format: str = "jpeg"
    #: Decompression-bomb guard: images with more pixels fail with ``too_large`` (Pillow's default).
    max_image_pixels: int = 89_478_485

    #: IQDB backend: ``None`` for the embedded index in Redis, else a server URL (``http://host:5588``).
    iqdb_url: str | None = None
    #: Ratings store: a SQLAlchemy URL. ``None``: SQLite file ``ratings.sqlite3`` in ``state_dir``.
    ratings_url: str | None = None
    #: Seconds the (C, m) rating prior is cached in Redis db ``cache_db``.
    rating_cache_ttl: float = 300.0

    def __post_init__(self) -> None:
        _check(self.serializer in SERIALIZERS, "serializer", self.serializer, f"one of {SERIALIZERS}")
        for name in ("max_tries", "max_jobs", "thumb_width", "thumb_height", "medium_edge", "large_edge",
                     "max_image_pixels"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        _check(self.durable_replicas >= 0, "durable_replicas", self.durable_replicas, "an integer >= 0")
        for name in ("job_timeout", "connect_timeout", "health_check_interval", "durable_timeout"):
            _check(getattr(self, name) > 0, name, getattr(self, name), "a number > 0")
        _check(0 <= self.queue_db <= 15 and 0 <= self.cache_db <= 15, "queue_db", self.queue_db, "0..15")
        _check(1 <= self.thumb_quality <= 100, "thumb_quality", self.thumb_quality, "1..100")
        _check(self.worker_processes >= 0, "worker_processes", self.worker_processes, ">= 0")
        _check(self.bulk_window >= 0, "bulk_window", self.bulk_window, "an integer >= 0 (0: automatic)")
        # paths are made absolute once, so a worker started elsewhere writes to the same place
        object.__setattr__(self, "state_dir", Path(self.state_dir).expanduser().absolute())
        storage = self.state_dir / "media" if self.storage is None else self.storage
        object.__setattr__(self, "storage", normalize_root(storage))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from keyword arguments, then ``MEDIAQ_*`` variables, then defaults."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in overrides:
                value = overrides[f.name]
                values[f.name] = _coerce(f.name, hints[f.name], value) if isinstance(value, str) else value
            elif (key := ENV_PREFIX + f.name.upper()) in env:
                values[f.name] = _coerce(key, hints[f.name], env[key])
        if isinstance(values.get("job_modules"), list):
            values["job_modules"] = tuple(values["job_modules"])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (same coercion rules as :meth:`load`)."""
        return Settings.load(env={}, **{**self._values(), **changes})

    def to_env(self) -> dict[str, str]:
        """``MEDIAQ_*`` variables that reproduce these settings in another process (a worker)."""
        out = {}
        for name, value in self._values().items():
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            out[ENV_PREFIX + name.upper()] = str(value)
        return out

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # -- derived ------------------------------------------------------------------------------
    @property
    def thumb_size(self) -> tuple[int, int]:
        return (self.thumb_width, self.thumb_height)

    @property
    def variant_edges(self) -> dict[str, int]:
        return {"medium": self.medium_edge, "large": self.large_edge}

    @property
    def resolved_ratings_url(self) -> str:
        return self.ratings_url or f"sqlite:///{self.state_dir / 'ratings.sqlite3'}"

    @property
    def processes(self) -> int:
        return self.worker_processes or os.cpu_count() or 1

    def __repr__(self) -> str:
        parts = []
        for name, value in self._values().items():
            if name in ("redis_url", "ratings_url", "iqdb_url") and value:
                value = redact_url(value)
            parts.append(f"{name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """``redis://:secret@host:1/0`` -> ``redis://:***@host:1/0``: never print a password (nor one given
    as a query option, ``?sentinel_password=...``)."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"([?&][a-z_]*password=)[^&]*", r"\1***", url)


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"setting {name}={value!r} is invalid: expected {allowed}")


def _coerce(name: str, hint: Any, raw: str) -> Any:
    text = raw.strip()
    kind = hint if isinstance(hint, type) else None
    args = getattr(hint, "__args__", ())
    if kind is None and type(None) in args:  # X | None
        if text == "" or text.lower() == "none":
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is None and getattr(hint, "__origin__", None) is tuple:
        return tuple(p.strip() for p in text.split(",") if p.strip())
    try:
        if kind is bool:
            return text.lower() in ("1", "true", "yes", "on")
        if kind in (int, float):
            return kind(text)
        if kind is Path:
            return Path(text)
        return text
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


# dataclasses.replace would bypass coercion; keep one way to change settings.
del dataclasses
