"""Test hosts on one machine: Linux network namespaces on a bridge, made and removed by the test (as root).

``Network()`` makes a bridge in the root namespace (the client's host) with ``10.209.<n>.1/24``; each
``add_host(name)`` is a namespace with its own ``eth0`` address on it. :meth:`Network.cut` takes a
host's link down (its TCP connections hang, as when a cable is pulled) and :meth:`Network.restore`
brings it back. Traffic stays on the bridge: nothing is routed beyond it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["Host", "Network", "NetworkUnavailable"]


class NetworkUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, or the kernel refuses): skip, saying why."""


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    veth: str  # the host's link, bridge side

    def command(self, *argv: str, hostname: str | None = None) -> list[str]:
        """``argv`` run inside this host's namespace (and, with ``hostname``, under its own host name)."""
        prefix = ["ip", "netns", "exec", self.ns]
        if hostname:
            prefix += ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$0" "$@"']
        return [*prefix, *argv]


class Network:
    def __init__(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
            raise NetworkUnavailable("network namespaces need root and iproute2's `ip` (and util-linux `unshare`)")
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.209.{int(self.tag, 16) % 250 + 1}"
        self.bridge = f"mqbr{self.tag}"
        self.hosts: list[Host] = []
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            self._ip("link", "set", self.bridge, "up")
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetworkUnavailable(f"the kernel refused a bridge: {exc.stderr.strip()}") from None

    @property
    def gateway(self) -> str:
        """The root namespace's (the client's) address on the bridge."""
        return f"{self.subnet}.1"

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def add_host(self, name: str) -> Host:
        ns, veth = f"mq{self.tag}{name}", f"mqv{self.tag}{len(self.hosts)}"
        host = Host(name, ns, f"{self.subnet}.{len(self.hosts) + 2}", veth)
        try:
            self._ip("netns", "add", ns)
            self.hosts.append(host)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("link", "set", veth, "master", self.bridge)
            self._ip("link", "set", veth, "up")
            self._ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            raise NetworkUnavailable(f"the kernel refused a network namespace: {exc.stderr.strip()}") from None
        return host

    def cut(self, host: Host) -> None:
        self._ip("link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        self._ip("link", "set", host.veth, "up")

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, timeout=10)
                for pid in subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True,
                                          timeout=10).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, timeout=30)
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
