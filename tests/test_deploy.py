"""Deployment on paper, checked: the compose file is valid (docker-compose's own validation; no engine
runs here) and the worker image runs the README's commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE, DOCKERFILE, README = ROOT / "deploy" / "compose.yaml", ROOT / "deploy" / "Dockerfile", ROOT / "README.md"


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.skip("Debian's docker-compose is not installed (tests/run.sh installs it as root)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIAQ_", "AWS_"))}
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          env={**base, **env}, timeout=60)


def test_compose_file_is_valid_and_wires_redis_to_the_workers():
    import yaml

    out = _config({"MEDIAQ_REDIS_PASSWORD": "s3cret", "MEDIAQ_STORAGE": "s3://bucket/media"})
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    redis, worker = config["services"]["redis"], config["services"]["worker"]
    assert {"--appendonly", "yes", "--requirepass", "s3cret"} <= set(redis["command"])  # AOF and a password
    assert worker["environment"]["MEDIAQ_REDIS_URL"] == "redis://:s3cret@redis:6379"
    assert worker["environment"]["MEDIAQ_STORAGE"] == "s3://bucket/media"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert worker["command"] == _dockerfile_cmd()


def test_compose_refuses_to_run_without_a_password():
    out = _config({"MEDIAQ_STORAGE": "s3://bucket/media"})
    assert out.returncode != 0 and "set MEDIAQ_REDIS_PASSWORD" in out.stderr


def _dockerfile_cmd() -> list[str]:
    (cmd,) = re.findall(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    return json.loads(cmd)


def test_the_worker_image_runs_the_readmes_commands():
    readme = README.read_text()
    section = readme[readme.index("## Workers on many machines"):readme.index("## Command line")]
    (install,) = re.findall(r"^RUN (pip install .*)$", DOCKERFILE.read_text(), re.M)
    assert install.replace("--no-cache-dir ", "") in section  # `pip install .` in a checkout
    assert f".venv/bin/{' '.join(_dockerfile_cmd())}" in section  # `arq mediaq.worker.WorkerSettings`
    assert "tls-certs.sh" in section and (ROOT / "deploy" / "tls-certs.sh").stat().st_mode & 0o111
