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
that a relay of our own can join the tailnet from one. Each process logs to a
file of the directory; failures carry the tails of those logs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support import netns
from tests.support.paths import ROOT
from tests.support.waiting import wait_until_sync

T = TypeVar("T")

BINDIR = ROOT / ".dev" / "bin"
BINARIES = ("headscale", "tailscaled", "tailscale")
CONTROL_IP = "10.79.0.1"
CONTROL_PORT = 8080
STUN_PORT = 3478
LOGIN_SERVER = f"http://{CONTROL_IP}:{CONTROL_PORT}"
BRIDGES = {"a": ("na", "10.79.1"), "b": ("nb", "10.79.2")}
TAILSCALED_PORT = 41641
USER = "bed"
TAGS = ("tag:client", "tag:relay")
RELAY_CAP = "tailscale.com/cap/relay"
FORWARDING = ("ipv4/ip_forward", "ipv6/conf/all/forwarding")
LOG_TAIL = 3000
STOP_TIMEOUT = 10.0


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


class Tailnet:
    """Headscale plus clients a and b, and relay hosts on demand; see the module docstring.

    Use as a context manager, or call :meth:`start` and then :meth:`close` in a ``finally``.
    """

    def __init__(self, directory: Path, tag: str | None = None) -> None:
        self.directory = directory
        self.tag = tag or secrets.token_hex(3)
        self.control = f"rftn{self.tag}c"
        self.config = directory / "headscale" / "config.yaml"
        self.policy = directory / "headscale" / "policy.json"
        self.relay_grants: set[str] = set()
        self.hosts: dict[str, Host] = {}
        self.nodes: dict[str, Node] = {}
        self.processes: list[Process] = []
        self.headscale: Process | None = None
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
            self._start_headscale()
        except BaseException:
            self.close()
            raise

    def add_relay_host(self, name: str) -> Host:
        """A namespace with a leg on both bridges, nothing running in it yet."""
        number = 10 + sum(1 for host in self.hosts.values() if len(host.addresses) == 2)
        return self._add_host(name, {side: f"{net}.{number}" for side, (_, net) in BRIDGES.items()})

    def preauth_key(self, *tags: str) -> str:
        """A reusable pre-auth key whose nodes get ``tags``."""
        return self.headscale_cli(
            "preauthkeys", "create", "--user", str(self.user_id), "--reusable",
            "--expiration", "1h", "--tags", ",".join(tags),
        ).strip().splitlines()[-1]  # fmt: skip

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
        process = self._spawn(
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
        return self._run(argv, timeout, check)

    def headscale_cli(self, *args: str, timeout: float = 30) -> str:
        """``headscale`` run against the server (through its unix socket); its output."""
        return self._run([str(BINDIR / "headscale"), "-c", str(self.config), *args], timeout)

    def grant_relay(self, tag: str = "tag:relay") -> None:
        """Grant tag:client the relay capability toward nodes tagged ``tag``, and reload."""
        self.relay_grants.add(tag)
        self.reload_policy()

    def ungrant_relay(self, tag: str = "tag:relay") -> None:
        """Take that grant back, and reload."""
        self.relay_grants.discard(tag)
        self.reload_policy()

    def write_policy(self) -> None:
        """Every tagged node may reach every other; clients may use the granted relays."""
        grants: list[dict[str, object]] = [{"src": list(TAGS), "dst": list(TAGS), "ip": ["*"]}]
        grants += [
            {"src": ["tag:client"], "dst": [tag], "app": {RELAY_CAP: [{}]}}
            for tag in sorted(self.relay_grants)
        ]
        policy = {"tagOwners": {tag: [f"{USER}@"] for tag in TAGS}, "grants": grants}
        self.policy.write_text(json.dumps(policy, indent=2) + "\n")

    def reload_policy(self) -> None:
        """Write the policy, have Headscale check it, and make it reload it (SIGHUP)."""
        assert self.headscale is not None
        self.write_policy()
        self.headscale_cli("policy", "check", "--file", str(self.policy))
        reloads = self._count_in_log(self.headscale, "reloading ACL policy")
        self.headscale.popen.send_signal(signal.SIGHUP)
        self.wait_for(
            lambda: self._count_in_log(self.headscale, "reloading ACL policy") > reloads,
            "Headscale to reload its policy",
        )

    def wait_for(self, condition: Callable[[], T], what: str, *, timeout: float = 30,
                 interval: float = 0.2) -> T:  # fmt: skip
        """:func:`wait_until_sync`, failing with the tails of every log."""
        try:
            return wait_until_sync(condition, what, timeout=timeout, interval=interval)
        except TimeoutError as exc:
            raise TailnetError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        """The tail of every process's log."""
        return "\n".join(process.tail() for process in self.processes)

    def close(self) -> None:
        """Stop every process and remove every namespace (with its links); TailnetError if a
        namespace stays."""
        for process in reversed(self.processes):
            process.stop()
        left = []
        for namespace in [*(host.namespace for host in self.hosts.values()), self.control]:
            if not Path("/run/netns", namespace).exists():
                continue
            result = subprocess.run(["ip", "netns", "del", namespace], capture_output=True,
                                    text=True, timeout=30)  # fmt: skip
            if result.returncode != 0:
                left.append(f"{namespace}: {result.stderr.strip()}")
        if left:
            raise TailnetError(f"namespaces left behind: {'; '.join(left)}")

    def _make_control(self) -> None:
        self._ip("netns", "add", self.control)
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
        self._ip("netns", "add", host.namespace)
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

    def _start_headscale(self) -> None:
        state = self.directory / "headscale"
        state.mkdir(parents=True, exist_ok=True)
        self.write_policy()
        self.config.write_text(json.dumps(self._headscale_config(state), indent=2) + "\n")
        self.headscale = self._spawn(
            "headscale", self.control, [str(BINDIR / "headscale"), "-c", str(self.config), "serve"]
        )
        self.wait_for(
            lambda: self._alive(self.headscale) and self._headscale_healthy(), "Headscale's health"
        )
        self.headscale_cli("users", "create", USER)
        users = json.loads(self.headscale_cli("users", "list", "--output", "json"))
        self.user_id = next(int(user["id"]) for user in users if user["name"] == USER)

    def _headscale_config(self, state: Path) -> dict[str, object]:
        return {
            "server_url": LOGIN_SERVER,
            "listen_addr": f"0.0.0.0:{CONTROL_PORT}",
            "metrics_listen_addr": "127.0.0.1:9090",
            "grpc_listen_addr": "127.0.0.1:50443",
            "grpc_allow_insecure": False,
            "noise": {"private_key_path": str(state / "noise_private.key")},
            "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48"},
            "derp": {
                "server": {
                    "enabled": True,
                    "region_id": 999,
                    "region_code": "bed",
                    "region_name": "test bed",
                    "stun_listen_addr": f"0.0.0.0:{STUN_PORT}",
                    "private_key_path": str(state / "derp_server_private.key"),
                    "automatically_add_embedded_derp_region": True,
                    "ipv4": CONTROL_IP,
                },
                "urls": [],
                "paths": [],
                "auto_update_enabled": False,
            },
            "disable_check_updates": True,
            "database": {"type": "sqlite", "sqlite": {"path": str(state / "db.sqlite")}},
            "log": {"level": "info", "format": "text"},
            "policy": {"mode": "file", "path": str(self.policy)},
            "dns": {
                "magic_dns": False,
                "override_local_dns": False,
                "nameservers": {"global": []},
            },
            "unix_socket": str(state / "headscale.sock"),
            "unix_socket_permission": "0770",
            "logtail": {"enabled": False},
        }

    def _headscale_healthy(self) -> bool:
        argv = [str(BINDIR / "headscale"), "-c", str(self.config), "health"]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    def _spawn(self, name: str, namespace: str, argv: list[str],
               env: dict[str, str] | None = None) -> Process:  # fmt: skip
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

    def _alive(self, process: Process | None) -> bool:
        if process is None or not process.running():
            name = process.name if process else "process"
            raise TailnetError(f"{name} exited\n{self.logs()}")
        return True

    def _run(self, argv: list[str], timeout: float, check: bool = True) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise TailnetError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}\n"
                f"{self.logs()}"
            )
        return result.stdout

    @staticmethod
    def _no_forwarding(namespace: str) -> None:
        """A new namespace copies the machine's IPv4 forwarding: the bed needs it off."""
        with netns.inside(namespace):
            for knob in FORWARDING:
                Path("/proc/sys/net", knob).write_text("0\n")

    @staticmethod
    def _count_in_log(process: Process | None, text: str) -> int:
        assert process is not None
        return process.log.read_text(errors="replace").count(text)

    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise TailnetError(f"ip {' '.join(args)}: {result.stderr.strip()}")
