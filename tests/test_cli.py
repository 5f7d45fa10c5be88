"""The mediaq command, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def mediaq(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mediaq.faces.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def env(tmp_path):
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    e["MEDIAQ_STATE_DIR"] = str(tmp_path / "state")
    e["MEDIAQ_STORAGE"] = str(tmp_path / "media")
    yield e
    subprocess.run([sys.executable, "-m", "mediaq.faces.cli", "redis", "stop"], env=e, capture_output=True, timeout=60)


def test_redis_commands(env):
    assert "running" in mediaq("redis", "start", env=env).stdout
    status = json.loads(mediaq("redis", "status", env=env).stdout)
    assert status["running"] and "***" in status["url"]
    assert "***" in mediaq("redis", "url", env=env).stdout
    assert "***" not in mediaq("redis", "url", "--show-password", env=env).stdout
    assert mediaq("redis", "stop", env=env).stdout.strip() == "stopped"


def test_doctor_reports_waiting_jobs_without_worker(env, tmp_path):
    code = ("import mediaq; c = mediaq.connect_sync(); c.enqueue_many('noop', range(3)); c.close()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    out = mediaq("doctor", env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Redis reachable" in out.stdout
    assert "3 job(s) are waiting and no worker" in out.stdout
    assert "start a worker" in out.stdout
    status = mediaq("status", env=env)
    assert "3 queued" in status.stdout
    assert "WARNING: 3 job(s) waiting and no live worker: start one" in status.stdout


async def test_doctor_does_not_call_a_killed_worker_alive(settings, start_worker):
    from mediaq.client.doctor import diagnose

    worker = start_worker()
    checks = await diagnose(settings)
    assert any(level == "ok" and f":{worker.pid} (" in text for level, text, _ in checks), checks
    worker.kill()  # SIGKILL: its heartbeat stays in Redis for three health-check intervals
    checks = await diagnose(settings)
    texts = "\n".join(text for _, text, _ in checks)
    assert f":{worker.pid} is gone" in texts and "worker(s) alive" not in texts and "arq worker is alive" not in texts
    assert any(level == "warn" and "no worker is alive" in text for level, text, _ in checks), checks


def test_doctor_with_unreachable_redis_says_what_to_do(env, unused_tcp_port):
    env = {**env, "MEDIAQ_REDIS_URL": f"redis://127.0.0.1:{unused_tcp_port}", "MEDIAQ_CONNECT_TIMEOUT": "1"}
    out = mediaq("doctor", env=env)
    assert out.returncode == 1
    assert "FAIL" in out.stdout and "MEDIAQ_REDIS_URL" in out.stdout


def test_redis_start_bind_listens_beyond_loopback_with_its_password_and_warns(env):
    """127.0.0.5 is another address of this machine (all of 127/8 is loopback on Linux)."""
    import redis

    out = mediaq("redis", "start", "--bind", "127.0.0.5", env=env)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("other machines: MEDIAQ_REDIS_URL="))
    url = line.split("=", 1)[1]
    assert "@127.0.0.5:" in url
    assert "WITHOUT encryption" in out.stderr and "TLS" in out.stderr
    port = int(url.rsplit(":", 1)[1])
    assert redis.Redis.from_url(url).ping()
    with pytest.raises(redis.AuthenticationError):  # never without its password
        redis.Redis(host="127.0.0.5", port=port).ping()
    # a later plain start (a notebook's connect) keeps it listening there
    assert "other machines" in mediaq("redis", "start", env=env).stdout
    assert json.loads(mediaq("redis", "status", env=env).stdout)["bind"] == "127.0.0.5"
    out = mediaq("redis", "start", "--bind", "10.255.255.254", env=env)
    assert out.returncode != 0 and "not an address of this machine" in out.stderr
    assert json.loads(mediaq("redis", "status", env=env).stdout)["running"]  # refused before stopping anything


async def test_logs_of_local_workers_and_follow(settings, start_worker, client):
    import os

    from helpers import eventually

    worker = start_worker()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    env.update(settings.to_env())
    out = mediaq("logs", "--worker", str(worker.pid), env=env)
    assert out.returncode == 0, out.stderr
    assert f"worker {worker.pid:>7} | " in out.stdout and f"mediaq worker ready: pid={worker.pid}" in out.stdout
    assert mediaq("logs", "--worker", "1", env=env).returncode == 1  # no such worker: says so
    follow = subprocess.Popen([sys.executable, "-m", "mediaq.faces.cli", "logs", "--follow", "-n", "0"], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        import threading

        threading.Thread(target=lambda: lines.extend(follow.stdout), daemon=True).start()
        await client.enqueue_job("noop", 7, _job_id="followed")  # the worker logs the job as it runs it
        await eventually(lambda: "".join(lines), lambda text: "followed" in text, timeout=30,
                         what="the new log line")
        assert all(line.startswith(f"worker {worker.pid:>7} | ") for line in lines)
    finally:
        follow.terminate()
        follow.wait(10)
