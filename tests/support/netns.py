"""Three hosts on one machine, for tests whose traffic must cross real network devices.

A relay host and two client hosts, each a network namespace this module
creates, joined by veth pairs::

    client a  10.77.1.2 --- 10.77.1.1  relay  10.77.2.1 --- 10.77.2.2  client b
              fd77:1::2     fd77:1::1         fd77:2::1     fd77:2::2

Nothing is added to the machine's own namespace, so runs side by side do not
collide. The test process opens sockets inside a namespace (``setns`` around
``socket()``; a socket keeps the namespace it was made in) and starts
processes there with ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
RELAY_SIDE = {"a": "10.77.1.1", "b": "10.77.2.1"}
CLIENT_IP = {"a": "10.77.1.2", "b": "10.77.2.2"}
RELAY_SIDE6 = {"a": "fd77:1::1", "b": "fd77:2::1"}
CLIENT_IP6 = {"a": "fd77:1::2", "b": "fd77:2::2"}

_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/build-test-deps installs it)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block in ``namespace`` (this thread only), then come back."""
    with open("/proc/self/ns/net") as home, open(f"/run/netns/{namespace}") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


class Hosts:
    """The three namespaces; :meth:`close` removes them and everything in them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.relay = f"rf{tag}r"
        self.clients = {"a": f"rf{tag}a", "b": f"rf{tag}b"}
        self.logs: Path | None = None  # where a test keeps the logs of what runs inside

    @classmethod
    def create(cls, tag: str | None = None) -> Hosts:
        hosts = cls(tag or str(os.getpid()))
        try:
            hosts._build()
        except BaseException:
            hosts.close()
            raise
        return hosts

    def _build(self) -> None:
        for namespace in (self.relay, *self.clients.values()):
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        for side, namespace in self.clients.items():
            inner, outer = f"r{side}", f"c{side}"
            _ip("link", "add", inner, "netns", self.relay, "type", "veth",
                "peer", "name", outer, "netns", namespace)  # fmt: skip
            _ip("-n", self.relay, "addr", "add", f"{RELAY_SIDE[side]}/24", "dev", inner)
            _ip("-n", namespace, "addr", "add", f"{CLIENT_IP[side]}/24", "dev", outer)
            _ip("-n", self.relay, "addr", "add", f"{RELAY_SIDE6[side]}/64", "dev", inner, "nodad")
            _ip("-n", namespace, "addr", "add", f"{CLIENT_IP6[side]}/64", "dev", outer, "nodad")
            _ip("-n", self.relay, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", outer, "up")

    def close(self) -> None:
        for namespace in (self.relay, *self.clients.values()):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)

    def exec(self, namespace: str) -> list[str]:
        """The prefix that runs a command in ``namespace``."""
        return ["ip", "netns", "exec", namespace]

    def udp_socket(self, side: str, ipv6: bool = False) -> socket.socket:
        """A UDP socket on client ``side``'s address (IPv4 or IPv6), any port."""
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        with inside(self.clients[side]):
            sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(((CLIENT_IP6 if ipv6 else CLIENT_IP)[side], 0))
        return sock

    def relay_http(self, port: int, method: str, path: str, body: object = None) -> tuple[int, str]:
        """One HTTP request to the relay host's 127.0.0.1:``port``."""
        with inside(self.relay):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.sock = sock
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, path, body=payload)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def nft(self, *args: str) -> str:
        """``nft`` run on the relay host; its output."""
        return subprocess.run(
            [*self.exec(self.relay), "nft", *args],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
