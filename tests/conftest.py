"""Shared fixtures: a real throwaway Valkey server per test session, settings pointing at it with
flushed databases per test, a connected client, and real worker subprocesses.

Everything runs against real parts: the server is mediaq's own embedded server (started from a
private state folder on a free loopback port, stopped at the end), workers are
``arq mediaq.worker.WorkerSettings`` subprocesses.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import mediaq
from mediaq.runtime.connections import with_db
from mediaq.runtime.server import EmbeddedServer
from mediaq.runtime.settings import Settings

# tests/browser/*.ipynb is driven by test_browser.py in a real JupyterLab, not compared by nbval
collect_ignore_glob = ["browser/*.ipynb"]

# A user's own MEDIAQ_* variables must not leak into the tests.
for _key in [k for k in os.environ if k.startswith("MEDIAQ_")]:
    del os.environ[_key]


class TestServer:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.embedded = EmbeddedServer(state_dir)
        self.url = self.embedded.ensure_running()
        self.port = int(self.url.rsplit(":", 1)[1])

    def flush(self, *dbs: int) -> None:
        for db in dbs:
            client = redis.Redis.from_url(with_db(self.url, db, keep_explicit=False))
            client.flushdb()
            client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """A real Valkey server for this test session (loopback, free port, password)."""
    server = TestServer(tmp_path_factory.mktemp("redis-state"))
    yield server
    server.embedded.stop()


@pytest.fixture
def settings(redis_server: TestServer, tmp_path: Path) -> Settings:
    """Settings on the session server with empty queue and cache databases and tmp storage."""
    s = Settings.load(env={}, redis_url=redis_server.url, state_dir=tmp_path / "state",
                      storage=tmp_path / "media", worker_processes=2, poll_delay=0.05,
                      health_check_interval=1, retry_backoff=0.2)
    redis_server.flush(s.queue_db, s.cache_db)
    return s


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[mediaq.Client]:
    c = await mediaq.connect(settings=settings)
    yield c
    await c.close()


@pytest.fixture
async def queue_redis(settings: Settings) -> AsyncIterator[Any]:
    """A plain asyncio Redis client on the queue database (arq's keys, written and read directly)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(with_db(settings.redis_url, settings.queue_db, keep_explicit=False))
    yield r
    await r.aclose()


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Factory: ``mount_tmpfs("64k")`` mounts a real tmpfs of that size (for full and read-only disks),
    unmounted at teardown; skipped with the reason where mounting is refused (needs root)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {done.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Callable[..., mediaq.LocalWorker]]:
    """Factory: ``start_worker(**setting_overrides)`` starts a real worker subprocess, ready to work."""
    started: list[mediaq.LocalWorker] = []

    def start(*, burst: bool = False, **overrides: Any) -> mediaq.LocalWorker:
        worker = mediaq.LocalWorker(settings.replace(**overrides) if overrides else settings, burst=burst)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A real S3 API (moto's server) on loopback for this test session."""
    from s3server import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The session's S3 server, with the standard ``AWS_*`` variables set for this process and the
    workers it starts (and no AWS config of the machine's in reach)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_server
