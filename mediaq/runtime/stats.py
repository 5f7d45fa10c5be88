"""Live counters for dashboards, at a fixed cost per read whatever the queue length.

Workers count outcomes as they write results (their serializer sees every result record) and flush
the counts every second into:

- ``mediaq:stats`` (hash): ``<function>:complete`` / ``<function>:failed`` / ``<function>:aborted`` for the
  whole queue;
- ``mediaq:batch:<name>:counts`` (hash): ``complete`` / ``failed`` / ``aborted`` / ``<function>:complete`` ... per batch
  (a job knows its batch from the ``b`` field that ``enqueue_many`` adds to arq's job record; stock
  arq ignores it);
- ``mediaq:errors`` and ``mediaq:batch:<name>:errors`` (hashes): failures counted by function, error type
  and code (every attempt), so views group them without reading results;
- ``mediaq:failures`` (list, newest first, capped): the last failures with type, code and message;
- ``mediaq:throughput:<epoch // 600>`` (hash ``<epoch second>:<outcome>`` -> n, expiring after an hour).

These counters are for display: a worker killed between a result and the next flush loses up to a
second of counts. ``batch.status()`` is the exact answer.
"""

from __future__ import annotations

import collections
import contextvars
import json
import time
from collections.abc import Callable
from typing import Any

from mediaq.runtime import keys
from mediaq.runtime.serialization import exception_to_dict, result_outcome

__all__ = ["OUTCOMES", "WorkerStats", "error_field", "read_batch_counts", "read_errors", "read_failures",
           "read_queue_stats", "read_throughput"]

MAX_FAILURES = 50
#: characters of a failure message kept in the list (whole messages, within reason)
MAX_MESSAGE = 4000
_batch_of_current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("mediaq_batch", default=None)


class WorkerStats:
    """Wraps a worker's serializer pair to count results; :meth:`flush` writes the counts to Redis.

    arq deserializes a job and serializes its result inside the same asyncio task, so a context
    variable carries the job's batch from one to the other.
    """

    def __init__(self, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]) -> None:
        self._dumps, self._loads = dumps, loads
        self.counts: collections.Counter[tuple[str | None, str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str | None, str]] = collections.Counter()
        self.failures: list[dict[str, Any]] = []
        self.per_second: collections.Counter[tuple[int, str]] = collections.Counter()
        #: results written since the worker started (aborted-before-start jobs too)
        self.finished = 0

    def loads(self, data: bytes) -> Any:
        record = self._loads(data)
        if isinstance(record, dict) and "s" not in record:  # a job record, about to run
            batch = record.get("b")
            _batch_of_current_job.set(batch if isinstance(batch, str) else None)
        return record

    def dumps(self, record: Any) -> bytes:
        data = self._dumps(record)
        if isinstance(record, dict) and "s" in record and "r" in record:  # a result record
            outcome = result_outcome(record)
            self.finished += 1
            function = str(record.get("f"))
            self.counts[(_batch_of_current_job.get(), function, outcome)] += 1
            self.per_second[(int(time.time()), outcome)] += 1
            if outcome == "failed":  # an abort is what someone asked for, not a failure to look into
                err = record["r"]
                info = exception_to_dict(err) if isinstance(err, BaseException) else {"type": "?", "message": str(err)}
                group = error_field(function, info.get("type"), info.get("code"))
                self.errors[(_batch_of_current_job.get(), group)] += 1
                self.failures.append({"job_id": record.get("id"), "function": function, "time": time.time(),
                                      "batch": _batch_of_current_job.get(), "type": info.get("type"),
                                      "code": info.get("code"), "message": str(info.get("message"))[:MAX_MESSAGE]})
                del self.failures[:-MAX_FAILURES]
        return data

    async def flush(self, redis: Any) -> None:
        """Write and reset the counts (one pipeline). On a Redis error they are kept for the next try."""
        if not (self.counts or self.failures or self.per_second):
            return
        counts, failures, per_second, errors = self.counts, self.failures, self.per_second, self.errors
        self.counts, self.failures, self.per_second = collections.Counter(), [], collections.Counter()
        self.errors = collections.Counter()
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for (batch, function, outcome), n in counts.items():
                    pipe.hincrby(keys.STATS, f"{function}:{outcome}", n)
                    if batch:
                        key = keys.batch_counts(batch)
                        pipe.hincrby(key, outcome, n)
                        pipe.hincrby(key, f"{function}:{outcome}", n)
                for (batch, field), n in errors.items():
                    pipe.hincrby(keys.ERRORS, field, n)
                    if batch:
                        pipe.hincrby(keys.batch_errors(batch), field, n)
                for failure in failures:
                    pipe.lpush(keys.FAILURES, json.dumps(failure))
                if failures:
                    pipe.ltrim(keys.FAILURES, 0, MAX_FAILURES - 1)
                for (second, outcome), n in per_second.items():
                    key = keys.throughput(second)
                    pipe.hincrby(key, f"{second}:{outcome}", n)
                    pipe.expire(key, 3600)
                await pipe.execute()
        except Exception:
            self.counts.update(counts)
            self.errors.update(errors)
            self.failures[:0] = failures
            self.per_second.update(per_second)
            raise


