"""Every Redis key mediaq reads or writes, in one place (as arq keeps its own in ``arq/constants.py``).

No other module spells a key: ``tests/test_keys.py`` checks that no string literal elsewhere starts with
``arq:`` or ``mediaq:``, and that arq's names here equal arq's own.

arq's keys (arq 0.28), in the queue database:

=============================  =========================================================================
``arq:queue``                  sorted set: job id -> run-at epoch ms (the default queue name)
``arq:job:<id>``               the serialized job record ``{t, f, a, k, et}`` (PSETEX)
``arq:result:<id>``            the result record (adds ``s, r, st, ft, q, id``)
``arq:in-progress:<id>``       set while a worker runs the job (TTL: the longest timeout + 10 s)
``arq:retry:<id>``             the try counter
``arq:abort``                  sorted set of job ids to abort
``<queue>:health-check``       a worker's health line (the last worker to write wins)
=============================  =========================================================================

mediaq's keys, in the queue database unless noted:

=====================================  ==================================================================
``mediaq:batches``                     sorted set: batch name -> creation time
``mediaq:batch:<name>``                hash: function, created
``mediaq:batch:<name>:ids``            sorted set: every job id, scored by enqueue order
``mediaq:batch:<name>:retries``        hash: original id -> retry id
``mediaq:batch:<name>:counts``         hash: complete/failed, ``<function>:<outcome>`` (worker counters)
``mediaq:batch:<name>:errors``         hash: failures by ``<function>\t<error type>\t<code>`` (worker counters)
``mediaq:batch:<name>:pending``        sorted set: a bulk batch's jobs not yet in the queue, in run order
``mediaq:bulk:active``                 set: the pending sets that still hold jobs (see runtime.bulk)
``mediaq:bulk:paused``                 set: the pending sets of paused batches
``mediaq:bulk:window``                 set: bulk job ids released into the queue and not finished yet
``mediaq:bulk:turn``                   counter: which batch goes first at the next top-up (round robin)
``mediaq:stats``                       hash: ``<function>:<outcome>`` for the whole queue
``mediaq:errors``                      hash: failures by ``<function>\t<error type>\t<code>``, whole queue
``mediaq:failures``                    list: the last failures, newest first (JSON)
``mediaq:throughput:<epoch // 600>``   hash: ``<epoch second>:<outcome>`` -> n (expires after an hour)
``mediaq:workers``                     sorted set: heartbeat key -> time of its last beat
``mediaq:worker:<host>:<pid>``         a worker's heartbeat (JSON, expires after three intervals)
``mediaq:claims:<host>:<pid>``         set: the ids of the jobs a worker runs
``mediaq:claimants``                   hash: worker name -> identity (JSON)
``mediaq:recoveries``                  list: the last recoveries, newest first (JSON)
``mediaq:iqdb:{seq,sigs,log,epoch}``   the embedded IQDB index
``mediaq:iqdb-ids:by-id``              hash: image id -> IQDB server post id (ids that are no post id)
``mediaq:iqdb-ids:by-post``            hash: post id -> image id (the same map, backwards)
``mediaq:iqdb-ids:floor``              the lowest post id handed out (they go down from 2**31 - 1)
``mediaq:iqdb-ids:max-direct``         the highest integer id sent to a server as its own post id
``mediaq:ratings:prior:<hash of url>`` the cached rating prior (cache database)
``mediaq:wake:<queue>``                pub/sub channel: jobs were queued (workers wake from their poll sleep)
=====================================  ==================================================================

>>> batch_ids("thumbs-1"), heartbeat("host", 42)
('mediaq:batch:thumbs-1:ids', 'mediaq:worker:host:42')
"""

from __future__ import annotations

