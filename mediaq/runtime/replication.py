"""Durable mode (writes confirmed on replicas) and what the replication looks like right now.

Redis replicates in the background: the primary acknowledges a write before any replica has it, so
a primary that dies at that moment takes the write with it, and the replica promoted in its place
never saw it. In durable mode (:class:`Durability`, from ``durable_replicas`` and friends in the
settings, or per call) a write counts as done only once ``WAIT numreplicas timeout`` (or
``WAITAOF 0 numreplicas timeout``) on the *same connection* says enough replicas have it; fewer
within the timeout raise :class:`~mediaq.errors.ReplicationTimeout`. Sentinel promotes the replica
with the most data, so a write that one replica acknowledged survives the failover of its primary.

Where it applies:

* a bulk enqueue chunk: :class:`~mediaq.runtime.scripts.ChunkSender` sends ``WAIT`` right after
  the chunk's script;
* every arq transaction that writes a job record or a result (``enqueue_job`` on the client, a
  worker's result and the follow-up jobs it enqueues): :func:`durable_arq_redis` gives an
  ``ArqRedis`` whose transactions end with ``WAIT`` when they wrote such a key. The worker's
  result is written by arq's ``finish_job`` transaction, so the wait is part of it: the job's slot is
  held until its result is on the replicas, and a connection lost meanwhile re-runs the whole
  transaction (and the wait) on the new primary.

:func:`replication_status` reads who is primary and which replicas it has (for ``mediaq status``
and ``mediaq doctor``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from mediaq.errors import ConfigError, ReplicationTimeout
from mediaq.runtime.connections import SentinelURL, is_sentinel_url
from mediaq.runtime.keys import JOB_PREFIX, RESULT_PREFIX
from mediaq.runtime.settings import Settings

__all__ = ["Durability", "durable_arq_redis", "replication_status"]

_GUARDED = (JOB_PREFIX.encode(), RESULT_PREFIX.encode())


@dataclass(frozen=True)
class Durability:
    """How many replicas must acknowledge a write (0: off), how long to wait, and whether they must
    have it in their append-only file (``WAITAOF``) or only in memory (``WAIT``).

    >>> Durability(1, 2.5).command()
    ('WAIT', 1, 2500)
    >>> Durability(2, 1, aof=True).command()
    ('WAITAOF', 0, 2, 1000)
    """

    replicas: int = 0
    timeout: float = 5.0
    aof: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, replicas: int | bool | None = None) -> Durability:
        """The settings' durable mode, or ``replicas`` for one call (``True`` is 1, ``False`` is 0)."""
        n = settings.durable_replicas if replicas is None else int(replicas)
        if n < 0:
            raise ConfigError(f"durable={replicas!r}: a number of replicas >= 0 (0 is off)")
        return cls(n, settings.durable_timeout, settings.durable_aof)

    @property
    def on(self) -> bool:
        return self.replicas > 0

    def command(self) -> tuple[Any, ...]:
        ms = max(1, round(self.timeout * 1000))
        return ("WAITAOF", 0, self.replicas, ms) if self.aof else ("WAIT", self.replicas, ms)

    def acked(self, reply: Any) -> int:
        """Replicas that acknowledged, from the reply to :meth:`command`."""
        return int(reply[1]) if self.aof else int(reply)

    def check(self, reply: Any, what: str) -> int:
        """The replicas that acknowledged ``what``; :class:`ReplicationTimeout` if too few."""
        acked = self.acked(reply)
        if acked < self.replicas:
            kind = "written to the append-only file of" if self.aof else "acknowledged by"
            hint = " (WAITAOF counts only replicas with appendonly yes)" if self.aof else ""
            raise ReplicationTimeout(
                f"{what} reached the primary but was {kind} {acked} of the {self.replicas} replica(s) durable mode "
                f"needs within {self.timeout:g} s{hint}: it is on the primary, and a failover before a replica "
                "has it would lose it. Are the replicas up and connected (`mediaq status`)?",
                acked=acked, wanted=self.replicas, timeout=self.timeout)
        return acked

    async def confirm(self, connection: Any, what: str) -> int:
        """Send :meth:`command` on ``connection`` (the one that wrote) and :meth:`check` the reply."""
        await connection.send_command(*self.command())
        return self.check(await connection.read_response(), what)


