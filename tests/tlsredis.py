"""A real Redis with TLS for the tests: Debian's ``redis-server`` 7.0 (built with TLS), a throwaway CA
made by the README's recipe (``deploy/tls-certs.sh``), a server certificate for the addresses it
listens on, and a client certificate. (The embedded Valkey from the wheel has no TLS.)"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from helpers import eventually_sync, free_port, stop_process

__all__ = ["TlsRedis", "make_certificates"]


def make_certificates(folder: Path, addresses: list[str]) -> dict[str, Path]:
    """A CA, a server certificate valid for ``addresses``, a client certificate (made by the README's
    recipe, ``deploy/tls-certs.sh``), and a second CA that signed none of them (for "wrong CA" tests)."""
    script = Path(__file__).resolve().parent.parent / "deploy" / "tls-certs.sh"
    subprocess.run([str(script), str(folder), *addresses], check=True, capture_output=True, timeout=60)
    subprocess.run([str(script), str(folder / "other"), "other"], check=True, capture_output=True, timeout=60)
    return {"ca": folder / "ca.pem", "server": folder / "redis.pem", "server_key": folder / "redis.key",
            "client": folder / "client.pem", "client_key": folder / "client.key",
            "other_ca": folder / "other" / "ca.pem"}


class TlsRedis:
    """``redis-server`` with TLS only (no plain port) and a password, on ``host``; ``client_certs``:
    ``yes`` (required), ``optional`` or ``no``. ``netns``: start it inside that network namespace."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", *, client_certs: str = "optional",
                 netns: str | None = None, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("Debian's redis-server is not installed (tests/run.sh installs it as root)")
        self.folder, self.host = folder, host
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(16)
        self.certs = make_certificates(folder / "tls", [host, "localhost"])
        self.log = folder / "redis-tls.log"
        cmd = [binary, "--port", "0", "--tls-port", str(self.port), "--bind", host,
               "--tls-cert-file", str(self.certs["server"]), "--tls-key-file", str(self.certs["server_key"]),
               "--tls-ca-cert-file", str(self.certs["ca"]), "--tls-auth-clients", client_certs,
               "--requirepass", self.password, "--save", "", "--appendonly", "no", "--dir", str(folder),
               "--logfile", str(self.log)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        eventually_sync(self._answers, timeout=30, interval=0.1, what=f"TLS Redis on {host}:{self.port}")

    def url(self, db: int | None = None, *, client_cert: bool = False, ca: str = "ca") -> str:
        query = f"ssl_ca_certs={self.certs[ca]}"
        if client_cert:
            query += f"&ssl_certfile={self.certs['client']}&ssl_keyfile={self.certs['client_key']}"
        path = f"/{db}" if db is not None else "/"
        return f"rediss://:{self.password}@{self.host}:{self.port}{path}?{query}"

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log.read_text() if self.log.exists() else ''}")
        import redis

        client = redis.Redis.from_url(self.url(client_cert=True), socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def stop(self) -> None:
        stop_process(self.proc, group=True, timeout=10)
