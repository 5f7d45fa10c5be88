"""A real S3 API on loopback for the tests: moto's standalone server (``moto[server]``, what s3fs's own
test suite runs against), started and stopped by the tests.

What mediaq depends on from S3, and how this server behaves (each row is exercised by tests/test_s3.py):

===================================================  ==============  ==========================================
behaviour                                            AWS S3          moto server
===================================================  ==============  ==========================================
an object exists only once its PUT completes         yes             yes (stored when the request completes)
a multipart upload is visible only when completed    yes             yes
``Range: bytes=0-65535`` -> 206 with the total size   yes             yes (``Content-Range``)
a range of an empty object -> 416                    yes             yes
missing key or bucket -> 404 (NoSuchKey/Bucket)      yes             yes
ListObjectsV2: 1,000 keys a page, continuation       yes             yes
SigV4 checked, an unknown access key -> 403          yes             only with ``auth=True`` (moto's
                                                                     ``INITIAL_NO_AUTH_ACTION_COUNT``)
an IAM policy without ``s3:PutObject`` -> 403        yes             yes, with ``auth=True``
5xx / throttling                                     sometimes       never: tests stop the server instead
===================================================  ==============  ==========================================
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from helpers import eventually_sync, free_port, stop_process

__all__ = ["S3Server"]

ACCESS_KEY, SECRET_KEY = "mediaq-test-key", "mediaq-test-secret-never-in-redis"


class S3Server:
    """``python -m moto.server`` on ``host``:free port. ``auth=True`` checks signatures and IAM policies
    (the first ``setup_actions`` requests are let through unauthenticated, to create users)."""

    def __init__(self, host: str = "127.0.0.1", *, auth: bool = False, setup_actions: int = 0,
                 netns: str | None = None) -> None:
        self.host, self.port = host, free_port() if netns is None else 5000
        self.endpoint = f"http://{host}:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
        env = {**os.environ}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(setup_actions)
        cmd = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return True
            return False

        eventually_sync(listening, timeout=timeout, interval=0.1, what=f"moto listening on {self.endpoint}")

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The standard variables an S3 client (obstore, boto3, the workers) reads to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key}

    def boto3(self, service: str = "s3", **credentials: str):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=credentials.get("access_key", ACCESS_KEY),
                            aws_secret_access_key=credentials.get("secret_key", SECRET_KEY))

    def new_bucket(self, prefix: str = "mq") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.boto3().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_process(self.proc, group=True, timeout=10)
        self.log.unlink(missing_ok=True)