__all__ = [
    "ABORT_SET",
    "BATCHES",
    "BULK_ACTIVE",
    "BULK_FINISHED",
    "BULK_PAUSED",
    "BULK_TURN",
    "BULK_WINDOW",
    "CLAIMANTS",
    "CLAIMS_PREFIX",
    "DEFAULT_QUEUE",
    "ERRORS",
    "FAILURES",
    "HEALTH_CHECK_SUFFIX",
    "HEARTBEAT_PREFIX",
    "IN_PROGRESS_PREFIX",
    "IQDB_IDS_BY_ID",
    "IQDB_IDS_BY_POST",
    "IQDB_IDS_FLOOR",
    "IQDB_IDS_MAX_DIRECT",
    "IQDB_PREFIX",
    "JOB_PREFIX",
    "RATINGS_PRIOR_PREFIX",
    "RECOVERIES",
    "RESULT_PREFIX",
    "RETRY_PREFIX",
    "STATS",
    "THROUGHPUT_PREFIX",
    "WAKE_PREFIX",
    "WORKERS",
    "batch",
    "batch_counts",
    "batch_errors",
    "batch_ids",
    "batch_pending",
    "batch_retries",
    "claims",
    "health_check",
    "heartbeat",
    "ratings_prior",
    "throughput",
    "wake_channel",
]

# -- arq's (equal to arq.constants, checked by the tests) ------------------------------------------------
DEFAULT_QUEUE = "arq:queue"
JOB_PREFIX = "arq:job:"
RESULT_PREFIX = "arq:result:"
IN_PROGRESS_PREFIX = "arq:in-progress:"
RETRY_PREFIX = "arq:retry:"
ABORT_SET = "arq:abort"
HEALTH_CHECK_SUFFIX = ":health-check"

# -- mediaq's --------------------------------------------------------------------------------------------
BATCHES = "mediaq:batches"
STATS = "mediaq:stats"
ERRORS = "mediaq:errors"
FAILURES = "mediaq:failures"
THROUGHPUT_PREFIX = "mediaq:throughput:"
WORKERS = "mediaq:workers"
HEARTBEAT_PREFIX = "mediaq:worker:"
CLAIMS_PREFIX = "mediaq:claims:"
CLAIMANTS = "mediaq:claimants"
RECOVERIES = "mediaq:recoveries"
IQDB_PREFIX = "mediaq:iqdb:"
IQDB_IDS_BY_ID = "mediaq:iqdb-ids:by-id"
IQDB_IDS_BY_POST = "mediaq:iqdb-ids:by-post"
IQDB_IDS_FLOOR = "mediaq:iqdb-ids:floor"
IQDB_IDS_MAX_DIRECT = "mediaq:iqdb-ids:max-direct"
RATINGS_PRIOR_PREFIX = "mediaq:ratings:prior:"
BULK_ACTIVE = "mediaq:bulk:active"
BULK_PAUSED = "mediaq:bulk:paused"
BULK_WINDOW = "mediaq:bulk:window"
BULK_TURN = "mediaq:bulk:turn"
BULK_FINISHED = "mediaq:bulk:finished"
WAKE_PREFIX = "mediaq:wake:"


def wake_channel(queue_name: str) -> str:
    """The channel a message goes to when jobs are queued on ``queue_name`` (see runtime.worker_loop)."""
    return WAKE_PREFIX + queue_name


def health_check(queue_name: str) -> str:
    return queue_name + HEALTH_CHECK_SUFFIX


def batch(name: str) -> str:
    return f"mediaq:batch:{name}"


def batch_ids(name: str) -> str:
    return f"mediaq:batch:{name}:ids"


def batch_retries(name: str) -> str:
    return f"mediaq:batch:{name}:retries"


def batch_counts(name: str) -> str:
    return f"mediaq:batch:{name}:counts"


def batch_errors(name: str) -> str:
    return f"mediaq:batch:{name}:errors"


def batch_pending(name: str) -> str:
    return f"mediaq:batch:{name}:pending"


def throughput(second: int) -> str:
    """The hash holding ``second``'s counts (one hash per ten minutes)."""
    return f"{THROUGHPUT_PREFIX}{second // 600}"


def heartbeat(host: str, pid: int) -> str:
    return f"{HEARTBEAT_PREFIX}{host}:{pid}"


def ratings_prior(ratings_url: str) -> str:
    """The cached rating prior of one ratings database (cache db); the URL is hashed, so a password
    never lands in Redis.

    >>> ratings_prior("sqlite:////tmp/r.db")
    'mediaq:ratings:prior:acd2bebc95d645ba'
    """
    import hashlib

    return RATINGS_PRIOR_PREFIX + hashlib.sha256(ratings_url.encode()).hexdigest()[:16]


def claims(worker: str) -> str:
    """The claims set of worker ``<host>:<pid>``."""
    return CLAIMS_PREFIX + worker
