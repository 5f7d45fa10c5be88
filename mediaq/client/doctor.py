"""What ``mediaq status`` and ``mediaq doctor`` report, as data: what the queue is doing, and what to do.

The doctor walks the seed application's troubleshooting list: is Redis reachable with these
settings, is a worker alive, are jobs waiting with no worker, which jobs keep retrying and why.
Each check is ``ok``, ``warn`` or ``FAIL`` and, when not ok, says what to do; the command line
(:mod:`mediaq.faces.console`) prints them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mediaq.errors import MediaqError
from mediaq.runtime import keys
from mediaq.runtime.heartbeat import read_dead_workers, read_health, read_workers
from mediaq.runtime.serialization import result_outcome
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["describe_replication", "diagnose", "queue_status"]


async def diagnose(settings: Settings) -> list[tuple[str, str, str]]:
    """The checks as ``(level, finding, what to do)`` tuples; level is ok, warn or FAIL."""
    from mediaq.client.connection import connect
    from mediaq.runtime.server import EmbeddedServer

    checks: list[tuple[str, str, str]] = []
    if settings.redis_url:
        where = f"MEDIAQ_REDIS_URL={redact_url(settings.redis_url)}"
    else:
        status = EmbeddedServer(settings.state_dir, settings.redis_server).status()
        where = f"embedded server in {status['folder']}"
        if not status["running"]:
            checks.append(("warn", f"the {where} is not running",
                           "it starts on first use; `mediaq redis start` starts it now"))
            return checks
    try:
        client = await connect(settings=settings)
    except MediaqError as exc:
        checks.append(("FAIL", f"Redis is not reachable ({where}): {exc}",
                       "start the server, or fix MEDIAQ_REDIS_URL (host, port, password)"))
        return checks
    try:
        checks.append(("ok", f"Redis reachable: {redact_url(client.url)} (queue db {settings.queue_db}, "
                       f"cache db {settings.cache_db})", ""))
        redis = client.redis
        workers = await read_workers(redis)
        dead = await read_dead_workers(redis)
        health = await read_health(redis, settings.queue_name)
        if dead and not workers:  # the queue's health line may be a killed worker's last one
            health = None
        counts = await client.queue_counts()
        for beat in dead:
            checks.append(("warn", f"worker {beat.get('host')}:{beat.get('pid')} is gone (its process ended "
                           "without stopping; killed?) though its heartbeat has not expired yet",
                           "its jobs are recovered by any live worker; see its log for why it died"))
        if workers:
            checks.append(("ok", f"{len(workers)} mediaq worker(s) alive: " + ", ".join(
                f"{w['host']}:{w['pid']} ({w.get('ongoing', 0)} running)" for w in workers), ""))
        elif health:
            checks.append(("ok", f"an arq worker is alive (health check at {health['time']})", ""))
        else:
            checks.append(("warn", "no worker is alive on this queue",
                           "start one: `mediaq worker`, `arq mediaq.worker.WorkerSettings`, or "
                           "mediaq.start_worker() in a notebook"))
        if counts["queued"] and not (workers or health):
            checks.append(("FAIL", f"{counts['queued']} job(s) are waiting and no worker is taking them",
                           "start a worker (see above) with the same MEDIAQ_REDIS_URL and queue"))
        elif counts["queued"]:
            checks.append(("ok", f"{counts['queued']} job(s) queued, {counts['deferred']} deferred", ""))
        else:
            checks.append(("ok", f"no job waiting ({counts['deferred']} deferred)", ""))
        checks += await _replication(client)
        checks += await _retrying(client)
        checks += await _recent_failures(client)
    finally:
        await client.close()
    return checks


async def _replication(client: Any) -> list[tuple[str, str, str]]:
    """Primary, replicas and Sentinels as they are now, against what durable mode needs."""
    from mediaq.runtime.replication import replication_status

    rep = await replication_status(client.redis, client.url)
    checks = [("ok", describe_replication(rep), "")]
    for s in rep["sentinels"] or []:
        if "error" in s:
            checks.append(("warn", f"Sentinel {s['address']} does not answer ({s['error']})",
                           "a failover needs a majority of the Sentinels: restart it"))
        elif s["primary"] != rep["primary"]:
            checks.append(("warn", f"Sentinel {s['address']} names {s['primary']} as primary, not {rep['primary']}",
                           "a failover may be under way; if it stays so, check that Sentinel's network"))
    online = sum(1 for r in rep["replicas"] if r["state"] == "online")
    wanted = client.settings.durable_replicas
    if wanted > online:
        checks.append(("FAIL", f"durable mode needs {wanted} replica(s) but the primary has {online} online",
                       f"every durable write now waits {client.settings.durable_timeout:g} s and fails with "
                       "ReplicationTimeout: start the replicas, or lower MEDIAQ_DURABLE_REPLICAS"))
    elif rep["sentinels"] is not None and not online:
        checks.append(("warn", "the primary has no replica online: a failover would have nothing to promote",
                       "start a replica (`replicaof <primary host> <port>` in its config)"))
    return checks


def describe_replication(rep: dict[str, Any]) -> str:
    """One line: the primary, its replicas and (for Sentinels) how many agree on it.

    >>> describe_replication({"primary": "10.0.0.1:6379", "replicas": [{"address": "10.0.0.2:6379",
    ...     "state": "online", "lag_bytes": 0}], "sentinels": None, "master_name": None})
    'primary 10.0.0.1:6379; replicas: 10.0.0.2:6379 (online, 0 bytes behind)'
    """
    replicas = ", ".join(f"{r['address']} ({r['state']}, {r['lag_bytes']} bytes behind)" for r in rep["replicas"])
    line = f"primary {rep['primary']}; replicas: {replicas or 'none'}"
    if rep["sentinels"] is not None:
        agree = sum(1 for s in rep["sentinels"] if s.get("primary") == rep["primary"])
        line += f"; {agree} of {len(rep['sentinels'])} Sentinel(s) name it primary of {rep['master_name']!r}"
    return line


async def _retrying(client: Any) -> list[tuple[str, str, str]]:
    redis = client.redis
    found = [k async for k in redis.scan_iter(match=keys.RETRY_PREFIX + "*", count=1000)]
    if not found:
        return [("ok", "no job is being retried", "")]
    tries = await redis.mget(found)
    ids = [k.decode()[len(keys.RETRY_PREFIX):] for k in found]
    jobs = await redis.mget([keys.JOB_PREFIX + i for i in ids])
    stuck = []
    for job_id, n, raw in zip(ids, tries, jobs, strict=True):
        if n and int(n) >= 2:
            try:
                function = client.loads(raw)["f"] if raw else "?"
            except Exception:
                function = "?"
            stuck.append(f"{job_id} ({function}, try {int(n)})")
    if not stuck:
        return [("ok", "no job has needed a second try", "")]
    return [("warn", f"{len(stuck)} job(s) keep retrying: " + ", ".join(stuck[:10]),
             "transient errors (server unreachable, database locked) retry 5 s x try up to 3 tries; "
             "check the worker log (`LocalWorker.logs()` or the `mediaq worker` output) for the cause")]


async def _recent_failures(client: Any, sample: int = 5000) -> list[tuple[str, str, str]]:
    redis = client.redis
    found = []
    async for k in redis.scan_iter(match=keys.RESULT_PREFIX + "*", count=1000):
        found.append(k)
        if len(found) >= sample:
            break
    reasons: Counter[str] = Counter()
    aborted = 0
    for start in range(0, len(found), 1000):
        for raw in await redis.mget(found[start:start + 1000]):
            try:
                record = client.loads(raw) if raw else None
            except Exception:
                reasons["unreadable result record (foreign serializer?)"] += 1
                continue
            outcome = result_outcome(record) if record else None
            if outcome == "aborted":  # asked for (batch.abort()), not a failure
                aborted += 1
            elif outcome == "failed":
                err = record.get("r")
                reasons[f"{record.get('f')}: {getattr(err, 'type', type(err).__name__)}"
                        f"{' [' + err.code + ']' if getattr(err, 'code', None) else ''}"] += 1
    also = f" ({aborted} aborted on request)" if aborted else ""
    if not reasons:
        return [("ok", f"no failed job among {len(found)} result(s){also}", "")]
    top = ", ".join(f"{reason} x{n}" for reason, n in reasons.most_common(5))
    return [("warn", f"{sum(reasons.values())} failed job(s) among {len(found)} result(s){also}: {top}",
             "`await batch.failed()` shows each file and error; fix or skip them, then `batch.retry_failed()`")]


async def queue_status(settings: Settings) -> dict[str, Any]:
    """What ``mediaq status`` shows, as data: ``counts`` (queued, deferred), ``workers`` (heartbeats),
    ``in_progress``, ``batches``: the last ten batches' counts by state, oldest first, and
    ``replication``: the primary, its replicas and the Sentinels' view
    (:func:`~mediaq.runtime.replication.replication_status`)."""
    from mediaq.client.connection import connect
    from mediaq.runtime.replication import replication_status

    async with await connect(settings=settings) as client:
        replication = await replication_status(client.redis, client.url)
        counts = await client.queue_counts()
        workers = await read_workers(client.redis)
        batches = await client.batches()
        recent = {name: await client.batch(name).status() for name in list(batches["batch"])[-10:]}
    return {"counts": counts, "workers": workers, "in_progress": sum(w.get("ongoing", 0) for w in workers),
            "batches": recent, "replication": replication, "warnings": _status_warnings(counts, workers)}


def _status_warnings(counts: dict[str, int], workers: list[dict[str, Any]]) -> list[str]:
    """What ``mediaq status`` must say loudly: jobs waiting with nobody to run them."""
    if counts["queued"] and not workers:
        return [f"{counts['queued']} job(s) waiting and no live worker: start one (`mediaq worker`, or "
                "mediaq.start_worker() in a notebook)"]
    return []