def _writes_guarded_key(commands: Any) -> bool:
    """Whether a transaction's commands write a job record or a result (``SET``/``PSETEX`` of their keys)."""
    for args, _options in commands:
        name = str(args[0]).upper()
        if name in ("SET", "PSETEX", "SETEX") and len(args) > 1:
            key = args[1] if isinstance(args[1], bytes) else str(args[1]).encode()
            if key.startswith(_GUARDED):
                return True
    return False


@functools.cache
def _durable_classes() -> tuple[type, type]:
    from arq.connections import ArqRedis
    from redis.asyncio.client import Pipeline

    from mediaq.runtime.worker_loop import prefetched_pipeline

    class DurablePipeline(Pipeline):
        """A pipeline whose transactions that write a job or a result end with ``WAIT`` (see the module doc)."""

        durability: Durability = Durability()

        async def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
            response = await super()._execute_transaction(connection, commands, raise_on_error)
            if self.durability.on and _writes_guarded_key(commands):
                await self.durability.confirm(connection, "a job record or result")
            return response

    class DurableArqRedis(ArqRedis):
        """``ArqRedis`` whose transactions that write a job or a result wait for replicas."""

        durability: Durability = Durability()
        #: its first ``pipeline()`` in a job's task is that job's read, when the claim did it (worker_loop)
        answers_prefetched = True

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            prefetched = prefetched_pipeline()  # run_job's read, done by the worker's claim (worker_loop)
            if prefetched is not None:
                return prefetched
            pipe = DurablePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
            pipe.durability = self.durability
            return pipe

    return DurableArqRedis, DurablePipeline


def durable_arq_redis(pool: Any, durability: Durability, **kwargs: Any) -> Any:
    """An ``ArqRedis`` on ``pool`` (``kwargs`` are ``ArqRedis``'s) with ``durability`` for its
    transactions that write a job record or a result."""
    cls, pipeline = _durable_classes()
    if durability.on and "_execute_transaction" not in vars(pipeline.__mro__[1]):
        raise ConfigError("durable mode hooks redis-py's Pipeline._execute_transaction, which this redis-py "
                          "does not have; install the redis version mediaq pins, or set durable_replicas=0")
    redis = cls(connection_pool=pool, **kwargs)
    redis.durability = durability
    return redis


async def replication_status(redis: Any, url: str) -> dict[str, Any]:
    """Who serves ``redis`` and its replicas: ``{"role", "primary", "replicas": [{"address", "state",
    "lag"}], "sentinels": [...] | None, "master_name": ... | None}``; for a ``redis+sentinel://`` URL
    also what the Sentinels say (``sentinel_view``: primary and replicas as they see them)."""
    info = await redis.info("replication")
    role = str(info.get("role"))
    out: dict[str, Any] = {"role": role, "primary": None, "replicas": [], "sentinels": None, "master_name": None}
    offset = int(info.get("master_repl_offset", 0) or 0)
    if role == "master":
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        address = getattr(pool, "master_address", None) or (kw.get("host"), kw.get("port"))
        out["primary"] = f"{address[0]}:{address[1]}" if address[0] else str(kw.get("path", "?"))
        for i in range(int(info.get("connected_slaves", 0) or 0)):
            r = info.get(f"slave{i}")
            if isinstance(r, dict):
                out["replicas"].append({"address": f"{r.get('ip')}:{r.get('port')}", "state": r.get("state"),
                                        "lag_bytes": max(0, offset - int(r.get("offset", 0)))})
    else:
        out["primary"] = f"{info.get('master_host')}:{info.get('master_port')}"
    if is_sentinel_url(url):
        target = SentinelURL.parse(url)
        out["master_name"] = target.master
        out["sentinels"] = await _sentinel_view(target)
    return out


async def _sentinel_view(target: SentinelURL) -> list[dict[str, Any]]:
    """Each Sentinel's answer: address, the primary it names, how many replicas and Sentinels it knows."""
    import redis.asyncio as aioredis

    view = []
    for host, port in target.sentinels:
        client = aioredis.Redis(host=host, port=port, **target.sentinel_kwargs(2.0))
        entry: dict[str, Any] = {"address": f"{host}:{port}"}
        try:
            state = await client.sentinel_master(target.master)
            entry.update({"primary": f"{state['ip']}:{state['port']}", "replicas": int(state.get("num-slaves", 0)),
                          "sentinels": 1 + int(state.get("num-other-sentinels", 0)),
                          "flags": str(state.get("flags", ""))})
        except Exception as exc:  # one Sentinel down is what Sentinels are for: report it, go on
            entry["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await client.aclose()
        view.append(entry)
    return view
