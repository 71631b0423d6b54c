"""A private tailnet on one machine: Headscale and tailscaled nodes in network namespaces.

Current Tailscale clients use a peer relay only when it is a node of their
tailnet that the control server's policy grants ``tailscale.com/cap/relay``,
so the tests of a relay that joins a tailnet need a whole tailnet of their
own: a control server with its DERP, clients that cannot reach each other
directly, and relays that both can reach. :class:`Tailnet` builds one from the
binaries of scripts/build-tailnet, every address inside namespaces it
creates, every file in one directory, and :meth:`Tailnet.close` takes it all
down again::

                      control: Headscale at 10.79.0.1 (control, DERP over HTTP, STUN)
                      forwarding off
              bridge na 10.79.1.1/24      bridge nb 10.79.2.1/24
               /              \\            /              \\
    client a 10.79.1.2      relay n 10.79.1.(10+n)      client b 10.79.2.2
                                    10.79.2.(10+n)

Client a and client b each reach Headscale through their bridge but not each
other (the control namespace does not forward); a relay host (relay n is the
n-th one, from 0) has a leg on both bridges. Relay hosts are namespaces made
by :meth:`Tailnet.add_relay_host`, apart from starting tailscaled in them, so
that a relay of our own can join the tailnet from one. Headscale is the
:class:`tests.support.headscale.Headscale` of every other test (config,
policy, CLI, keys), run in the control namespace with ``ip netns exec``. Each
process logs to a file of the directory; failures carry the tails of those logs.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.support import netns
from tests.support.headscale import RELAY_CAP as RELAY_CAP
from tests.support.headscale import TAGS as TAGS
from tests.support.headscale import Headscale, HeadscalePorts, default_policy
from tests.support.paths import ROOT
from tests.support.waiting import wait_until_sync

T = TypeVar("T")

BINDIR = ROOT / ".dev" / "bin"
BINARIES = ("headscale", "tailscaled", "tailscale")
CONTROL_IP = "10.79.0.1"
CONTROL_PORT = 8080
STUN_PORT = 3478
HEADSCALE_PORTS = HeadscalePorts(http=CONTROL_PORT, stun=STUN_PORT, metrics=9090, grpc=50443)
LOGIN_SERVER = f"http://{CONTROL_IP}:{CONTROL_PORT}"
BRIDGES = {"a": ("na", "10.79.1"), "b": ("nb", "10.79.2")}
TAILSCALED_PORT = 41641
USER = "bed"
FORWARDING = ("ipv4/ip_forward", "ipv6/conf/all/forwarding")
LOG_TAIL = 3000
STOP_TIMEOUT = 10.0
TRANSFER_PORT = 5001
TRANSFER_TIMEOUT = 120.0
CHUNK = 1 << 16


class TailnetError(Exception):
    """The tailnet (or a command in it) did not do what was asked; the message has the logs."""


def unavailable() -> str | None:
    """Why a tailnet cannot be made here, or None."""
    why = netns.unavailable()
    if why is not None:
        return why
    missing = [name for name in BINARIES if not os.access(BINDIR / name, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not in {BINDIR}: run scripts/build-tailnet"
    return None


@dataclass
class Host:
    """A network namespace of the tailnet and its addresses on the bridges (by side)."""

    name: str
    namespace: str
    addresses: dict[str, str]


@dataclass
class Process:
    """A process started in a namespace, its output going to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n{text[-LOG_TAIL:]}"

    def stop(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)


@dataclass
class Node:
    """A tailscaled of the tailnet: its host, its files, and once up its tailnet IPv4 address."""

    name: str
    host: Host
    directory: Path
    process: Process
    ip: str = ""

    @property
    def socket(self) -> Path:
        return self.directory / "tailscaled.sock"


def send_over_the_tailnet(
    sender: Node,
    receiver: Node,
    size: int,
    *,
    port: int = TRANSFER_PORT,
    timeout: float = TRANSFER_TIMEOUT,
    deadline: float | None = None,
) -> int:
    """``size`` bytes over TCP from ``sender`` to ``receiver``'s tailnet address (the sockets
    made in their hosts' namespaces, this process reading and writing); the bytes the
    receiver counted. ``timeout`` bounds each socket operation; ``deadline``, if given,
    the whole transfer in seconds (TimeoutError once it has passed)."""
    with netns.inside(receiver.host.namespace):
        listener = socket.create_server((receiver.ip, port))
    listener.settimeout(timeout)
    received = [0]
    give_up = None if deadline is None else time.monotonic() + deadline

    def sink() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(timeout)
            while data := connection.recv(CHUNK):
                received[0] += len(data)

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    try:
        with netns.inside(sender.host.namespace):
            connection = socket.create_connection((receiver.ip, port), timeout)
        with connection:
            chunk = bytes(CHUNK)
            for offset in range(0, size, CHUNK):
                if give_up is not None and time.monotonic() > give_up:
                    raise TimeoutError(f"{offset} of {size} bytes sent in {deadline} s")
                connection.sendall(chunk[: min(CHUNK, size - offset)])
        thread.join(timeout if give_up is None else max(1.0, give_up - time.monotonic()))
    finally:
        listener.close()
    return received[0]


