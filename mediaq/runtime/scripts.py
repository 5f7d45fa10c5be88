"""Bulk writes and reads of arq's keys, in server-side scripts.

Enqueue: one Lua script call per chunk writes jobs exactly as ``ArqRedis.enqueue_job`` does
(``PSETEX arq:job:<id>`` + ``ZADD <queue>``) and keeps arq's rule that an id existing as a job or a
result is not overwritten; with ``force`` an id that exists only as a result (the job finished) is
enqueued again and its old result deleted, while a job still queued or running is left alone. A
script runs atomically, so a chunk is written whole or not at all.

Status: one script call per chunk classifies each id as arq does (result, in progress, queued,
deferred, not found); success is told apart from failure by reading 4 bytes of the result
(see :data:`mediaq.runtime.serialization.RESULT_OK_BYTE`).

Claim: one script call claims the jobs a worker is about to start, as arq's per-job start
transaction does (see ``CLAIM_LUA``), for all its free slots at once.

The scripts build key names from ids, so they need a single (non-cluster) Redis, like arq itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from mediaq.runtime.keys import (
    ABORT_SET,
    BULK_ACTIVE,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    RETRY_PREFIX,
    WAKE_PREFIX,
)
from mediaq.runtime.serialization import ABORTED_TYPE

__all__ = ["DAY_MS", "RETRY_TTL_S", "STATES", "ChunkSender", "Claimed", "batch_counts", "claim_jobs", "enqueue_chunk",
           "job_entry", "script", "status_codes"]

DAY_MS = 86_400_000

#: Job states, in the order of the status script's codes.
STATES = ("not_found", "queued", "deferred", "in_progress", "complete", "failed", "aborted")
_RESULT_UNKNOWN = 7  # a result whose success flag must be read in Python (pickle mode)

# Per job one EXISTS and one PSETEX; the queue and the batch's id set get one multi-member ZADD per
# 500 jobs. Fewer calls per job matter twice: a call from Lua costs about 1 us, and every write is
# also appended to the AOF, so this is about 1.5x the rate of a ZADD per job.
ENQUEUE_LUA = f"""
local queue, idset, force, pending = ARGV[1], ARGV[2], string.find(ARGV[3], 'f') ~= nil, ARGV[4]
local head = string.find(ARGV[3], 'h') ~= nil
local skipped, queued, listed = {{}}, {{}}, {{}}
local seq = 0
-- check before writing anything: a script that fails part way keeps what it wrote
for _, key in ipairs({{queue, idset, pending}}) do
  if key ~= '' then
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'zset' and t ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a sorted set; '
        .. 'nothing was enqueued (is another program using this Redis database?)')
    end
  end
end
if idset ~= '' then
  local last = redis.call('ZRANGE', idset, -1, -1, 'WITHSCORES')
  if last[2] then seq = tonumber(last[2]) + 1 end
end
-- a bulk job waits in its batch's pending set (scored by its place in the batch; a follow-up with
-- 'h' goes first) until runtime.bulk's top-up moves it into the queue
local front = nil
if pending ~= '' and head then
  local first = redis.call('ZRANGE', pending, 0, 0, 'WITHSCORES')
  front = first[2] and tonumber(first[2]) - 1 or -1
