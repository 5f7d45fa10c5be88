"""The embedded server: start, reuse across processes, recovery, persistence, clear errors."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import redis
from helpers import eventually_sync

import mediaq
from mediaq.runtime.server import EmbeddedServer, find_server_binary, resolve_redis_url
from mediaq.runtime.settings import Settings


@pytest.fixture
def server(tmp_path):
    s = EmbeddedServer(tmp_path / "state")
    yield s
    s.stop()


def test_starts_on_loopback_with_password_and_private_files(server):
    url = server.ensure_running()
    assert url.startswith("redis://:") and "@127.0.0.1:" in url
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()  # no password: refused
    r = redis.Redis.from_url(url)
    assert r.config_get("bind")["bind"] == "127.0.0.1"
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert r.config_get("appendfsync")["appendfsync"] == "everysec"
    r.close()
    for path in (server.folder, server.state_file, server.folder / "redis.conf"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others: {oct(mode)}"


def test_sigkilled_server_is_recovered_by_next_connect_and_keeps_jobs(tmp_path):
    settings = Settings.load(env={}, state_dir=tmp_path / "state")

    async def enqueue() -> None:
        async with await mediaq.connect(settings=settings) as client:
            await client.enqueue_many("noop", range(50), job_id="keep{0}")

    import asyncio

    asyncio.run(enqueue())
    server = EmbeddedServer(settings.state_dir)
    before = server.status()
    import psutil

    assert psutil.Process(before["pid"]).ppid() != os.getpid()  # detached: not our child
    time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
    os.kill(before["pid"], signal.SIGKILL)
    # the kill lands at once, the process's teardown when the machine gets to it
    eventually_sync(server.status, lambda s: not s["running"], timeout=20, what="the killed server seen as stopped")
    assert not [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]  # nothing to reap

    async def count() -> int:
        async with await mediaq.connect(settings=settings) as client:
            return (await client.queue_counts())["queued"]

    try:
        assert asyncio.run(count()) == 50  # connect() restarted it; the AOF brought the jobs back
        after = server.status()
        assert after["running"] and after["pid"] != before["pid"] and after["port"] == before["port"]
    finally:
        server.stop()


def test_two_processes_share_one_server(server, tmp_path):
    url = server.ensure_running()
    code = ("import sys; from mediaq.runtime.server import EmbeddedServer; "
            "print(EmbeddedServer(sys.argv[1]).ensure_running())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == url


def test_concurrent_starts_make_one_server(tmp_path):
    code = ("import sys; from mediaq.runtime.server import EmbeddedServer; "
            "print(EmbeddedServer(sys.argv[1]).ensure_running())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    urls = {p.communicate(timeout=60)[0].strip() for p in procs}
    try:
        assert len(urls) == 1
    finally:
        EmbeddedServer(tmp_path / "s").stop()


def test_stale_state_file_and_taken_port_are_recovered(server):
    server.ensure_running()
    info = server.status()
    server.stop()
    # the old port is now held by something else, and the state file still names it
    import socket

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", info["port"]))
    squatter.listen()
    try:
        url = server.ensure_running()
        assert int(url.rsplit(":", 1)[1]) != info["port"]
        redis.Redis.from_url(url).ping()
    finally:
        squatter.close()


def test_missing_binary_gives_clear_error(tmp_path):
    with pytest.raises(mediaq.ServerError, match="not an executable"):
        find_server_binary(str(tmp_path / "nope"))


def test_server_that_cannot_start_shows_its_log(tmp_path):
    fake = tmp_path / "fake-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot open config' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(mediaq.ServerError, match="FATAL: cannot open config"):
        EmbeddedServer(tmp_path / "state", binary=str(fake)).ensure_running(timeout=5)


def test_server_that_dies_after_detaching_shows_its_log(tmp_path):
    """The failure after the double fork (a port bind, a corrupt AOF): the launcher exits 0, the
    daemon writes its pid file, logs why and dies; start says so with the log, not a timeout."""
    fake = tmp_path / "fake-server"
    fake.write_text(
        "#!/bin/sh\n"
        "pidfile=$(sed -n 's/^pidfile \"\\(.*\\)\"$/\\1/p' \"$1\")\n"
        "logfile=$(sed -n 's/^logfile \"\\(.*\\)\"$/\\1/p' \"$1\")\n"
        "sh -c 'echo \"FATAL: could not bind\" >> \"$1\"; sleep 0.3' daemon \"$logfile\" &\n"
        "echo $! > \"$pidfile\"\n"
        "exit 0\n")
    fake.chmod(0o755)
    # "exited at start", not the timeout's "did not answer": the death itself was noticed
    with pytest.raises(mediaq.ServerError, match=r"(?s)exited at start.*FATAL: could not bind"):
        EmbeddedServer(tmp_path / "state", binary=str(fake)).ensure_running(timeout=10)


async def test_wrong_password_is_a_clear_error(redis_server):
    bad = redis_server.url.replace(redis_server.url.split("@")[0], "redis://:wrong")
    with pytest.raises(mediaq.RedisUnavailable, match=r"password|AUTH|auth"):
        await mediaq.connect(bad)


async def test_unreachable_redis_fails_fast(unused_tcp_port):
    started = time.monotonic()
    with pytest.raises(mediaq.RedisUnavailable, match="cannot"):
        await mediaq.connect(f"redis://127.0.0.1:{unused_tcp_port}", connect_timeout=1)
    assert time.monotonic() - started < 30  # bounded by the timeouts, not a hang


def test_env_url_is_honoured(redis_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDIAQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("MEDIAQ_STATE_DIR", str(tmp_path / "elsewhere"))
    assert resolve_redis_url(Settings.load()) == redis_server.url
    assert not (tmp_path / "elsewhere" / "redis").exists()  # no embedded server was started


def test_local_worker_that_dies_at_start_reports_why(settings):
    bad = settings.replace(job_modules=("no_such_module_for_mediaq",))
    with pytest.raises(mediaq.WorkerStartError) as info:
        mediaq.LocalWorker(bad).start(timeout=60)
    assert "no_such_module_for_mediaq" in str(info.value)
    assert info.value.log_tail


def test_local_worker_lifecycle(settings):
    worker = mediaq.LocalWorker(settings)
    with worker.start() as w:
        assert w.alive and isinstance(w.pid, int)
        assert "mediaq worker ready" in w.logs(50)
        assert "LocalWorker" in repr(w)
    assert not worker.alive
    assert worker.returncode is not None


def test_burst_worker_exits_when_queue_is_empty(settings, client):
    worker = mediaq.start_worker(settings, burst=True)
    assert worker.wait(timeout=60) == 0
