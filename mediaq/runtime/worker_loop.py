"""What mediaq changes in arq 0.28's worker loop, patched in the worker process only.

A stock arq worker spends six round trips on every job: four to claim it (``WATCH``, ``EXISTS``,
``ZSCORE``, ``MULTI``/``PSETEX``/``EXEC``), one transaction to read it (``GET`` the record, ``INCR``
its try counter, ``EXPIRE`` that, ``ZREM`` an abort request) and one to finish it (``SET`` the
result, ``ZREM`` it from the queue and the abort set, ``DEL`` its keys). For a small job those round
trips, and the Python that builds and parses them, are most of its cost. Here:

* **claim and read in one call**: :func:`_claiming_start_jobs` claims as many of the polled ids as
  there are free slots with one script call (:func:`~mediaq.runtime.scripts.claim_jobs`), which
  also does each claimed job's read transaction; arq's ``run_job`` then gets that reply from
  :func:`prefetched_pipeline` instead of a round trip. The script writes exactly the keys arq
  writes, so stock arq workers and mediaq workers can share a queue and each job runs once.
* **group commit of results**: :class:`FinishWriter` writes the finish transactions of the jobs that
  end while the previous write is in flight as one ``MULTI``/``EXEC`` (each job's writes stay
  atomic: the transaction holds all of them), and each job's ``finish_job`` returns once that
  transaction (and, in durable mode, its ``WAIT``) is done, as before.
* **a doorbell**: clients publish on ``mediaq:wake:<queue>`` when they queue jobs due now, and an
  idle worker's poll sleep ends at that message (:class:`Doorbell`, :func:`_poll`) instead of
  ``poll_delay`` later. It only shortens the sleep: a lost message, a stock arq client or a broken
  subscription leave the worker polling as arq does.
* **the loop survives Redis outages** (:func:`harden_arq_worker`).

Each change is checked against arq's own code when it is patched in; on another arq version the
worker keeps arq's behaviour for the parts that no longer match, and says so in its log.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from typing import Any

from mediaq.runtime.keys import ABORT_SET, IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, RETRY_PREFIX
from mediaq.runtime.scripts import RETRY_TTL_S, Claimed

__all__ = ["Doorbell", "FinishWriter", "PrefetchedPipeline", "harden_arq_worker", "prefetched_pipeline"]

logger = logging.getLogger("arq.mediaq")

#: (job id, what the claim read for it) for the job this task is about to run; taken by the first
#: ``pipeline()`` call on the worker's Redis (:func:`prefetched_pipeline`), which is ``run_job``'s read
_PREFETCHED: contextvars.ContextVar[tuple[str, Claimed] | None] = contextvars.ContextVar("mediaq_prefetched",
                                                                                         default=None)

#: the worker's doorbell, set by its startup hook in the task that then runs arq's poll loop (:func:`_poll`)
_DOORBELL: contextvars.ContextVar[Doorbell | None] = contextvars.ContextVar("mediaq_doorbell", default=None)

#: arq 0.28's ``run_job`` opens with this transaction; the claim script does the same for it
_RUN_JOB_READ = """\
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.get(job_key_prefix + job_id)
            pipe.incr(retry_key_prefix + job_id)
            pipe.expire(retry_key_prefix + job_id, 88400)
            if self.allow_abort_jobs:
                pipe.zrem(abort_jobs_ss, job_id)
