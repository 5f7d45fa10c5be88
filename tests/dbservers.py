"""Throwaway PostgreSQL and MariaDB servers for the ratings store tests (real servers, no mocks).

Each runs from Debian's binaries (``tests/run.sh`` installs ``postgresql`` and ``mariadb-server``
with apt when it can) in a temporary folder, on a free loopback port, and is stopped and deleted
afterwards. Neither server runs as root, so under root they run as the packages' own users.

>>> with postgres_server() as url:   # doctest: +SKIP
...     RatingsStore(url)
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from helpers import eventually_sync, free_port, stop_process

__all__ = ["ServerUnavailable", "mariadb_server", "postgres_server"]


class ServerUnavailable(RuntimeError):
    """The server's binaries are not installed (the message says what to install)."""


def _as(user: str) -> dict[str, str]:
    """Popen arguments that run a command as ``user`` when we are root (the servers refuse root).
    The server process itself switches user, so our signals reach it (a ``runuser`` wrapper would
    swallow SIGINT and leave the server running)."""
    return {"user": user, "group": user} if os.geteuid() == 0 else {}


@contextlib.contextmanager
def _folder(prefix: str, user: str) -> Iterator[Path]:
    """A fresh folder in the system temp dir, owned by ``user`` when we are root (pytest's own temp
    folders are private to us, so a server running as another user could not reach them)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, user, user)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    try:
        eventually_sync(listening, timeout=timeout, interval=0.1, what=f"the server listening on {port}")
    except AssertionError:
        raise RuntimeError(f"the server did not listen on {port} within {timeout} s: "
                           f"{log.read_text()[-2000:]}") from None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server with a database ``mq``; yields its SQLAlchemy URL (psycopg 3)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        raise ServerUnavailable("PostgreSQL is not installed: apt-get install -y postgresql")
    bin_dir = Path(bins[-1])
    with _folder("mediaq-pg-", "postgres") as folder:
        yield from _run_postgres(bin_dir, folder)


def _run_postgres(bin_dir: Path, folder: Path) -> Iterator[str]:
    data, log, port = folder / "data", folder / "log.txt", free_port()
    subprocess.run([bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True, **_as("postgres"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([bin_dir / "postgres", "-D", data, "-p", str(port), "-k", folder,
                                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=folder, **_as("postgres"))
    try:
        _wait_for_port(port, proc, log)
        for _ in range(50):  # listening comes a moment before accepting logins
            done = subprocess.run([bin_dir / "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                   "-c", "CREATE DATABASE mq"], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"could not create the database: {done.stderr.decode()}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mq"
    finally:
        stop_process(proc, signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for clients to leave


@contextlib.contextmanager
def mariadb_server() -> Iterator[str]:
    """A MariaDB server with a database ``mq`` and a user ``mq``; yields its SQLAlchemy URL (PyMySQL)."""
    server, install = shutil.which("mariadbd", path="/usr/sbin:/usr/bin"), shutil.which("mariadb-install-db")
    if not server or not install:
        raise ServerUnavailable("MariaDB is not installed: apt-get install -y mariadb-server")
    with _folder("mediaq-maria-", "mysql") as folder:
        yield from _run_mariadb(server, install, folder)


def _run_mariadb(server: str, install: str, folder: Path) -> Iterator[str]:
    data, log, sock, port = folder / "data", folder / "log.txt", folder / "sock", free_port()
    user = ["--user=mysql"] if os.geteuid() == 0 else []
    subprocess.run([install, "--no-defaults", *user, f"--datadir={data}", "--auth-root-authentication-method=normal",
                    "--skip-test-db"], check=True, capture_output=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "--no-defaults", *user, f"--datadir={data}", f"--socket={sock}",
                                 f"--port={port}", "--bind-address=127.0.0.1", "--skip-log-bin",
                                 "--innodb-flush-log-at-trx-commit=0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        subprocess.run([shutil.which("mariadb") or "mariadb", f"--socket={sock}", "-uroot", "-e",
                        "CREATE DATABASE mq; CREATE USER 'mq'@'127.0.0.1' IDENTIFIED BY 'mq';"
                        "GRANT ALL ON mq.* TO 'mq'@'127.0.0.1';"], check=True, capture_output=True)
        yield f"mysql+pymysql://mq:mq@127.0.0.1:{port}/mq"
    finally:
        stop_process(proc)
