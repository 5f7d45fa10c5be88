"""A real Redis with TLS for the tests: Debian's ``redis-server`` 7.0 (built with TLS), a throwaway CA
made by the test, a server certificate for the addresses it listens on, and a client certificate.
(The embedded Valkey from the wheel has no TLS.)"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from helpers import eventually_sync, free_port

__all__ = ["TlsRedis", "make_certificates"]


def make_certificates(folder: Path, addresses: list[str]) -> dict[str, Path]:
    """A CA, a server certificate valid for ``addresses`` (IPs or names), a client certificate, and a
    second CA that signed nothing of these (for "wrong CA" tests). Returns their PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            path.with_suffix(".key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            os.chmod(path.with_suffix(".key"), 0o600)

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(cn: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
             sans: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[1].subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2)))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(issuer[0], hashes.SHA256())

    def san(address: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(address))
        except ValueError:
            return x509.DNSName(address)

    authority = ca("mediaq test CA")
    server = leaf("redis", authority, [san(a) for a in addresses])
    client = leaf("mediaq worker", authority, [])
    other = ca("some other CA")
    paths = {"ca": folder / "ca.pem", "server": folder / "server.pem", "client": folder / "client.pem",
             "other_ca": folder / "other-ca.pem"}
    save(paths["ca"], None, authority[1])
    save(paths["server"], server[0], server[1])
    save(paths["client"], client[0], client[1])
    save(paths["other_ca"], None, other[1])
    paths["server_key"], paths["client_key"] = paths["server"].with_suffix(".key"), paths["client"].with_suffix(".key")
    return paths


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
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