"""


def harden_arq_worker() -> bool:
    """Keep arq's worker loop alive through Redis outages and restarts, start jobs in one round trip
    and write results in groups (arq 0.28; idempotent). Patched in the worker process only (called
    when the ``WorkerSettings`` are built).

    arq runs ``_poll_iteration`` with no error handling: once a Redis call has used up its retries
    (an outage longer than ~11 s), or when the server answers ``LOADING`` right after a restart while
    arq is between ``WATCH`` and ``MULTI`` (redis-py then raises ``WatchError`` instead of retrying),
    the exception ends the worker. Here such an error is logged, the janitor is asked to look for
    in-progress keys left by it, and polling continues a second later. In durable mode, a result that
    too few replicas acknowledged in time (:class:`~mediaq.errors.ReplicationTimeout`, raised by the
    job's task and re-raised here by arq) is logged as an error and polling goes on.

    ``start_jobs`` becomes :func:`_claiming_start_jobs`, ``finish_job`` goes through a
    :class:`FinishWriter` and the poll loop's sleep can be cut short by a :class:`Doorbell` (see the
    module doc). Returns whether it patched.
    """
    import arq.worker
    from arq.worker import Worker
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.exceptions import WatchError

    from mediaq.errors import ReplicationTimeout

    if getattr(Worker, "_mediaq_hardened", False):
        return False
    needed = ("start_jobs", "_poll_iteration", "run_job", "finish_job", "_release_sem_dec_counter_on_complete")
    if not all(hasattr(Worker, a) for a in needed):  # another arq version
        logger.warning("arq.worker.Worker has changed: the worker loop is not hardened against Redis outages")
        return False
    errors = (RedisConnectionError, RedisTimeoutError, WatchError, OSError)
    poll_iteration = Worker._poll_iteration

    async def hardened_poll_iteration(self: Any) -> None:
        try:
            await poll_iteration(self)
        except ReplicationTimeout as exc:  # a result of a job that ended: written, not confirmed
            logger.error("durable mode: %s", exc)
        except errors as exc:
            logger.warning("Redis failed in the worker loop (%s: %s); polling again in 1 s", type(exc).__name__, exc)
            _request_orphan_scan(self)
            await asyncio.sleep(1.0)

    Worker._mediaq_original = {"start_jobs": Worker.start_jobs, "finish_job": Worker.finish_job,  # type: ignore[attr-defined]
                               "_poll_iteration": poll_iteration}
    Worker._mediaq_prefetch = _reads_like_arq_0_28(Worker.run_job)  # type: ignore[attr-defined]
    if not Worker._mediaq_prefetch:  # type: ignore[attr-defined]
        logger.warning("arq's run_job has changed: each job is read in a round trip of its own")
    Worker.start_jobs = _claiming_start_jobs  # type: ignore[method-assign]
    Worker.finish_job = _grouped_finish_job  # type: ignore[method-assign]
    Worker._poll_iteration = hardened_poll_iteration  # type: ignore[method-assign]
    if callable(getattr(arq.worker, "poll", None)):  # Worker.main's `async for _ in poll(self.poll_delay_s)`
        arq.worker.poll = _poll  # type: ignore[attr-defined]
    Worker._mediaq_hardened = True  # type: ignore[attr-defined]
    return True


def _reads_like_arq_0_28(run_job: Any) -> bool:
    """Whether ``run_job``'s first Redis call is arq 0.28's read transaction (``_RUN_JOB_READ``), the
    one :func:`prefetched_pipeline` answers from the claim."""
    try:
        source = inspect.getsource(run_job)
    except (OSError, TypeError):
        return False
    at = source.find(_RUN_JOB_READ)
    return at != -1 and source.find("self.pool") == source.find("self.pool.pipeline", at)


def _request_orphan_scan(worker: Any) -> None:
    janitor = worker.ctx.get("janitor_obj")
    if janitor is not None:
        janitor.request_orphan_scan()


async def _claiming_start_jobs(self: Any, job_ids: list[bytes]) -> None:
    """arq 0.28's ``Worker.start_jobs`` with its per-job claim transaction replaced by one
    :func:`~mediaq.runtime.scripts.claim_jobs` call for as many ids as there are free slots, which
    also reads each claimed job for ``run_job`` (when arq's ``run_job`` is the one it knows).

    Kept from arq: the ids are taken in order; each takes a slot of ``self.sem`` (waiting for the
    first when none is free) and counts in ``self.job_counter`` before it is claimed; nothing is
    started once ``job_counter`` reaches ``max_jobs``; an id the claim skips (in progress elsewhere,
    gone from the queue, due later) gives its slot back and is logged at debug level; a claimed job
    runs in ``run_job(job_id, score)`` as a task in ``self.tasks`` that gives its slot back when done.
    The claim is tried once (:func:`~mediaq.runtime.connections.single_attempt`): if it fails, every
    slot taken for it is given back and the error raised (the hardened ``_poll_iteration`` then asks
    the janitor to free any claim the lost reply hid, and polls again); a script error is logged and
    its ids skipped, as arq skips a job whose ``EXEC`` fails.

    One change: when all ``max_jobs`` are running and read ids are left, arq returns and the next
    poll comes ``poll_delay`` later. arq's own four round trips a job let the first jobs end while it
    is still claiming; one claim for all slots fills them at once, so returning would start at most
    ``max_jobs`` jobs a poll. Here it waits for a job to end, for at most ``poll_delay`` since the
    call began, and goes on with the ids left (the claim checks each again); past that it returns,
    so the poll loop's abort checks and heartbeat still come at least as often as arq's (the next
    poll then follows at once, its delay spent). For the same reason, once every read id is handled,
    the read was full (``queue_read_limit`` ids: there may be more) and started a job, it reads the
    queue again within the same poll (:func:`_read_on`): arq's ``poll_delay`` is the pause of an idle worker, and
    would otherwise cap a busy one at ``queue_read_limit / poll_delay`` jobs a second (2,000 with
    arq's defaults of 100 ids and mediaq's 0.05 s).
    """
    from arq.utils import timestamp_ms
    from redis.exceptions import ResponseError

    from mediaq.runtime import scripts
    from mediaq.runtime.connections import single_attempt

    ids = [job_id.decode() for job_id in job_ids]
    read, done, started = len(ids), 0, 0
    deadline = self.loop.time() + self.poll_delay_s
    slot_freed = self.__dict__.get("_mediaq_slot_freed")
    if slot_freed is None:
        slot_freed = self._mediaq_slot_freed = asyncio.Event()
    # read with the claim only where run_job's read will be answered from it (the worker's own ArqRedis)
    fetch = getattr(self, "_mediaq_prefetch", False) and getattr(self.pool, "answers_prefetched", False)
    abort = bool(getattr(self, "allow_abort_jobs", False))
    while True:
        while done < len(ids):
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                wait = deadline - self.loop.time()
                if wait <= 0:
                    return
                slot_freed.clear()
                try:
                    await asyncio.wait_for(slot_freed.wait(), wait)
                except TimeoutError:
                    return
                continue
            take = 1  # and every other slot free right now (acquire returns at once while not locked)
            while done + take < len(ids) and self.job_counter + take < self.max_jobs and not self.sem.locked():
                await self.sem.acquire()
                take += 1
            batch, done = ids[done:done + take], done + take
            self.job_counter += take
            try:
                with single_attempt():
                    claimed = await scripts.claim_jobs(self.pool, self.queue_name, batch, timestamp_ms(),
                                                       int(self.in_progress_timeout_s * 1000), fetch=fetch,
                                                       abort=abort)
            except ResponseError as exc:
                logger.warning("claiming %d job(s) failed (%s); they are left for the next poll", take, exc)
                claimed = {}
                _request_orphan_scan(self)
            except BaseException:
                self.job_counter -= take  # counted, never started
                for _ in batch:
                    self.sem.release()
                raise
            for job_id in batch:
                got = claimed.get(job_id)
                if got is None:  # started elsewhere, finished and removed, or re-queued with a delay
                    self.job_counter -= 1
                    self.sem.release()
                    logger.debug("job %s already running elsewhere", job_id)
                    continue
                run = _run_prefetched(self, job_id, got) if fetch else self.run_job(job_id, got.score)
                t = self.loop.create_task(run)
                started += 1
                t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                t.add_done_callback(lambda _: slot_freed.set())
                self.tasks[job_id] = t
        if not started:  # every id was taken elsewhere: reading on would only find them again
            return
        read, ids = await _read_on(self, read, deadline)
        if not ids:
            return
        done = started = 0


async def _read_on(worker: Any, last_read: int, deadline: float) -> tuple[int, list[str]]:
    """(ids read, the next due ids) for ``start_jobs`` within the same poll: when the last read was
    full (``last_read`` ids: the queue may hold more) and the poll's time is not spent, the queue is
    read again as arq's poll reads it, and the jobs this worker is running are left out; else
    ``(0, [])`` (back to arq's poll loop). Not in burst mode with ``max_burst_jobs``, where arq counts
    each poll's read."""
    from arq.utils import timestamp_ms

    limit = getattr(worker, "queue_read_limit", None)
    if (not limit or last_read < limit or worker.loop.time() >= deadline
            or (worker.burst and worker.max_burst_jobs >= 0)):
        return 0, []
    running = {job_id for job_id, t in worker.tasks.items() if not t.done()}
    read = await worker.pool.zrangebyscore(worker.queue_name, min=float("-inf"), start=worker._queue_read_offset,
                                           num=limit, max=timestamp_ms())
    return len(read), [job_id for job_id in (b.decode() for b in read) if job_id not in running]


async def _run_prefetched(worker: Any, job_id: str, claimed: Claimed) -> None:
    """arq's ``run_job`` in a task whose first transaction is answered from the claim's reply."""
    _PREFETCHED.set((job_id, claimed))  # this task's own context
    await worker.run_job(job_id, claimed.score)


def prefetched_pipeline() -> PrefetchedPipeline | None:
    """The stand-in for ``run_job``'s read transaction when the current task's job was read by its
    claim, else ``None``; taken once (the worker's ``ArqRedis.pipeline()`` asks first)."""
    item = _PREFETCHED.get()
    if item is None:
        return None
    _PREFETCHED.set(None)
    return PrefetchedPipeline(*item)


class PrefetchedPipeline:
    """arq 0.28's first transaction in ``run_job`` (``_RUN_JOB_READ``), answered from the claim's
    reply: the same calls are accepted in the same order, with the same keys, and ``execute()``
    returns what the server returned to the claim script for them. Anything else is a programming
    error (``harden_arq_worker`` checks arq's source before it turns this on) and raises.

    >>> p = PrefetchedPipeline("j1", Claimed(5, b"rec", 1, False))
    >>> p.get("arq:job:j1").incr("arq:retry:j1").expire("arq:retry:j1", 88400) is p
    True
    >>> import asyncio; asyncio.run(p.execute())
    [b'rec', 1, True]
    """

    def __init__(self, job_id: str, claimed: Claimed) -> None:
        self.job_id, self.claimed = job_id, claimed
        self._expected = [("get", JOB_PREFIX + job_id), ("incr", RETRY_PREFIX + job_id),
                          ("expire", RETRY_PREFIX + job_id, RETRY_TTL_S), ("zrem", ABORT_SET, job_id)]
        self._calls: list[tuple[Any, ...]] = []

    def __repr__(self) -> str:
        return f"<PrefetchedPipeline job={self.job_id!r} calls={len(self._calls)}>"

    async def __aenter__(self) -> PrefetchedPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def get(self, name: str) -> PrefetchedPipeline:
        return self._call("get", name)

    def incr(self, name: str, amount: int = 1) -> PrefetchedPipeline:
        return self._call("incr", name) if amount == 1 else self._call("incr", name, amount)

    def expire(self, name: str, time: int) -> PrefetchedPipeline:
        return self._call("expire", name, time)

    def zrem(self, name: str, *values: str) -> PrefetchedPipeline:
        return self._call("zrem", name, *values)

    def _call(self, *call: Any) -> PrefetchedPipeline:
        self._calls.append(call)
        return self

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        n = len(self._calls)
        if n not in (3, 4) or self._calls != self._expected[:n]:
            raise RuntimeError(f"run_job's read of {self.job_id!r} was answered from its claim, but it asked for "
                               f"{self._calls!r}: arq's run_job has changed (see mediaq.runtime.worker_loop)")
        c = self.claimed
        return [c.record, c.tries, True, int(bool(c.aborted))][:n]


async def _grouped_finish_job(self: Any, job_id: str, finish: bool, result_data: bytes | None,
                              result_timeout_s: float | None, keep_result_forever: bool, incr_score: int | None,
                              keep_in_progress: float | None) -> None:
    """arq's ``finish_job``, written with the other jobs that end meanwhile (:class:`FinishWriter`)."""
    writer = self.__dict__.get("_mediaq_finish_writer")
    if writer is None:
        writer = self._mediaq_finish_writer = FinishWriter(self.pool, self.queue_name)
    await writer.finish(job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score,
                        keep_in_progress)


class FinishWriter:
    """Group commit for arq's ``finish_job``: the finishes that arrive while a write is in flight go
    out together in the next one, one ``MULTI``/``EXEC`` holding what arq's per-job transactions
    hold (per job: ``DEL`` or ``PEXPIRE`` of the in-progress key; when it finished, ``SET`` of the
    result with its TTL, ``DEL`` of the record and the try counter, ``ZREM`` from the abort set and
    the queue; when it is to run again later, ``ZINCRBY`` of its score), with the ``ZREM`` and
    ``DEL`` of all jobs merged into one call each. At most one write is in flight, so one job ending
    alone is written at once, and under load each write carries every job that ended during the
    previous one. ``finish`` returns when its write is done and raises what the write raised.

    The writes go through the worker's ``ArqRedis``, so its retries and durable mode (one ``WAIT``
    for the whole group) apply as to arq's own transaction.
    """

    def __init__(self, redis: Any, queue_name: str) -> None:
        self.redis, self.queue_name = redis, queue_name
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # transactions written (for tests and benchmarks)

    def __repr__(self) -> str:
        return f"<FinishWriter queue={self.queue_name!r} waiting={len(self._waiting)} writes={self.writes}>"

    async def finish(self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
                     keep_result_forever: bool, incr_score: int | None, keep_in_progress: float | None) -> None:
        """arq's ``finish_job`` arguments, unchanged."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append(((job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score,
                               keep_in_progress), done))
        if self._writer is None:
            self._writer = loop.create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    await self._write([args for args, _ in group])
                except asyncio.CancelledError:
                    for _, done in group + self._waiting:
                        done.cancel()
                    self._waiting = []
                    raise
                except Exception as exc:
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writer = None

    async def _write(self, group: list[tuple[Any, ...]]) -> None:
        from arq.utils import to_ms

        self.writes += 1
        async with self.redis.pipeline(transaction=True) as tr:
            delete: list[str] = []
            ended: list[str] = []
            for job_id, finish, result_data, result_timeout_s, keep_forever, incr_score, keep_in_progress in group:
                if keep_in_progress is None:
                    delete.append(IN_PROGRESS_PREFIX + job_id)
                else:
                    tr.pexpire(IN_PROGRESS_PREFIX + job_id, to_ms(keep_in_progress))
                if finish:
                    if result_data:
                        expire = None if keep_forever else result_timeout_s
                        tr.set(RESULT_PREFIX + job_id, result_data, px=to_ms(expire))
                    delete += [RETRY_PREFIX + job_id, JOB_PREFIX + job_id]
                    ended.append(job_id)
                elif incr_score:
                    tr.zincrby(self.queue_name, incr_score, job_id)
            if ended:
                tr.zrem(ABORT_SET, *ended)
                tr.zrem(self.queue_name, *ended)
            if delete:
                tr.delete(*delete)
            await tr.execute()


class Doorbell:
    """Wakes an idle worker when jobs are queued: a subscription to ``channel`` (``mediaq:wake:<queue>``,
    published by mediaq's enqueue paths for jobs due now) that sets :attr:`rung`.

    ``run()`` keeps the subscription (on a connection of its own from the worker's pool) and makes a
    new one a second after it fails; while it is down the worker polls every ``poll_delay`` as arq
    does. :meth:`install` makes it the doorbell of the poll loop that runs in the current task (arq
    calls the worker's startup hook in that task just before its loop).

    >>> bell = Doorbell(None, "mediaq:wake:arq:queue")
    >>> bell
    <Doorbell channel='mediaq:wake:arq:queue' rings=0 subscribed=False>
    """

    def __init__(self, redis: Any, channel: str) -> None:
        self.redis, self.channel = redis, channel
        self.rung = asyncio.Event()
        self.rings = 0
        self.subscribed = False

    def __repr__(self) -> str:
        return f"<Doorbell channel={self.channel!r} rings={self.rings} subscribed={self.subscribed}>"

    def install(self) -> None:
        _DOORBELL.set(self)

    async def run(self, *, retry_after: float = 1.0) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed = True
                    while True:
                        # a timeout below the connection's socket_timeout: silence is not an error
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                        if message is not None:
                            self.rings += 1
                            self.rung.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: polling goes on meanwhile
                logger.debug("doorbell subscription failed (%s); subscribing again in %.0f s", exc, retry_after)
            finally:
                self.subscribed = False
            await asyncio.sleep(retry_after)


#: the shortest pause between two polls when the doorbell rings: a flood of single enqueues wakes a
#: worker at most this often
MIN_POLL_GAP = 0.002


async def _poll(step: float = 0.5) -> Any:
    """arq's ``arq.utils.poll`` (yield, then sleep what is left of ``step``), whose sleep ends early
    when this task's :class:`Doorbell` rings; rings during an iteration make the next one come at once."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    bell = _DOORBELL.get()
    while True:
        before = loop.time()
        if bell is not None:
            bell.rung.clear()  # what rings from here on may be missed by this iteration's read
        yield before - start
        after = loop.time()
        wait = max(0.0, step - after + before)
        if bell is None or wait <= 0:
            await asyncio.sleep(wait)
            continue
        if not bell.rung.is_set():
            try:
                await asyncio.wait_for(bell.rung.wait(), wait)
            except TimeoutError:
                continue
        await asyncio.sleep(min(MIN_POLL_GAP, wait))
