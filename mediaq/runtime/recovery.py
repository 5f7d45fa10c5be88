"""Jobs of a dead worker run again within seconds, not after arq's in-progress timeout.

arq marks a running job with ``arq:in-progress:<id>`` (TTL: the longest job timeout the worker
registers + 10 s) and removes the job from the queue only when it finishes. A worker killed mid-job
(SIGKILL, the OOM killer, a lost machine) leaves that key behind, and no worker starts the job again
until it expires: an hour with a one-hour job registered, even for a thumbnail.

So every mediaq worker keeps **claims** in Redis:

- ``mediaq:claims:<worker>`` (set): the ids of the jobs it is running (added when a job starts,
  removed when it ends, both written in batches within 50 ms; rewritten from its own asyncio tasks at
  every janitor tick);
- ``mediaq:claimants`` (hash): worker name (``<host>:<pid>``) -> JSON identity (host, pid, process
  start time, boot id, pid namespace, storage root, registration time);

and runs a :class:`Janitor` at start and then every health-check interval, which:

1. **finds dead workers**: on the same machine (same host, boot and pid namespace) a worker is dead
   as soon as its process is gone (pid *and* start time, so a reused pid is not mistaken for it);
   elsewhere, once its heartbeat ``mediaq:worker:<worker>`` has expired (three health-check
   intervals), and never within that time after a Redis restart (live workers need a beat to show up);
2. **frees their jobs**: deletes the in-progress keys they claimed (skipping any id a live worker
   claims), so the next poll of any worker starts those jobs again. Their try counter keeps the
   killed try, so a job that kills its worker every time ends as failed after ``max_tries``;
3. **frees orphans**: in-progress keys that no live worker claims, left by a worker killed between
   arq's marking a job and its claim, or by a result lost in a Redis crash. A key is freed only if it
   is still unclaimed ``grace`` seconds later and its TTL ran down by all that time (it was not set
   again meanwhile). This scan (``SCAN arq:in-progress:*``) runs at start, after a death, after a Redis restart
   and after a job ended without its end hook, not on every tick;
4. **sweeps temporary files** that dead writers left in the storage roots (``Store.sweep``: a local
   folder's unlocked temporary files; object stores have none, an object exists only once written):
   after dead workers, and in its own root after one of its pool processes died (``request_sweep``).

Every recovery is logged and pushed to ``mediaq:recoveries`` (list of JSON, newest first, capped).

Assumption: all workers of a queue are mediaq workers. A stock arq worker makes no claims, so after
a death its running jobs would look orphaned and could run twice.

>>> ident = WorkerIdentity.current(storage="/srv/media")
>>> ident.name == f"{ident.host}:{ident.pid}", ident.process_alive()
(True, True)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from mediaq.runtime import keys
from mediaq.runtime.storage.urls import open_store

__all__ = [
    "Claims",
    "Janitor",
    "WorkerIdentity",
    "read_recoveries",
]

logger = logging.getLogger("arq.mediaq.runtime.recovery")

MAX_RECOVERIES = 100


@dataclasses.dataclass(frozen=True)
class WorkerIdentity:
    """Who a worker process is, precisely enough to tell from another machine whether it still runs."""

    host: str
    pid: int
    created: float  # process start time (epoch s, as psutil reports it)
    boot_id: str | None = None  # /proc/sys/kernel/random/boot_id: a reboot makes every pid a new one
    pidns: str | None = None  # pid namespace: containers sharing a host name do not share pids
    storage: str | None = None  # the worker's storage root (swept of its temporaries once it is dead)
    registered: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    @classmethod
    def current(cls, storage: str | os.PathLike[str] | None = None) -> WorkerIdentity:
        """This process's identity."""
        import psutil

        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time(),
                   _read("/proc/sys/kernel/random/boot_id"), _readlink("/proc/self/ns/pid"),
                   str(storage) if storage is not None else None, time.time())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerIdentity | None:
        try:
            data = json.loads(raw)
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except (ValueError, TypeError, KeyError):
            return None

    def same_machine(self, other: WorkerIdentity) -> bool:
        """Whether ``other``'s pid can be checked from here (same host, boot and pid namespace)."""
        return (self.host == other.host and self.boot_id is not None and self.boot_id == other.boot_id
                and self.pidns == other.pidns)

    def process_alive(self) -> bool:
        """Whether this identity's process runs (call on the same machine only)."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.created) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


# -- worker side: claims ------------------------------------------------------------------------------
class Claims:
    """The jobs this worker runs, mirrored in ``mediaq:claims:<worker>``.

    :meth:`claim` and :meth:`release` do no I/O: a background task (:meth:`run`) writes the changes
    in one pipeline every ``delay`` seconds, and a job that starts and ends within that time is never
    written at all, so claims cost tiny jobs next to nothing. A worker killed before a claim was
    written leaves an unclaimed in-progress key, which the janitor frees as an orphan. Never raises:
    after a Redis error the changes are kept for the next write, and :meth:`sync` rewrites the set.

    A job counts as running while the asyncio task that started it (arq's ``run_job``) is not done, so
    a job whose end hook never ran (Redis failed while arq wrote its result) is dropped at the next sync.
    """

    def __init__(self, redis: Any, identity: WorkerIdentity, *, delay: float = 0.05) -> None:
        self.redis = redis
        self.identity = identity
        self.key = keys.claims(identity.name)
        self.delay = delay
        self.running: dict[str, asyncio.Task[Any] | None] = {}
        self._add: set[str] = set()
        self._remove: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def register(self) -> None:
        """Announce this worker (call once the janitor has freed any predecessor with the same name)."""
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.hset(keys.CLAIMANTS, self.identity.name, self.identity.to_json())
                await pipe.execute()

    def claim(self, job_id: str) -> None:
        """Record that this worker runs ``job_id`` (call from the job's own task)."""
        try:
            task: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:
            task = None
        self.running[job_id] = task
        self._remove.discard(job_id)
        self._add.add(job_id)
        self._wake.set()

    def release(self, job_id: str) -> None:
        """Record that ``job_id`` ended here."""
        self.running.pop(job_id, None)
        if job_id in self._add:
            self._add.discard(job_id)  # never written: nothing to undo
        else:
            self._remove.add(job_id)
            self._wake.set()

    async def flush(self) -> None:
        """Write the pending claims and releases now (one pipeline)."""
        async with self._lock:
            add, remove = self._add, self._remove
            self._add, self._remove = set(), set()
            if not (add or remove):
                return
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if add:
                        pipe.sadd(self.key, *add)
                    if remove:
                        pipe.srem(self.key, *remove)
                    await pipe.execute()
            except Exception:
                logger.debug("claims not written; kept for the next write", exc_info=True)
                self._add |= {j for j in add if j in self.running and j not in self._remove}
                self._remove |= {j for j in remove if j not in self.running and j not in self._add}

    async def run(self) -> None:
        """Write changes ``delay`` seconds after they happen, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.delay)
            await self.flush()
            if self._add or self._remove:  # the write failed: try again a little later
                await asyncio.sleep(1.0)
                self._wake.set()

    async def sync(self) -> int:
        """Rewrite the claims from the jobs really running; returns how many ended without their end
        hook (their in-progress keys may be left behind: the janitor then looks for orphans)."""
        async with self._lock:
            ended = [job_id for job_id, task in self.running.items() if task is not None and task.done()]
            for job_id in ended:
                del self.running[job_id]
            self._add.clear()  # the rewrite below supersedes them
            self._remove.clear()
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.key)
                    if self.running:
                        pipe.sadd(self.key, *self.running)
                    pipe.hset(keys.CLAIMANTS, self.identity.name, self.identity.to_json())
                    await pipe.execute()
            except Exception:
                logger.debug("claims sync failed", exc_info=True)
                self._add |= set(self.running)
                self._wake.set()
        return len(ended)

    async def unregister(self) -> None:
        """Forget this worker (clean shutdown: arq has re-queued or finished its jobs)."""
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.hdel(keys.CLAIMANTS, self.identity.name)
                await pipe.execute()


# -- the janitor ----------------------------------------------------------------------------------------
FREE_DEAD_LUA = f"""
local claims, name, nlive = ARGV[1], ARGV[2], tonumber(ARGV[3])
local freed = {{}}
for _, id in ipairs(redis.call('SMEMBERS', claims)) do
  local taken = false
  for j = 4, 3 + nlive do
    if redis.call('SISMEMBER', ARGV[j], id) == 1 then taken = true; break end
  end
  if not taken and redis.call('DEL', '{keys.IN_PROGRESS_PREFIX}' .. id) == 1 then freed[#freed + 1] = id end
end
redis.call('DEL', claims)
redis.call('HDEL', '{keys.CLAIMANTS}', name)
return freed
"""

UNCLAIMED_LUA = f"""
local nlive = tonumber(ARGV[1])
local out = {{}}
for i = 2 + nlive, #ARGV do
  local id = ARGV[i]
  local taken = false
  for j = 2, 1 + nlive do
    if redis.call('SISMEMBER', ARGV[j], id) == 1 then taken = true; break end
  end
  if not taken then
    local ttl = redis.call('PTTL', '{keys.IN_PROGRESS_PREFIX}' .. id)
    if ttl > 0 then out[#out + 1] = id; out[#out + 1] = ttl end
  end
end
return out
"""

FREE_ORPHANS_LUA = f"""
local nlive = tonumber(ARGV[1])
local freed = {{}}
for i = 2 + nlive, #ARGV, 2 do
  local id, most = ARGV[i], tonumber(ARGV[i + 1])
  local taken = false
  for j = 2, 1 + nlive do
    if redis.call('SISMEMBER', ARGV[j], id) == 1 then taken = true; break end
  end
  local key = '{keys.IN_PROGRESS_PREFIX}' .. id
  local ttl = redis.call('PTTL', key)
  if not taken and ttl > 0 and ttl <= most then
    redis.call('DEL', key)
    freed[#freed + 1] = id
  end
end
return freed
"""


class Janitor:
    """Frees the jobs of dead workers and orphaned in-progress keys; see the module doc.

    ``interval``: seconds between ticks (the worker uses its health-check interval); ``grace``: how long
    an in-progress key must stay unclaimed before it counts as orphaned, and the minimum age of a
    temporary file before it may be swept. ``heartbeat_ttl``: after how long without a heartbeat a
    worker on another machine counts as dead.
    """

    def __init__(self, redis: Any, identity: WorkerIdentity, *, interval: float = 5.0, grace: float = 2.0,
                 heartbeat_ttl: float = 15.0, claims: Claims | None = None) -> None:
        self.redis = redis
        self.identity = identity
        self.interval = interval
        self.grace = grace
        self.heartbeat_ttl = heartbeat_ttl
        self.claims = claims
        self._run_id: str | None = None
        self._remote_hold_until = 0.0
        self._scripts: dict[str, Any] = {}
        self._dead_identities: dict[str, WorkerIdentity | None] = {}  # storage roots still to sweep
        self._orphan_scan_due = False
        self._sweeps_requested = self._sweeps_done = 0  # own root: see request_sweep

    def _script(self, name: str, source: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(source)
        return self._scripts[name]

    # -- who is alive ----------------------------------------------------------------------------------
    async def claimants(self) -> dict[str, WorkerIdentity | None]:
        raw = await self.redis.hgetall(keys.CLAIMANTS)
        return {k.decode(): WorkerIdentity.from_json(v) for k, v in raw.items()}

    async def _split(self) -> tuple[list[str], dict[str, WorkerIdentity | None]]:
        """(names of live workers, {name: identity} of dead ones)."""
        workers = await self.claimants()
        remote = [n for n, w in workers.items() if w is None or not self.identity.same_machine(w)]
        beating: set[str] = set()
        if remote:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in remote:
                    pipe.exists(keys.HEARTBEAT_PREFIX + name)
                beating = {n for n, e in zip(remote, await pipe.execute(), strict=True) if e}
        now = time.time()
        live, dead = [], {}
        for name, w in workers.items():
            if name == self.identity.name and w is not None and abs(w.created - self.identity.created) < 1.0:
                alive = True  # ourselves
            elif w is not None and self.identity.same_machine(w):
                alive = w.process_alive()
            else:
                registered = w.registered if w is not None else 0.0
                alive = (name in beating or now < self._remote_hold_until
                         or now - registered < self.heartbeat_ttl)
            if alive:
                live.append(name)
            else:
                dead[name] = w
        return live, dead

    async def _server_restarted(self) -> bool:
        """Whether Redis restarted since the last tick (its run id changed)."""
        info = await self.redis.info("server")
        run_id = info.get("run_id")
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:  # give workers elsewhere time to beat again before judging them
            self._remote_hold_until = time.time() + self.heartbeat_ttl
        return restarted

    # -- freeing ---------------------------------------------------------------------------------------
    async def free_dead(self) -> dict[str, list[str]]:
        """Free the jobs claimed by dead workers; ``{dead worker: [freed job ids]}``."""
        live, dead = await self._split()
        out: dict[str, list[str]] = {}
        live_keys = [keys.claims(n) for n in live]
        self._dead_identities.update(dead)
        for name in dead:
            freed = await self._script("free_dead", FREE_DEAD_LUA)(
                args=[keys.claims(name), name, len(live_keys), *live_keys])
            out[name] = [i.decode() if isinstance(i, bytes) else i for i in freed]
            logger.warning("worker %s is dead: %d of its jobs freed to run again", name, len(out[name]))
            await self._record("dead_worker", name, out[name])
        return out

    async def free_orphans(self, *, chunk: int = 1000) -> list[str]:
        """Free in-progress keys that no live worker claims, now and ``grace`` seconds later."""
        live, _ = await self._split()
        live_keys = [keys.claims(n) for n in live]
        seen: list[tuple[str, int, float]] = []  # (id, PTTL, when read)
        batch: list[str] = []
        unclaimed = self._script("unclaimed", UNCLAIMED_LUA)

        async def check() -> None:
            flat = await unclaimed(args=[len(live_keys), *live_keys, *batch])
            now = time.monotonic()  # after the server read the TTLs
            seen.extend((flat[i].decode(), int(flat[i + 1]), now) for i in range(0, len(flat), 2))
            batch.clear()

        async for key in self.redis.scan_iter(match=keys.IN_PROGRESS_PREFIX + "*", count=chunk):
            batch.append(key.decode()[len(keys.IN_PROGRESS_PREFIX):])
            if len(batch) >= chunk:
                await check()
        if batch:
            await check()
        if not seen:
            return []
        await asyncio.sleep(self.grace)
        live, _ = await self._split()
        live_keys = [keys.claims(n) for n in live]
        freed: list[str] = []
        free = self._script("free_orphans", FREE_ORPHANS_LUA)
        for start in range(0, len(seen), chunk):
            now = time.monotonic()  # before the server reads the TTLs again
            args: list[Any] = [len(live_keys), *live_keys]
            for job_id, ttl, read_at in seen[start:start + chunk]:
                # an orphan's TTL ran down at least as long as we waited; a key set again did not
                args += [job_id, ttl - int((now - read_at) * 1000) + 50]
            freed += [i.decode() if isinstance(i, bytes) else i for i in await free(args=args)]
        if freed:
            logger.warning("%d orphaned in-progress job(s) freed to run again", len(freed))
            await self._record("orphans", None, freed)
        return freed

    async def _record(self, reason: str, worker: str | None, ids: list[str]) -> None:
        entry = {"time": time.time(), "by": self.identity.name, "reason": reason, "worker": worker,
                 "jobs": len(ids), "ids": ids[:20]}
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(keys.RECOVERIES, json.dumps(entry))
                pipe.ltrim(keys.RECOVERIES, 0, MAX_RECOVERIES - 1)
                await pipe.execute()

    # -- the loop --------------------------------------------------------------------------------------
    def request_orphan_scan(self) -> None:
        """Look for orphans at the next tick (the worker failed to talk to Redis mid-job)."""
        self._orphan_scan_due = True

    def request_sweep(self) -> None:
        """Sweep this worker's own storage root at the next tick: one of its pool processes died, maybe
        mid-write (pool processes write local outputs, :mod:`mediaq.jobs.images`), and the worker lives
        on, so no dead worker would make the tick sweep. A request that comes during a sweep is kept
        for the next tick (that sweep may have looked before its file was old enough)."""
        self._sweeps_requested += 1

    async def tick(self, *, look_for_orphans: bool = False,
                   dead_before: dict[str, WorkerIdentity | None] | None = None) -> dict[str, Any]:
        """One pass: dead workers, then (if anything suggests it) orphans and temporary files (after
        dead workers, or when :meth:`request_sweep` asked).
        ``dead_before``: dead workers already freed by an earlier :meth:`free_dead` (still to sweep)."""
        started = time.monotonic()
        restarted = await self._server_restarted()
        dead: dict[str, Any] = {**(dead_before or {}), **await self.free_dead()}
        ended = await self.claims.sync() if self.claims is not None else 0
        orphans: list[str] = []
        swept: list[str] = []
        # kept until a scan completes: a tick that fails half way (Redis away) must not forget it
        self._orphan_scan_due = self._orphan_scan_due or bool(look_for_orphans or dead or restarted or ended)
        if self._orphan_scan_due:
            orphans = await self.free_orphans()  # waits `grace` when there are candidates
            self._orphan_scan_due = False
        requested = self._sweeps_requested
        if dead or requested > self._sweeps_done:
            # the dead writers' files are older than `started`: let them age past the grace
            await asyncio.sleep(max(0.0, self.grace - (time.monotonic() - started)))
            roots = {self.identity.storage} | {w.storage for w in self._dead_identities.values() if w}
            for root in sorted(r for r in roots if r):
                swept += await asyncio.to_thread(open_store(root).sweep, self.grace)
            self._dead_identities.clear()
            self._sweeps_done = requested
            if swept:
                logger.warning("removed %d temporary file(s) left by dead writers", len(swept))
        return {"restarted": restarted, "dead": dead, "orphans": orphans, "ended_without_hook": ended,
                "swept": [str(p) for p in swept]}

    async def run(self, startup_dead: dict[str, Any] | None = None) -> None:
        """Tick every ``interval`` seconds until cancelled; the first tick also looks for orphans and
        sweeps after the workers found dead at start (``startup_dead``, from :meth:`free_dead`)."""
        first = True
        while True:
            try:
                await self.tick(look_for_orphans=first, dead_before=startup_dead if first else None)
                first = False
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: try again next time
                logger.debug("janitor tick failed", exc_info=True)
            await asyncio.sleep(self.interval)


async def read_recoveries(redis: Any, n: int = 20) -> list[dict[str, Any]]:
    """The last ``n`` recoveries, newest first: time, by, reason (``dead_worker``/``orphans``), worker, jobs, ids."""
    return [json.loads(raw) for raw in await redis.lrange(keys.RECOVERIES, 0, n - 1)]
