"""Enqueue options and the bulk enqueue, in named steps.

:class:`EnqueueOptions` is how every enqueue call spells its options (``job_id``, ``defer_by``,
``defer_until``, ``expires``); ``enqueue_job`` takes them with arq's underscores (``_job_id``: its
other keyword arguments are the job's), ``enqueue_many`` plain or underscored (its job arguments are
the items, so nothing collides). Both check them the same way.

:class:`BulkEnqueue` is one ``enqueue_many`` call: :meth:`~BulkEnqueue.entries` turns items into
arq job records, :meth:`~BulkEnqueue.next_chunk` takes the next chunk of them, the
:class:`~mediaq.runtime.scripts.ChunkSender` sends it with one chunk in flight while the next is
built, :meth:`~BulkEnqueue.landed` counts what the server wrote, and :meth:`~BulkEnqueue.failure`
turns a Redis error into an :class:`~mediaq.errors.EnqueueError` that says what was written.

>>> EnqueueOptions.merge(job_id="thumb:{image_id}", defer_by=5).defer_ms()
5000
>>> EnqueueOptions.merge(job_id="a", _job_id="b")
Traceback (most recent call last):
...
mediaq.errors.ConfigError: job_id and _job_id are the same option: give one
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from mediaq.client.base import ProgressView, QueueClient
from mediaq.client.batch import Batch, new_batch_name
from mediaq.client.frames import gc_paused
from mediaq.errors import ConfigError, EnqueueError, ReplicationTimeout
from mediaq.runtime.bulk import PENDING_TTL_MS
from mediaq.runtime.connections import honour_cancel
from mediaq.runtime.replication import Durability
from mediaq.runtime.scripts import ChunkSender, job_entry

__all__ = ["PRIORITIES", "BulkEnqueue", "EnqueueOptions", "check_priority", "split_item"]

Entry = tuple[str, int, int, bytes]  # (job id, score ms, expires ms, payload): see job_entry
JobIdMaker = Callable[[Any, list[Any], dict[str, Any], int], str]


@dataclass(frozen=True)
class EnqueueOptions:
    """When and under which id jobs run. ``job_id``: ``None`` (random ids), a template formatted with
    each item (``"thumb:{image_id}"``; positional items as ``{0}``; ``{index}`` is the item's place),
    or a function of the item. ``defer_by`` (seconds or a timedelta) or ``defer_until`` (a datetime;
    naive means local time): when they may start. ``expires``: how long a job may wait before it is
    dropped (arq's default: a day after it is due)."""

    job_id: str | Callable[[Any], str] | None = None
    defer_by: float | dt.timedelta | None = None
    defer_until: dt.datetime | None = None
    expires: float | dt.timedelta | None = None

    def __post_init__(self) -> None:
        if self.defer_by is not None and self.defer_until is not None:
            raise ConfigError("use either defer_by or defer_until, not both")
        if self.job_id is not None and not (isinstance(self.job_id, str) or callable(self.job_id)):
            raise ConfigError(f"job_id must be None, a template string or a function, "
                              f"not {type(self.job_id).__name__}")
        for name in ("defer_by", "expires"):
            _to_ms(getattr(self, name))  # checks the value
        if self.defer_until is not None and not isinstance(self.defer_until, dt.datetime):
            raise ConfigError(f"defer_until must be a datetime, not {type(self.defer_until).__name__}")

    @classmethod
    def merge(cls, **given: Any) -> EnqueueOptions:
        """Options from keyword arguments in either spelling (``job_id`` or arq's ``_job_id``)."""
        values: dict[str, Any] = {}
        for name, value in given.items():
            plain = name.lstrip("_")
            if plain not in cls.__dataclass_fields__:
                raise ConfigError(f"unknown enqueue option {name!r}")
            if value is None:
                continue
            if plain in values:
                raise ConfigError(f"{plain} and _{plain} are the same option: give one")
            values[plain] = value
        return cls(**values)

    def defer_ms(self) -> int:
        return _to_ms(self.defer_by) or 0

    def expires_ms(self) -> int | None:
        return _to_ms(self.expires)

    def score_ms(self, now_ms: int) -> int:
        """When a job enqueued at ``now_ms`` may start (the queue's score), epoch ms."""
        if self.defer_until is not None:
            when = self.defer_until if self.defer_until.tzinfo else self.defer_until.astimezone()
            return int(when.timestamp() * 1000)
        return now_ms + self.defer_ms()

    def id_maker(self) -> JobIdMaker:
        """``(item, args, kwargs, index) -> job id``."""
        job_id = self.job_id
        if job_id is None:
            return lambda item, args, kwargs, index: uuid.uuid4().hex
        if callable(job_id):
            return lambda item, args, kwargs, index: str(job_id(item))

        def fmt(item: Any, args: list[Any], kwargs: dict[str, Any], index: int) -> str:
            try:
                return job_id.format(*args, index=index, **kwargs)
            except (KeyError, IndexError) as exc:
                raise ConfigError(f"job_id template {job_id!r} needs {exc} but item {item!r} has no such "
                                  "field") from None

        return fmt


#: ``live``: into the queue at once, in enqueue order with the application's jobs; ``bulk``: a bounded
#: window at a time, so live jobs never wait behind the whole batch (:mod:`mediaq.runtime.bulk`).
PRIORITIES = ("live", "bulk")


def check_priority(priority: Any) -> None:
    """:class:`~mediaq.errors.ConfigError` unless ``priority`` is one of :data:`PRIORITIES`.

    >>> check_priority("urgent")
    Traceback (most recent call last):
    ...
    mediaq.errors.ConfigError: priority='urgent': use 'live' (now) or 'bulk' (as workers have room)
    """
    if priority not in PRIORITIES:
        raise ConfigError(f"priority={priority!r}: use 'live' (now) or 'bulk' (as workers have room)")


def split_item(item: Any) -> tuple[list[Any], dict[str, Any]]:
    """An item's job arguments: a dict is keyword arguments, a tuple or list positional ones, anything
    else the one positional argument."""
    if isinstance(item, dict):
        return [], dict(item)
    if isinstance(item, (tuple, list)):
        return list(item), {}
    return [item], {}


class BulkEnqueue:
    """One ``enqueue_many`` call (see the module doc). ``await BulkEnqueue(...).run()`` returns the batch."""

    def __init__(self, client: QueueClient, function: str, items: Iterable[Any], options: EnqueueOptions, *,
                 batch: str | None = None, chunk_size: int = 1000, progress: ProgressView | None = None,
                 durability: Durability | None = None, force: bool = False, priority: str = "live") -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size={chunk_size!r} must be an integer >= 1")
        check_priority(priority)
        if priority == "bulk" and (options.defer_by is not None or options.defer_until is not None):
            raise ConfigError("a bulk batch runs as the workers have room (priority='bulk'), so it cannot be "
                              "deferred: drop defer_by/defer_until, or enqueue with priority='live'")
        self.priority = priority
        self.client = client
        self.function = function
        self.options = options
        self.chunk_size = chunk_size
        self.progress = progress
        self.batch = Batch(client, batch or new_batch_name(function))
        self.seen: dict[str, None] = {}  # every id of this call, in order
        self.skipped: list[str] = []  # ids that existed already (or twice in this call)
        self.written = 0  # jobs in chunks the server confirmed
        self.chunks = 0
        self._entries = self.entries(items)
        self.durability = durability or Durability.from_settings(client.settings)
        self._sender = ChunkSender(client.redis, client.settings.queue_name, self.batch.ids_key, self.durability,
                                   force=force, pending=self.batch.pending_key if priority == "bulk" else "")

    # -- steps --------------------------------------------------------------------------------------
    def entries(self, items: Iterable[Any]) -> Iterator[Entry]:
        """arq job records of ``items`` (ids repeated within the call are skipped), made lazily."""
        id_for = self.options.id_maker()
        expires_ms = self.options.expires_ms()
        if expires_ms is None and self.priority == "bulk":  # it may wait long before it reaches the queue
            expires_ms = PENDING_TTL_MS
        dumps, function, name = self.client.dumps, self.function, self.batch.name
        for index, item in enumerate(items):
            args, kwargs = split_item(item)
            job_id = id_for(item, args, kwargs, index)
            if job_id in self.seen:
                self.skipped.append(job_id)
                continue
            self.seen[job_id] = None
            now = int(time.time() * 1000)
            try:
                yield job_entry(dumps, job_id, function, args, kwargs, name, score_ms=self.options.score_ms(now),
                                expires_ms=expires_ms, now_ms=now)
            except TypeError as exc:
                raise ConfigError(f"item {index} ({item!r:.80}) cannot be enqueued: {exc}") from None

    def next_chunk(self) -> list[Entry]:
        """Up to ``chunk_size`` entries (empty when the items are used up)."""
        chunk: list[Entry] = []
        with gc_paused():  # encoding allocates a burst of small containers
            for entry in self._entries:
                chunk.append(entry)
                if len(chunk) >= self.chunk_size:
                    break
        return chunk

    async def landed(self) -> None:
        """Read the outcome of the chunk in flight: its skipped ids, and it counts as written."""
        size = self._sender.in_flight
        try:
            self.skipped.extend(await self._sender.landed())
        except (RedisError, OSError, ReplicationTimeout) as exc:
            raise self.failure(exc, size, sent=True) from exc
        self.written += size
        self.chunks += 1
        if self.progress is not None:
            self.progress.show(self.written, None)

    def failure(self, exc: Exception, size: int, *, sent: bool) -> EnqueueError:
        """What a Redis error while writing a chunk of ``size`` means for the batch.

        An error reply means the script ran and wrote nothing (it checks before it writes); a
        connection that broke after the chunk went out leaves it written whole or not at all; in
        durable mode, a chunk that too few replicas acknowledged is on the primary only, and a
        failover may still take it away: in doubt too.
        """
        in_doubt = size if sent and not isinstance(exc, ResponseError) else 0
        if isinstance(exc, ReplicationTimeout):
            what = (f"the next chunk of {size} reached the primary but not enough replicas in time, so it is "
                    "not confirmed: a failover now could lose it")
        elif in_doubt:
            what = (f"the connection broke while the next chunk of {size} was in flight, so it was "
                    "written whole or not at all and which is unknown until Redis is back")
        else:
            what = f"the failed chunk of {size} was not written at all"
        return EnqueueError(
            f"Redis failed after {self.chunks} chunk(s) ({self.written} jobs) of batch {self.batch.name!r} were "
            f"written; {what} ({exc}). Rerun the same call with deterministic job ids to complete the batch "
            "without duplicates.",
            written=self.written, chunks_written=self.chunks, batch=self.batch.name, in_doubt=in_doubt)

    # -- the whole call -----------------------------------------------------------------------------
    async def run(self) -> Batch:
        """Register the batch, send every chunk (one in flight while the next is built), and return it."""
        batch = self.batch
        await batch.register(self.function, self.priority)
        already_there = await self.client.redis.zcard(batch.ids_key)
        try:
            while True:
                try:
                    chunk = self.next_chunk()
                finally:  # even when an item was bad: the chunk in flight has an outcome to report
                    if self._sender.in_flight:
                        await self.landed()
                if not chunk:
                    break
                honour_cancel()  # nothing is sent after a stop
                try:
                    await self._sender.send(chunk)
                except (RedisError, OSError) as exc:
                    raise self.failure(exc, len(chunk), sent=self._sender.in_flight > 0) from exc
        finally:
            await self._sender.aclose()
            if self.progress is not None:
                self.progress.close()
        honour_cancel()
        batch.skipped = self.skipped
        if already_there:
            await batch.load()
        else:  # a new batch holds exactly what this call wrote, in order: no need to read it back
            batch.set_ids(list(self.seen))
        return batch


def _to_ms(value: float | dt.timedelta | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, dt.timedelta)):
        raise ConfigError(f"a duration is seconds or a timedelta, not {value!r}")
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if not seconds >= 0:
        raise ConfigError(f"a duration must be >= 0, got {value!r}")
    return round(seconds * 1000)
