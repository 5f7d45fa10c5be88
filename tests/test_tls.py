"""Redis over TLS (``rediss://``): a real TLS server (Debian's redis-server 7.0) with a throwaway CA, used
by the client, a worker, ``mediaq status``/``doctor`` and the dashboard's monitor."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mediaq
from mediaq.client.monitor import Monitor
from mediaq.errors import ConfigError, RedisUnavailable

pytestmark = pytest.mark.skipif(not __import__("shutil").which("redis-server"),
                                reason="Debian's redis-server (TLS) is not installed; tests/run.sh installs it")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    from tlsredis import TlsRedis

    server = TlsRedis(tmp_path_factory.mktemp("tls-redis"))
    yield server
    server.stop()


@pytest.fixture
def tls_settings(settings, tls):
    import redis

    s = settings.replace(redis_url=tls.url())
    for db in (s.queue_db, s.cache_db):
        r = redis.Redis.from_url(tls.url(db))
        r.flushdb()
        r.close()
    return s


async def test_client_worker_and_monitor_over_tls(tls_settings, start_worker):
    start_worker(redis_url=tls_settings.redis_url)
    async with await mediaq.connect(settings=tls_settings) as client:
        assert client.url.startswith("rediss://") and "***" in repr(client)
        batch = await client.enqueue_many("noop", range(20), job_id="t{0}", batch="tls")
        counts = await batch.wait(progress=False, timeout=60)
        assert counts["complete"] == 20
        assert list((await batch.results()).sort_values("job_id").result[:3]) == [0, 1, 10]
        monitor = Monitor(client, batch)
        snap = await monitor.refresh()
        assert snap.ok and snap.batches[0].total == 20 and len(snap.workers) == 1


def test_status_and_doctor_over_tls(tls_settings, start_worker, tmp_path):
    start_worker(redis_url=tls_settings.redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    env.update(MEDIAQ_REDIS_URL=tls_settings.redis_url, MEDIAQ_STATE_DIR=str(tmp_path / "state"))
    for command, expect in (("status", "1 worker(s) alive"), ("doctor", "Redis reachable: rediss://:***@")):
        out = subprocess.run([sys.executable, "-m", "mediaq.faces.cli", command], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0 and expect in out.stdout, out.stdout + out.stderr
        assert tls_settings.redis_url.split("@")[0].split(":")[-1] not in out.stdout  # no password printed


async def test_tls_mistakes_get_clear_errors(tls, settings):
    with pytest.raises(RedisUnavailable, match="TLS handshake failed"):
        await mediaq.connect(settings=settings.replace(redis_url=tls.url(ca="other_ca"), connect_timeout=2))
    with pytest.raises(ConfigError, match=r"ssl_ca_certs=.*not a file"):
        await mediaq.connect(settings=settings.replace(redis_url=tls.url().replace("ca.pem", "gone.pem")))
    plain = tls.url().replace("rediss://", "redis://")
    with pytest.raises(RedisUnavailable):
        await mediaq.connect(settings=settings.replace(redis_url=plain, connect_timeout=2))


async def test_a_server_that_requires_client_certificates(settings, tmp_path, start_worker):
    from tlsredis import TlsRedis

    server = TlsRedis(tmp_path / "strict", client_certs="yes")
    try:
        with pytest.raises(RedisUnavailable):
            await mediaq.connect(settings=settings.replace(redis_url=server.url(), connect_timeout=2))
        url = server.url(client_cert=True)
        start_worker(redis_url=url)
        async with await mediaq.connect(settings=settings.replace(redis_url=url)) as client:
            batch = await client.enqueue_many("noop", range(3))
            assert (await batch.wait(progress=False, timeout=60))["complete"] == 3
    finally:
        server.stop()