end
for i = 5, #ARGV, 4 do
  local id = ARGV[i]
  local exists
  if force then
    exists = redis.call('EXISTS', '{JOB_PREFIX}' .. id)
  else
    exists = redis.call('EXISTS', '{JOB_PREFIX}' .. id, '{RESULT_PREFIX}' .. id)
  end
  if exists > 0 then
    skipped[#skipped + 1] = id
  else
    if force then redis.call('DEL', '{RESULT_PREFIX}' .. id) end
    redis.call('PSETEX', '{JOB_PREFIX}' .. id, ARGV[i + 2], ARGV[i + 3])
    if pending == '' then
      queued[#queued + 1] = ARGV[i + 1]
    elseif front then
      queued[#queued + 1] = front
      front = front - 1
    else
      queued[#queued + 1] = seq
    end
    queued[#queued + 1] = id
  end
  if idset ~= '' then
    listed[#listed + 1] = seq
    listed[#listed + 1] = id
    seq = seq + 1
  end
end
local target = pending ~= '' and pending or queue
for s = 1, #queued, 1000 do
  redis.call('ZADD', target, unpack(queued, s, math.min(s + 999, #queued)))
end
if pending == '' and #queued > 0 then redis.call('PUBLISH', '{WAKE_PREFIX}' .. queue, '1') end  -- wake idle workers
if pending ~= '' and #queued > 0 then redis.call('SADD', '{BULK_ACTIVE}', pending) end
for s = 1, #listed, 1000 do  -- NX: an id already listed keeps its place
  redis.call('ZADD', idset, 'NX', unpack(listed, s, math.min(s + 999, #listed)))
end
return skipped
"""

# How arq tells a job's state, as a Lua function shared by the scripts below: 0 not found,
# 1 queued, 2 deferred, 3 in progress, 4 complete, 5 failed, 6 aborted, -1 a result whose success
# flag must be read in Python (pickle mode). Success is the 4th byte of a msgpack result (see
# serialization); a failure is an abort when its error type, within the first 64 bytes, is
# asyncio.CancelledError (one more GETRANGE, for failures only).
#
# arq's own order is result, in-progress key, queue score. A job in the queue has no result (arq's
# finish removes it from the queue and writes the result in one MULTI), so ids are classified 500 at
# a time: one ZMSCORE for all of them, then for the ones in the queue one MGET of their in-progress
# keys, and for the others a GETRANGE of the result's first bytes (then the in-progress and job keys
# if there is none). A call from Lua costs about 1 us, more than the lookup itself: a queued job now
# costs no call of its own instead of three, a finished one still one.
_CLASSIFY = f"""
local function classify_many(ids, queue, now, pending)
  local codes, n = {{}}, #ids
  if pending ~= '' and redis.call('EXISTS', pending) == 0 then pending = '' end
  for s = 1, n, 500 do
    local sub = {{}}
    for i = s, math.min(s + 499, n) do sub[#sub + 1] = ids[i] end
    local scores = redis.call('ZMSCORE', queue, unpack(sub))
    local waiting, pkeys, outside = {{}}, {{}}, {{}}
    for j = 1, #sub do
      if scores[j] then
        waiting[#waiting + 1] = j
        pkeys[#pkeys + 1] = '{IN_PROGRESS_PREFIX}' .. sub[j]
      else
        outside[#outside + 1] = j
      end
    end
    local held = {{}}  -- bulk jobs still in their batch's pending set: queued
    if pending ~= '' and #outside > 0 then
      local names = {{}}
      for k = 1, #outside do names[k] = sub[outside[k]] end
      held = redis.call('ZMSCORE', pending, unpack(names))
    end
    for k = 1, #outside do
      local j = outside[k]
      local id, code = sub[j], nil
      if held[k] then code = 1
      else
        local head = redis.call('GETRANGE', '{RESULT_PREFIX}' .. id, 0, 3)
        if head ~= '' then
          code = -1
          if string.sub(head, 2, 3) == '\\161s' then
            local b = string.byte(head, 4)
            if b == 195 then code = 4
            elseif b == 194 then
              code = 5
              local first = redis.call('GETRANGE', '{RESULT_PREFIX}' .. id, 0, 63)
              if string.find(first, '{ABORTED_TYPE}', 1, true) then code = 6 end
            end
          end
        elseif redis.call('EXISTS', '{IN_PROGRESS_PREFIX}' .. id) == 1 then code = 3
        elseif redis.call('EXISTS', '{JOB_PREFIX}' .. id) == 1 then code = 1
        else code = 0
        end
      end
      codes[s + j - 1] = code
    end
    if #waiting > 0 then
      local running = redis.call('MGET', unpack(pkeys))
      for k = 1, #waiting do
        local j = waiting[k]
        local code = 1
        -- due within 5 ms is queued: a bulk job is released 2 ms ahead (see runtime.bulk)
        if running[k] then code = 3 elseif tonumber(scores[j]) > now + 5 then code = 2 end
        codes[s + j - 1] = code
      end
    end
  end
  return codes
end
"""

STATUS_LUA = _CLASSIFY + """
local queue, now, pending = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
local out = classify_many(ids, queue, now, pending)
for i = 1, #out do
  if out[i] < 0 then out[i] = UNKNOWN end
end
return out
""".replace("UNKNOWN", str(_RESULT_UNKNOWN))

# Counts for a batch without sending its ids back and forth: walk ranks [start, stop] of the batch's
# id set on the server, skipping ids that were superseded by a retry. Returns the 7 counts, then the
# ids whose result must be read in Python (pickle mode).
COUNT_LUA = _CLASSIFY + """
local queue, now, idset, retries, pending = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[7]
local ids = redis.call('ZRANGE', idset, ARGV[5], ARGV[6])
if redis.call('EXISTS', retries) == 1 then
  local kept = {}
  for _, id in ipairs(ids) do
    if redis.call('HEXISTS', retries, id) == 0 then kept[#kept + 1] = id end
  end
  ids = kept
end
local counts = {0, 0, 0, 0, 0, 0, 0}
local unknown = {}
local codes = classify_many(ids, queue, now, pending)
for i = 1, #codes do
  local code = codes[i]
  if code < 0 then unknown[#unknown + 1] = ids[i] else counts[code + 1] = counts[code + 1] + 1 end
end
return {counts, unknown}
"""


#: arq's TTL of a job's try counter (``run_job``: ``EXPIRE arq:retry:<id> 88400``)
RETRY_TTL_S = 88_400

# A worker's claim of the jobs it is about to start: arq 0.28's start transaction (per id: WATCH the
# in-progress key; skip if it exists, if the id left the queue or its score is in the future; else
# MULTI PSETEX <in-progress> <timeout ms> 1 EXEC), for several ids in one atomic call. One ZMSCORE for
# all ids, then per due id SET ... PX NX: the key, value and TTL arq's PSETEX writes, and NX is arq's
# EXISTS check (nothing can come in between in a script). Since the key is written exactly as arq
# writes it, a stock arq worker's WATCH on it still makes its claim and ours exclusive. A score of 0
# counts as absent, as in arq (`not score`). Returns the claimed ids, each followed by its score.
#
# With ARGV[4] = 'fetch' (or 'fetch+abort'), each claimed job also gets, in the same call, what arq's
# run_job reads first in its own transaction right after the claim: GET arq:job:<id>, INCR and
# EXPIRE 88400 of arq:retry:<id> (and, with abort support, ZREM arq:abort <id>); the reply then has
# five entries per job: id, score, record (nil when gone), try, aborted (0/1).
CLAIM_LUA = f"""
local queue, now, ttl, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local fetch, abort = mode ~= '', mode == 'fetch+abort'
local ids = {{}}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
local out = {{}}
if #ids == 0 then return out end
local scores = redis.call('ZMSCORE', queue, unpack(ids))
for j = 1, #ids do
  local id = ids[j]
  local score = scores[j] and tonumber(scores[j])
  if score and score ~= 0 and score <= now
      and redis.call('SET', '{IN_PROGRESS_PREFIX}' .. id, '1', 'PX', ttl, 'NX') then
    out[#out + 1] = id
    out[#out + 1] = scores[j]
    if fetch then
      out[#out + 1] = redis.call('GET', '{JOB_PREFIX}' .. id)
      out[#out + 1] = redis.call('INCR', '{RETRY_PREFIX}' .. id)
      redis.call('EXPIRE', '{RETRY_PREFIX}' .. id, {RETRY_TTL_S})
      out[#out + 1] = abort and redis.call('ZREM', '{ABORT_SET}', id) or 0
    end
  end
end
return out
"""

class Claimed(NamedTuple):
    """A job this worker claimed, and what arq's ``run_job`` reads first when it was fetched with the
    claim (else ``None``, ``None``, ``None``)."""

    score: int
    record: bytes | None = None
    tries: int | None = None
    aborted: bool | None = None


async def claim_jobs(redis: Any, queue_name: str, job_ids: Sequence[str], now_ms: int,
                     timeout_ms: int, *, fetch: bool = False, abort: bool = False) -> dict[str, Claimed]:
    """Claim the ``job_ids`` that are due (score <= ``now_ms``) and not in progress, as arq's worker
    does before it starts a job (see ``CLAIM_LUA``): ``{claimed id: Claimed(score, ...)}``, in
    ``job_ids``' order. With ``fetch``, each claimed job's record is read and its try counter
    incremented in the same call, as arq's ``run_job`` does first (``abort``: and its abort request
    taken, as arq does with ``allow_abort_jobs``). One script call, so on a lost reply the caller
    cannot tell which were claimed: it must not retry (an id claimed by the first try would be
    skipped by the second, and nobody would run it)."""
    if not job_ids:
        return {}
    mode = ("fetch+abort" if abort else "fetch") if fetch else ""
    flat = await script(redis, "claim", CLAIM_LUA)(args=[queue_name, now_ms, timeout_ms, mode, *job_ids])
    if not fetch:
        return {_text(flat[i]): Claimed(int(float(flat[i + 1]))) for i in range(0, len(flat), 2)}
    return {_text(flat[i]): Claimed(int(float(flat[i + 1])), flat[i + 2], int(flat[i + 3]), bool(flat[i + 4]))
            for i in range(0, len(flat), 5)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def batch_counts(redis: Any, queue_name: str, ids_key: str, retries_key: str, now_ms: int,
                       chunk: int = 10_000, pending: str = "") -> tuple[list[int], list[str]]:
    """Counts per state (in :data:`STATES` order) over a batch's id set, ``chunk`` ids per script call
    (so the server never blocks long), and the ids whose result needs reading in Python. Jobs in
    ``pending`` (a bulk batch's, not released into the queue yet) count as queued."""
    run = script(redis, "count", COUNT_LUA)
    total = await redis.zcard(ids_key)
    counts = [0] * len(STATES)
    unknown: list[str] = []
    for start in range(0, total, chunk):
        part, ids = await run(args=[queue_name, now_ms, ids_key, retries_key, start, start + chunk - 1,
                                          pending])
        counts = [a + b for a, b in zip(counts, part, strict=True)]
        unknown += [i.decode() for i in ids]
    return counts, unknown


def job_entry(dumps: Any, job_id: str, function: str, args: Sequence[Any], kwargs: dict[str, Any],
              batch: str | None, *, score_ms: int | None = None, expires_ms: int | None = None,
              now_ms: int | None = None) -> tuple[str, int, int, bytes]:
    """``(job_id, score, expires_ms, payload)`` for :func:`enqueue_chunk`: arq's job record, plus the
    batch name as ``b`` (mediaq's addition; stock arq ignores unknown keys). Expiry as arq: one day
    after the job is due, unless given."""
    import time

    now = now_ms if now_ms is not None else int(time.time() * 1000)
    score = score_ms if score_ms is not None else now
    record = {"t": None, "f": function, "a": list(args), "k": kwargs, "et": now}
    if batch:
        record["b"] = batch
    return job_id, score, expires_ms or (score - now + DAY_MS), dumps(record)


async def enqueue_chunk(
    redis: Any, queue_name: str, jobs: Sequence[tuple[str, int, int, bytes]], id_list_key: str = "",
    durability: Any = None, *, force: bool = False, pending: str = "", first: bool = False,
) -> list[str]:
    """Write ``(job_id, score_ms, expires_ms, payload)`` jobs atomically; return the ids skipped
    because they already exist as a job or a result (``force``: as a job). ``id_list_key`` (a batch's
    sorted set of ids, scored by insertion order) gets every id not in it yet, skipped ones included.
    ``pending`` (a bulk batch's pending set, :func:`mediaq.runtime.keys.batch_pending`): the jobs wait
    there instead of in the queue until :mod:`mediaq.runtime.bulk` releases them; ``first`` puts them
    ahead of the batch's other pending jobs (a follow-up of a job that just ran). In durable mode
    (``durability``, see :mod:`mediaq.runtime.replication`) the script and ``WAIT`` go on one connection,
    and too few replicas raise :class:`~mediaq.errors.ReplicationTimeout`."""
    run = script(redis, "enqueue", ENQUEUE_LUA)
    argv = _enqueue_argv(queue_name, jobs, id_list_key, force, pending, first)
    if durability is None or not durability.on:
        return _decoded(await run(args=argv))
    async with redis.pipeline(transaction=False) as pipe:
        await run(args=argv, client=pipe)
        pipe.execute_command(*durability.command())
        skipped, acked = await pipe.execute()
    durability.check(acked, f"a chunk of {len(jobs)} jobs")
    return _decoded(skipped)


def _enqueue_argv(queue_name: str, jobs: Sequence[tuple[str, int, int, bytes]], id_list_key: str,
                  force: bool = False, pending: str = "", first: bool = False) -> list[Any]:
    flags = ("f" if force else "") + ("h" if first else "")
    argv: list[Any] = [queue_name, id_list_key, flags or "-", pending]
    for job_id, score, expires_ms, payload in jobs:
        argv += [job_id, score, expires_ms, payload]
    return argv


def _chunk_size(argv: list[Any]) -> int:
    return (len(argv) - 4) // 4  # queue, id set, flags, pending set, then 4 values a job


def _decoded(ids: list[Any]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in ids]


class ChunkSender:
    """Sends :func:`enqueue_chunk` chunks on one connection, with one chunk in flight.

    ``await send(chunk)`` writes the script call and returns at once; ``await landed()`` reads its
    reply (the skipped ids). The caller builds the next chunk in between, so the client's encoding
    and the server's script run at the same time on two cores. Sending the next chunk only after
    the previous one landed keeps the guarantee that a failure leaves whole chunks before it, at
    most one chunk in doubt (sent, its reply lost with the connection) and nothing after.
    (redis-py's own calls only write a command several loop turns after they are scheduled, which
    is why this talks to a pooled connection directly.)

    In durable mode (``durability``, see :mod:`mediaq.runtime.replication`) the script call is
    followed by ``WAIT`` on the same connection, sent with it, and a chunk lands only once enough
    replicas acknowledged it: :meth:`landed` raises :class:`~mediaq.errors.ReplicationTimeout`
    otherwise (the chunk is then on the primary, not confirmed on the replicas).
    """

    def __init__(self, redis: Any, queue_name: str, id_list_key: str = "", durability: Any = None, *,
                 force: bool = False, pending: str = "") -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.id_list_key = id_list_key
        self.durability = durability
        self.force = force
        self.pending = pending
        self._connection: Any = None
        self._sha: str | None = None
        self._in_flight: list[Any] | None = None  # argv of the chunk sent and not landed yet

    @property
    def in_flight(self) -> int:
        """How many jobs were (or were being) sent and have not landed yet: 0 or one chunk's worth."""
        return 0 if self._in_flight is None else _chunk_size(self._in_flight)

    @property
    def _durable(self) -> bool:
        return self.durability is not None and self.durability.on

    async def send(self, jobs: Sequence[tuple[str, int, int, bytes]]) -> None:
        if self._in_flight is not None:
            raise RuntimeError("the previous chunk has not landed yet")
        if self._connection is None:
            self._sha = await self.redis.script_load(ENQUEUE_LUA)
            pool = self.redis.connection_pool
            try:
                self._connection = await pool.get_connection()
            except TypeError:  # redis-py < 5.3 wants a command name
                self._connection = await pool.get_connection("EVALSHA")
        argv = _enqueue_argv(self.queue_name, jobs, self.id_list_key, self.force, self.pending)
        connection = self._connection
        if not connection.is_connected:  # failures up to here mean nothing was sent
            await connection.connect()
        else:
            await connection.check_health()
        self._in_flight = argv  # from here on the server may have it, even if writing fails part way
        await self._send(argv)

    async def _send(self, argv: list[Any]) -> None:
        commands: list[tuple[Any, ...]] = [("EVALSHA", self._sha, 0, *argv)]
        if self._durable:
            commands.append(self.durability.command())
        await self._connection.send_packed_command(self._connection.pack_commands(commands), check_health=False)

    async def landed(self) -> list[str]:
        """The ids the chunk in flight skipped because they already existed."""
        from redis.exceptions import NoScriptError

        argv = self._in_flight
        if argv is None:
            return []
        try:
            reply = await self._connection.read_response()
        except NoScriptError:  # the server's script cache was flushed between two chunks
            if self._durable:
                await self._connection.read_response()  # the WAIT after it
            self._sha = await self.redis.script_load(ENQUEUE_LUA)
            await self._send(argv)
            reply = await self._connection.read_response()
        if self._durable:
            acked = await self._connection.read_response()
            self._in_flight = None  # every reply is read: the connection is clean, the chunk is on the primary
            self.durability.check(acked, f"a chunk of {_chunk_size(argv)} jobs")
        self._in_flight = None  # only now: until its reply is read the chunk is still in flight
        return _decoded(reply)

    async def aclose(self) -> None:
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        if self._in_flight is not None:  # a reply nobody will read: the connection must not be reused
            self._in_flight = None
            await connection.disconnect()
        await self.redis.connection_pool.release(connection)


async def status_codes(redis: Any, queue_name: str, ids: Iterable[str], now_ms: int,
                       chunk: int = 5000, pending: str = "") -> list[int]:
    """One state code per id (index into :data:`STATES`, or 7 for a result to read in Python); ids in
    ``pending`` (a bulk batch's pending set) are queued."""
    ids = list(ids)
    run = script(redis, "status", STATUS_LUA)
    out: list[int] = []
    for start in range(0, len(ids), chunk):
        out += await run(args=[queue_name, now_ms, pending, *ids[start:start + chunk]])
    return out


def script(redis: Any, name: str, source: str) -> Any:
    # register_script caches by SHA and falls back to EVAL after a server restart (NOSCRIPT)
    cache = redis.__dict__.setdefault("_mediaq_scripts", {})
    if name not in cache:
        cache[name] = redis.register_script(source)
    return cache[name]