#: What a finished job counts as.
OUTCOMES = ("complete", "failed", "aborted")


def _zeros() -> dict[str, int]:
    return dict.fromkeys(OUTCOMES, 0)


async def read_queue_stats(redis: Any) -> dict[str, dict[str, int]]:
    """``{function: {"complete": n, "failed": n, "aborted": n}}`` for the whole queue (one HGETALL)."""
    out: dict[str, dict[str, int]] = {}
    for key, value in (await redis.hgetall(keys.STATS)).items():
        function, _, outcome = key.decode().rpartition(":")
        out.setdefault(function, _zeros())[outcome] = int(value)
    return out


async def read_batch_counts(redis: Any, name: str) -> dict[str, Any]:
    """``{"total", "complete", "failed", "aborted", "by_function": {...}}`` for a batch (one pipeline)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.batch_ids(name))
        pipe.hlen(keys.batch_retries(name))
        pipe.hgetall(keys.batch_counts(name))
        total, retried, raw = await pipe.execute()
    counts = {k.decode(): int(v) for k, v in raw.items()}
    by_function: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        if ":" in key:
            function, _, outcome = key.rpartition(":")
            by_function.setdefault(function, _zeros())[outcome] = n
    # a retried job was counted as failed once; its retry counts on its own
    return {"total": total - retried, "complete": counts.get("complete", 0),
            "failed": max(0, counts.get("failed", 0) - retried), "aborted": counts.get("aborted", 0),
            "by_function": by_function}


def error_field(function: str, type_: Any, code: Any) -> str:
    """The field of an error group in the errors hashes: ``"<function>\t<type>\t<code>"``."""
    return f"{function}\t{type_ or '?'}\t{code or ''}"


async def read_errors(redis: Any, batch: str | None = None) -> list[tuple[str, str, str | None, int]]:
    """Failures grouped by ``(function, error type, code, count)``, most first (one HGETALL)."""
    raw = await redis.hgetall(keys.batch_errors(batch) if batch else keys.ERRORS)
    groups = []
    for field, n in raw.items():
        function, type_, code = [*field.decode().split("\t"), "", ""][:3]
        groups.append((function, type_, code or None, int(n)))
    return sorted(groups, key=lambda g: (-g[3], g[0], g[1], g[2] or ""))


async def read_failures(redis: Any, n: int = 10) -> list[dict[str, Any]]:
    """The last ``n`` failures, newest first."""
    return [json.loads(raw) for raw in await redis.lrange(keys.FAILURES, 0, n - 1)]


async def read_throughput(redis: Any, seconds: int = 300) -> dict[int, dict[str, int]]:
    """Jobs finished per second over the last ``seconds``: ``{epoch_second: {"complete", "failed"}}``."""
    now = int(time.time())
    by_key: dict[str, list[str]] = {}
    for second in range(now - seconds, now + 1):
        for outcome in OUTCOMES:
            by_key.setdefault(keys.throughput(second), []).append(f"{second}:{outcome}")
    async with redis.pipeline(transaction=False) as pipe:
        for key, fields in by_key.items():
            pipe.hmget(key, fields)
        replies = await pipe.execute()
    out: dict[int, dict[str, int]] = {}
    for fields, values in zip(by_key.values(), replies, strict=True):
        for field, value in zip(fields, values, strict=True):
            if value:
                second, _, outcome = field.partition(":")
                out.setdefault(int(second), _zeros())[outcome] = int(value)
    return out

