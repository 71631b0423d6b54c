"""The kernel fast path (``--fast-path auto``), end to end across network namespaces.

A real relay process runs in its own namespace; two clients in two others
bind over veth links and send data. The relay is stopped (SIGSTOP) while
data flows, so any packet that arrives was relayed by the kernel's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from relay.fastpath.kernel import POLL_INTERVAL
from relay.fastpath.rules import chain_name, table_name
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from tests.relay.relay_process import RelayProcess
from tests.support import netns

pytestmark = pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))

DEADLINE = 20.0


@pytest.fixture
def hosts(tmp_path):
    hosts = netns.Hosts.create()
    hosts.logs = tmp_path
    yield hosts
    hosts.close()
    for log in sorted(tmp_path.glob("relay-*.log")):
        print(f"--- {log.name}\n{log.read_text()}")  # shown when the test fails


async def start_relay(
    hosts: netns.Hosts, *args: str, wrapper: tuple[str, ...] = (), listen: str = "0.0.0.0"
) -> RelayProcess:
    log = hosts.logs / f"relay-{len(list(hosts.logs.glob('relay-*.log')))}.log"
    return await RelayProcess.start(
        "--fast-path", "auto", "--log-level", "debug", *args,
        wrapper=(*hosts.exec(hosts.relay), *wrapper),
        listen=listen,
        log=log,
    )  # fmt: skip


def api_port(relay: RelayProcess) -> int:
    return int(relay.ready["api"].rsplit(":", 1)[1])


@contextlib.contextmanager
def stopped(relay: RelayProcess) -> Iterator[None]:
    """The relay process stopped (SIGSTOP) for the block: only the kernel can relay then."""
    relay.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        relay.process.send_signal(signal.SIGCONT)


async def until(condition, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.05)


def metric(hosts: netns.Hosts, relay: RelayProcess, name: str) -> float:
    status, text = hosts.relay_http(api_port(relay), "GET", "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(f"relayfleet_relay_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def endpoints(hosts: netns.Hosts, relay: RelayProcess) -> list[dict]:
    status, text = hosts.relay_http(api_port(relay), "GET", "/v0/relay/endpoints")
    assert status == 200, text
    return json.loads(text)["Endpoints"]


class BoundPair:
    """Two clients in their namespaces, bound to one endpoint of the relay."""

    def __init__(self, hosts: netns.Hosts, relay: RelayProcess, ipv6: bool = False) -> None:
        self.keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        status, text = hosts.relay_http(
            api_port(relay), "POST", "/v0/relay/endpoint",
            {"DiscoKeys": [str(k.public) for k in self.keys]},
        )  # fmt: skip
        assert status == 200, text
        allocation = json.loads(text)
        self.vni = allocation["VNI"]
        self.lamport_id = allocation["LamportID"]
        server = DiscoPublicKey.parse(allocation["ServerDisco"])
        self.clients = [RelayClient(k, server, self.vni) for k in self.keys]
        self.sockets = [hosts.udp_socket("a", ipv6), hosts.udp_socket("b", ipv6)]
        sides = netns.RELAY_SIDE6 if ipv6 else netns.RELAY_SIDE
        self.relay = [(sides[side], relay.ready["udp_port"]) for side in "ab"]
        for sock in self.sockets:
            sock.settimeout(5)

    def bind(self) -> None:
        for client, sock, relay in zip(self.clients, self.sockets, self.relay, strict=True):
            sock.sendto(client.bind(), relay)
            challenge, _ = sock.recvfrom(2048)
            sock.sendto(client.answer(challenge), relay)

    def send(self, sender: int, payload: bytes) -> None:
        self.sockets[sender].sendto(self.clients[sender].data(payload), self.relay[sender])

    def receive(self, receiver: int, timeout: float = 5.0) -> tuple[bytes, tuple]:
        sock = self.sockets[receiver]
        sock.settimeout(timeout)
        datagram, source = sock.recvfrom(2048)
        return self.clients[receiver].read_data(datagram), source

    def silent(self, receiver: int, timeout: float = 0.5) -> bool:
        """True if nothing arrives within ``timeout`` (a negative check with a bound)."""
        try:
            self.receive(receiver, timeout)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def chains(hosts: netns.Hosts, relay: RelayProcess) -> str:
    return hosts.nft("list", "table", "netdev", table_name(relay.ready["udp_port"]))


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
async def test_bound_pair_is_relayed_by_the_kernel_with_counts_and_last_seen(hosts, ipv6):
    relay = await start_relay(hosts, listen="::")
    pair = BoundPair(hosts, relay, ipv6)
    try:
        await asyncio.to_thread(pair.bind)
        await until(lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed")
        assert chain_name(pair.vni, pair.lamport_id, 0) in chains(hosts, relay)
        with stopped(relay):
            for i in range(50):
                for sender in (0, 1):
                    payload = f"{sender}:{i}".encode() * 10
                    pair.send(sender, payload)
                    got, source = pair.receive(1 - sender)
                    assert got == payload
                    assert source[:2] == pair.relay[1 - sender], "source is the relay's side"
        size = len(pair.clients[0].data(b"0:0" * 10))

        def counted():
            clients = endpoints(hosts, relay)[0]["Clients"]
            return all(c["Packets"] == 50 for c in clients) and clients

        clients = await until(counted, "kernel counts credited to the endpoint")
        for client in clients:
            assert client["Bytes"] >= 50 * size
            last_seen = client["LastSeen"]
            assert last_seen is not None
        assert metric(hosts, relay, "forwarded_packets_total") == 100
        drops = metric(hosts, relay, "fast_path_errors_total")
        assert drops == 0
    finally:
        pair.close()
        code, stderr = await relay.stop()
    assert code == 0, stderr
    tables = subprocess.run(
        [*hosts.exec(hosts.relay), "nft", "list", "tables"], capture_output=True, text=True
    ).stdout
    assert table_name(relay.ready["udp_port"]) not in tables, "table removed at exit"


async def test_kernel_traffic_keeps_the_endpoint_alive_and_expiry_removes_the_rules(hosts):
    lifetime = 3.0
    relay = await start_relay(hosts, "--steady-state-lifetime", f"{lifetime:g}s")
    pair = BoundPair(hosts, relay)
    try:
        await asyncio.to_thread(pair.bind)
        await until(lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed")
        started = time.monotonic()
        while time.monotonic() - started < 2 * lifetime:
            for sender in (0, 1):
                pair.send(sender, b"keepalive")
                assert pair.receive(1 - sender)[0] == b"keepalive"
            await asyncio.sleep(0.2)
        assert [e["VNI"] for e in endpoints(hosts, relay)] == [pair.vni], (
            "traffic seen only by the kernel kept the endpoint past its steady-state lifetime"
        )
        await until(lambda: not endpoints(hosts, relay), "endpoint expired after silence",
                    timeout=lifetime + 4 * POLL_INTERVAL + DEADLINE)  # fmt: skip
        await until(
            lambda: chain_name(pair.vni, pair.lamport_id, 0) not in chains(hosts, relay),
            "rules removed after expiry",
        )
        assert metric(hosts, relay, "fast_path_endpoints") == 0
        with stopped(relay):
            pair.send(0, b"after expiry")
            assert pair.silent(1), "the kernel relays nothing for an expired endpoint"
    finally:
        pair.close()
        await relay.stop()


async def test_without_net_admin_the_relay_falls_back_to_user_space(hosts):
    no_admin = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    relay = await start_relay(hosts, wrapper=no_admin)
    pair = BoundPair(hosts, relay)
    try:
        await asyncio.to_thread(pair.bind)
        for sender in (0, 1):
            pair.send(sender, b"user space")
            assert pair.receive(1 - sender)[0] == b"user space"
        assert metric(hosts, relay, "fast_path_endpoints") == 0
        assert metric(hosts, relay, "forwarded_packets_total") == 2
    finally:
        pair.close()
        code, stderr = await relay.stop()
    assert code == 0
    assert "kernel fast path unavailable, relaying in user space" in stderr
    assert "Operation not permitted" in stderr


def test_hosts_helper_cleans_up():
    hosts = netns.Hosts.create(f"{os.getpid()}x")
    hosts.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert hosts.relay not in listed
    with pytest.raises(FileNotFoundError), netns.inside(hosts.relay):
        socket.socket()


async def test_a_restarted_relay_replaces_the_rules_a_killed_one_left(hosts):
    with netns.inside(hosts.relay), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    relay = await start_relay(hosts, "--port", str(port))
    pair = BoundPair(hosts, relay)
    try:
        await asyncio.to_thread(pair.bind)
        await until(lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed")
        await relay.stop(signal.SIGKILL)
        stale = chain_name(pair.vni, pair.lamport_id, 0)
        assert stale in chains(hosts, relay), "a killed relay cannot clean up"
        relay = await start_relay(hosts, "--port", str(port))
        assert stale not in chains(hosts, relay), "the new relay starts from an empty table"
        pair.send(0, b"to a relay that forgot the endpoint")
        assert pair.silent(1)
    finally:
        pair.close()
        await relay.stop()


async def test_many_endpoints_bound_at_once_are_all_relayed_by_the_kernel(hosts):
    count = 40
    relay = await start_relay(hosts)
    pairs = [BoundPair(hosts, relay) for _ in range(count)]
    try:
        for pair in pairs:
            await asyncio.to_thread(pair.bind)
        await until(lambda: metric(hosts, relay, "fast_path_endpoints") == count, "all installed")
        with stopped(relay):
            for i, pair in enumerate(pairs):
                for sender in (0, 1):
                    pair.send(sender, f"endpoint {i} from {sender}".encode())
            for i, pair in enumerate(pairs):
                for sender in (0, 1):
                    got, _ = pair.receive(1 - sender)
                    assert got == f"endpoint {i} from {sender}".encode()
        await until(
            lambda: metric(hosts, relay, "forwarded_packets_total") == 2 * count,
            "every kernel-relayed packet credited",
        )
    finally:
        for pair in pairs:
            pair.close()
        await relay.stop()


async def test_a_table_deleted_behind_the_relays_back_is_rebuilt(hosts):
    relay = await start_relay(hosts)
    pair = BoundPair(hosts, relay)
    try:
        await asyncio.to_thread(pair.bind)
        await until(lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed")
        hosts.nft("delete", "table", "netdev", table_name(relay.ready["udp_port"]))
        pair.send(0, b"relayed by user space meanwhile")
        assert pair.receive(1)[0] == b"relayed by user space meanwhile"
        await until(lambda: metric(hosts, relay, "fast_path_errors_total") >= 1, "noticed")
        await until(
            lambda: chain_name(pair.vni, pair.lamport_id, 0) in chains(hosts, relay),
            "the endpoint back in the kernel",
            timeout=DEADLINE + 30,
        )
        with stopped(relay):
            pair.send(1, b"relayed by the kernel again")
            assert pair.receive(0)[0] == b"relayed by the kernel again"
    finally:
        pair.close()
        await relay.stop()


async def test_endpoints_over_the_limit_wait_for_room_in_the_kernel(hosts):
    lifetime = 3.0
    relay = await start_relay(
        hosts, "--fast-path-max-endpoints", "1", "--steady-state-lifetime", f"{lifetime:g}s"
    )
    first, second = BoundPair(hosts, relay), BoundPair(hosts, relay)
    try:
        await asyncio.to_thread(first.bind)
        await until(lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "first installed")
        await asyncio.to_thread(second.bind)
        waiting = chain_name(second.vni, second.lamport_id, 0)
        assert waiting not in chains(hosts, relay), "no room for the second"
        deadline = time.monotonic() + lifetime + DEADLINE
        while waiting not in chains(hosts, relay):  # the first expires; the second stays busy
            assert time.monotonic() < deadline, "the second never got the first's room"
            second.send(0, b"keepalive")
            assert second.receive(1)[0] == b"keepalive"
            await asyncio.sleep(0.3)
        assert [e["VNI"] for e in endpoints(hosts, relay)] == [second.vni]
        with stopped(relay):
            second.send(1, b"now in the kernel")
            assert second.receive(0)[0] == b"now in the kernel"
    finally:
        first.close()
        second.close()
        await relay.stop()
