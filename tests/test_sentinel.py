"""Sentinel URLs and durable mode: parsing, clear errors, and the CLI on a real replica set.

The failover itself (kills, reconnects, losses) is ``tests/test_failover.py``; here: what a user
types, what they are told when durable mode cannot be satisfied (a real server without replicas),
and what ``mediaq status`` and ``mediaq doctor`` show for a real primary, replica and 3 Sentinels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import eventually

import mediaq
from mediaq.errors import ConfigError
from mediaq.runtime import keys
from mediaq.runtime.connections import SentinelURL, with_db
from mediaq.runtime.replicaset import LocalReplicaSet
from mediaq.runtime.replication import Durability
from mediaq.runtime.scripts import enqueue_chunk, job_entry
from mediaq.runtime.server import resolve_redis_url
from mediaq.runtime.settings import Settings, redact_url


def test_sentinel_url_parts_and_round_trip():
    u = SentinelURL.parse("redis+sentinel://user:p%40ss@10.0.0.1:26380,[::1],h3/my-primary?sentinel_password=s3")
    assert u.sentinels == (("10.0.0.1", 26380), ("::1", 26379), ("h3", 26379))
    assert (u.master, u.db, u.username, u.password, u.sentinel_password, u.ssl) == \
        ("my-primary", None, "user", "p@ss", "s3", False)
    assert SentinelURL.parse(u.with_db(2)) == SentinelURL(u.sentinels, "my-primary", 2, "user", "p@ss", None, "s3")
    assert SentinelURL.parse("rediss+sentinel://h:1/m/4").ssl
    assert with_db("redis+sentinel://h:1/m/4", 1) == "redis+sentinel://h:1/m/4"  # a db the URL names wins
    assert with_db("redis+sentinel://h:1/m/4", 1, keep_explicit=False).endswith("/m/1")


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://h:1", "primary name"),
    ("redis+sentinel://h:port/m", "not host:port"),
    ("redis+sentinel://h:1/m/x", "not a number"),
    ("redis+sentinel://h:1/m?password=x", "unknown option"),
])
def test_bad_sentinel_urls_are_clear_errors(url, says):
    with pytest.raises(ConfigError, match=says):
        resolve_redis_url(Settings.load(env={}, redis_url=url))


def test_no_password_is_ever_printed():
    url = "redis+sentinel://:hunter2@h:1,h:2/m/1?sentinel_password=swordfish"
    shown = redact_url(url) + repr(Settings.load(env={}, redis_url=url)) + repr(SentinelURL.parse(url))
    assert "hunter2" not in shown and "swordfish" not in shown and "***" in shown


# -- durable mode on a server without replicas: a clear error, nothing silently unconfirmed ----------------
async def test_durable_bulk_enqueue_without_replicas_reports_the_chunk_in_doubt(settings):
    client = await mediaq.connect(settings=settings, durable_timeout=0.2)
    with pytest.raises(mediaq.EnqueueError, match="not enough replicas") as err:
        await client.enqueue_many("noop", range(30), job_id="d:{0}", chunk_size=10, durable=1)
    exc = err.value
    assert (exc.written, exc.chunks_written, exc.in_doubt) == (0, 0, 10)
    cause = exc.__cause__
    assert isinstance(cause, mediaq.ReplicationTimeout) and (cause.acked, cause.wanted) == (0, 1)
    assert await client.redis.exists(keys.JOB_PREFIX + "d:0")
    assert not await client.redis.exists(keys.JOB_PREFIX + "d:10")
    batch = await client.enqueue_many("noop", range(30), job_id="d:{0}", chunk_size=10)  # off again: completes
    assert batch.skipped == [f"d:{i}" for i in range(10)]
    await client.close()


async def test_durable_enqueue_job_without_replicas_raises(settings):
    async with await mediaq.connect(settings=settings, durable_replicas=1, durable_timeout=0.2) as client:
        with pytest.raises(mediaq.ReplicationTimeout, match=r"0 of the 1 replica\(s\)"):
            await client.enqueue_job("noop", 1, _job_id="one")
        assert await client.redis.exists(keys.JOB_PREFIX + "one")  # on the primary, not confirmed
        entry = job_entry(client.dumps, "two", "noop", [2], {}, None)  # the path of batch.retry_failed
        with pytest.raises(mediaq.ReplicationTimeout, match="a chunk of 1 jobs"):
            await enqueue_chunk(client.redis, settings.queue_name, [entry], durability=Durability(1, 0.2))
        assert await enqueue_chunk(client.redis, settings.queue_name, [entry]) == ["two"]  # it was written


async def test_worker_logs_results_its_replicas_did_not_confirm_and_goes_on(client, start_worker):
    worker = start_worker(durable_replicas=1, durable_timeout=0.2)
    for i in range(3):
        await client.enqueue_job("noop", i, _job_id=f"w{i}")
    for i in range(3):
        assert await client.result(f"w{i}", timeout=60) == i
    await eventually(worker.logs, lambda text: text.count("durable mode:") >= 3, what="three logged durability errors")
    assert "reached the primary but was acknowledged by 0 of the 1 replica(s)" in worker.logs()
    assert worker.alive


# -- a real primary, replica and 3 Sentinels: the CLI shows them ------------------------------------------
@pytest.fixture(scope="module")
def replica_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalReplicaSet]:
    with LocalReplicaSet(tmp_path_factory.mktemp("ha")) as ha:
        yield ha


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mediaq.faces.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_status_and_doctor_show_the_primary_its_replica_and_the_sentinels(replica_set, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    env.update(MEDIAQ_REDIS_URL=replica_set.url, MEDIAQ_STATE_DIR=str(tmp_path / "state"))
    primary, replica = replica_set.primary(), replica_set.replicas()[0]
    status = _cli("status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"primary {primary.address}; replicas: {replica.address} (online" in status.stdout
    assert "3 of 3 Sentinel(s) name it primary of 'mediaq'" in status.stdout
    assert replica_set.password not in status.stdout + status.stderr

    doctor = _cli("doctor", env={**env, "MEDIAQ_DURABLE_REPLICAS": "1"})
    assert doctor.returncode == 0 and f"primary {primary.address}" in doctor.stdout, doctor.stdout
    doctor = _cli("doctor", env={**env, "MEDIAQ_DURABLE_REPLICAS": "2"})
    assert doctor.returncode == 1
    assert "durable mode needs 2 replica(s) but the primary has 1 online" in doctor.stdout


async def test_durable_writes_on_a_replica_set(replica_set, tmp_path: Path):
    settings = Settings.load(env={}, redis_url=replica_set.url, state_dir=tmp_path / "state", durable_timeout=2)
    async with await mediaq.connect(settings=settings) as client:
        batch = await client.enqueue_many("noop", range(2000), job_id="r:{0}", chunk_size=500, durable=1)
        assert len(batch) == 2000
    async with await mediaq.connect(settings=settings, durable_replicas=1) as client:
        assert await client.enqueue_job("noop", 1, _job_id="r:one") == "r:one"
        entry = job_entry(client.dumps, "r:two", "noop", [2], {}, None)
        assert await enqueue_chunk(client.redis, settings.queue_name, [entry], durability=Durability(1, 2)) == []
    async with await mediaq.connect(settings=settings, durable_replicas=1, durable_aof=True,
                                    durable_timeout=0.3) as client:
        with pytest.raises(mediaq.ReplicationTimeout, match="appendonly yes"):  # the replica keeps no AOF
            await client.enqueue_job("noop", 1, _job_id="r:aof")