class Tailnet:
    """Headscale plus clients a and b, and relay hosts on demand; see the module docstring.

    Use as a context manager, or call :meth:`start` and then :meth:`close` in a ``finally``.
    """

    def __init__(self, directory: Path, tag: str | None = None) -> None:
        self.directory = directory
        self.tag = tag or secrets.token_hex(3)
        self.control = f"rftn{self.tag}c"
        self.relay_grants: set[str] = set()
        self.hosts: dict[str, Host] = {}
        self.nodes: dict[str, Node] = {}
        self.processes: list[Process] = []
        self.namespaces: list[str] = []
        self.headscale = Headscale(
            directory / "headscale",
            address=CONTROL_IP,
            ports=HEADSCALE_PORTS,
            policy=self._policy(),
            command_prefix=("ip", "netns", "exec", self.control),
        )
        self.user_id = 0

    def __enter__(self) -> Tailnet:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Make the namespaces, start Headscale and make its user; undone at once on failure."""
        try:
            self._make_control()
            for side in BRIDGES:
                self._add_host(side, {side: f"{BRIDGES[side][1]}.2"})
            self.headscale.start()
            self.user_id = self.headscale.create_user(USER)
        except BaseException:
            self.close()
            raise

    def add_relay_host(self, name: str) -> Host:
        """A namespace with a leg on both bridges, nothing running in it yet."""
        number = 10 + sum(1 for host in self.hosts.values() if len(host.addresses) == 2)
        return self._add_host(name, {side: f"{net}.{number}" for side, (_, net) in BRIDGES.items()})

    def preauth_key(self, *tags: str) -> str:
        """A reusable pre-auth key (valid 1 h) whose nodes get ``tags``."""
        return self.headscale.create_auth_key(self.user_id, tags)

    def start_node(self, name: str, host: Host, tags: Iterable[str], *up_args: str) -> Node:
        """tailscaled on ``host``, logged in with a key for ``tags`` (``tailscale up`` with
        ``up_args`` too), Running with a tailnet address."""
        tags = tuple(tags)
        directory = self.directory / "nodes" / name
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TS_DEBUG_USE_DERP_HTTP": "1",
            "TS_NO_LOGS_NO_SUPPORT": "1",
            "TS_LOGS_DIR": str(directory / "logs"),
        }
        process = self.spawn(
            name, host.namespace,
            [str(BINDIR / "tailscaled"), f"--statedir={directory}",
             f"--socket={directory / 'tailscaled.sock'}", f"--port={TAILSCALED_PORT}"],
            env,
        )  # fmt: skip
        node = Node(name, host, directory, process)
        self.nodes[name] = node
        self.wait_for(lambda: self._alive(process) and node.socket.exists(), f"{name}'s socket")
        self.tailscale(
            node, "up", f"--login-server={LOGIN_SERVER}", f"--authkey={self.preauth_key(*tags)}",
            f"--hostname={name}", "--accept-dns=false", "--timeout=60s", *up_args, timeout=90,
        )  # fmt: skip
        node.ip = self.wait_for(lambda: self.tailscale(node, "ip", "-4").strip(), f"{name}'s IP")
        return node

    def stop_node(self, node: Node) -> None:
        """Stop ``node``'s tailscaled (its state stays in its directory)."""
        node.process.stop()

    def tailscale(self, node: Node, *args: str, timeout: float = 30, check: bool = True) -> str:
        """``tailscale`` run against ``node``; its output (TailnetError on failure if ``check``)."""
        argv = [str(BINDIR / "tailscale"), f"--socket={node.socket}", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise TailnetError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}\n"
                f"{self.logs()}"
            )
        return result.stdout

    def headscale_cli(self, *args: str, timeout: float = 30) -> str:
        """``headscale`` run against the server (through its unix socket); its output
        (HeadscaleError, with Headscale's log, on failure)."""
        return self.headscale.cli(*args, timeout=timeout)

    def grant_relay(self, tag: str = "tag:relay") -> None:
        """Grant tag:client the relay capability toward nodes tagged ``tag``, and reload."""
        self.relay_grants.add(tag)
        self.reload_policy()

    def ungrant_relay(self, tag: str = "tag:relay") -> None:
        """Take that grant back, and reload."""
        self.relay_grants.discard(tag)
        self.reload_policy()

    def write_policy(self) -> None:
        """Write the policy (every tagged node may reach every other; tag:client may use the
        granted relays) without reloading it: Headscale reads it at its next start or reload."""
        self.headscale.set_policy(self._policy(), reload=False)

    def reload_policy(self) -> None:
        """Write the policy, have Headscale check it, and make it reload it (SIGHUP); see
        :meth:`tests.support.headscale.Headscale.set_policy`."""
        self.headscale.set_policy(self._policy())

    def wait_for(self, condition: Callable[[], T], what: str, *, timeout: float = 30,
                 interval: float = 0.2) -> T:  # fmt: skip
        """:func:`wait_until_sync`, failing with the tails of every log."""
        try:
            return wait_until_sync(condition, what, timeout=timeout, interval=interval)
        except TimeoutError as exc:
            raise TailnetError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        """The tail of every process's log, Headscale's first."""
        headscale = f"--- headscale ({self.headscale.log}) ---\n{self.headscale.log_tail(LOG_TAIL)}"
        return "\n".join([headscale, *(process.tail() for process in self.processes)])

    def close(self) -> None:
        """Stop every process and remove every namespace it made (with their links);
        TailnetError if one stays."""
        try:
            for process in reversed(self.processes):
                process.stop()
        finally:
            self.headscale.stop()
            self._remove_namespaces()

    def _remove_namespaces(self) -> None:
        left = []
        while self.namespaces:
            namespace = self.namespaces.pop()
            result = subprocess.run(["ip", "netns", "del", namespace], capture_output=True,
                                    text=True, timeout=30)  # fmt: skip
            if result.returncode != 0:
                left.append(f"{namespace}: {result.stderr.strip()}")
        if left:
            raise TailnetError(f"namespaces left behind: {'; '.join(left)}")

    def _policy(self) -> dict[str, Any]:
        return default_policy([USER], [("tag:client", tag) for tag in sorted(self.relay_grants)])

    def _make_control(self) -> None:
        self._add_namespace(self.control)
        self._no_forwarding(self.control)
        self._ip("-n", self.control, "link", "set", "lo", "up")
        self._ip("-n", self.control, "addr", "add", f"{CONTROL_IP}/32", "dev", "lo")
        for bridge, net in BRIDGES.values():
            self._ip("-n", self.control, "link", "add", bridge, "type", "bridge")
            self._ip("-n", self.control, "addr", "add", f"{net}.1/24", "dev", bridge)
            self._ip("-n", self.control, "link", "set", bridge, "up")

    def _add_host(self, name: str, addresses: dict[str, str]) -> Host:
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        host = Host(name, f"rftn{self.tag}{name}", addresses)
        self._add_namespace(host.namespace)
        self.hosts[name] = host
        self._no_forwarding(host.namespace)
        self._ip("-n", host.namespace, "link", "set", "lo", "up")
        for side, address in addresses.items():
            bridge = BRIDGES[side][0]
            inner, outer = f"{bridge}0", f"v{len(self.hosts)}{side}"
            self._ip("link", "add", inner, "netns", host.namespace, "type", "veth",
                     "peer", "name", outer, "netns", self.control)  # fmt: skip
            self._ip("-n", self.control, "link", "set", outer, "master", bridge, "up")
            self._ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", inner)
            self._ip("-n", host.namespace, "link", "set", inner, "up")
        first = next(iter(addresses))
        gateway = f"{BRIDGES[first][1]}.1"
        self._ip("-n", host.namespace, "route", "add", "default", "via", gateway)
        return host

    def _add_namespace(self, namespace: str) -> None:
        self._ip("netns", "add", namespace)
        self.namespaces.append(namespace)

    def spawn(self, name: str, namespace: str, argv: list[str],
              env: dict[str, str] | None = None) -> Process:  # fmt: skip
        """``argv`` run in ``namespace``, its output in the logs, stopped by :meth:`close`."""
        log = self.directory / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def _alive(self, process: Process) -> bool:
        if not process.running():
            raise TailnetError(f"{process.name} exited\n{self.logs()}")
        return True

    @staticmethod
    def _no_forwarding(namespace: str) -> None:
        """A new namespace copies the machine's IPv4 forwarding: the bed needs it off."""
        with netns.inside(namespace):
            for knob in FORWARDING:
                Path("/proc/sys/net", knob).write_text("0\n")

    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise TailnetError(f"ip {' '.join(args)}: {result.stderr.strip()}")
