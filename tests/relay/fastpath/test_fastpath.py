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
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from relay.fastpath import rules
from relay.fastpath.kernel import POLL_INTERVAL
from relay.fastpath.rules import chain_name, table_name
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.shells.reuseport import worker_for_vni
from tests.relay.relay_process import RelayProcess
from tests.support import netns
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable())),
]

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
        "--fast-path", "auto", "--log-level", "debug",
        # Tests allocate dozens of endpoints at once from one address.
        "--api-rate", "1000", "--api-burst", "1000", *args,
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
        self.clients = [RelayClient(k, server, self.vni, protocol=0) for k in self.keys]
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
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed"
        )
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

        clients = await wait_until(counted, "kernel counts credited to the endpoint")
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
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed"
        )
        started = time.monotonic()
        while time.monotonic() - started < 2 * lifetime:
            for sender in (0, 1):
                pair.send(sender, b"keepalive")
                assert pair.receive(1 - sender)[0] == b"keepalive"
            await asyncio.sleep(0.2)
        assert [e["VNI"] for e in endpoints(hosts, relay)] == [pair.vni], (
            "traffic seen only by the kernel kept the endpoint past its steady-state lifetime"
        )
        await wait_until(
            lambda: not endpoints(hosts, relay),
            "endpoint expired after silence",
            timeout=lifetime + 4 * POLL_INTERVAL + DEADLINE,
        )
        await wait_until(
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
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed"
        )
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
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == count, "all installed"
        )
        with stopped(relay):
            for i, pair in enumerate(pairs):
                for sender in (0, 1):
                    pair.send(sender, f"endpoint {i} from {sender}".encode())
            for i, pair in enumerate(pairs):
                for sender in (0, 1):
                    got, _ = pair.receive(1 - sender)
                    assert got == f"endpoint {i} from {sender}".encode()
        await wait_until(
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
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed"
        )
        hosts.nft("delete", "table", "netdev", table_name(relay.ready["udp_port"]))
        pair.send(0, b"relayed by user space meanwhile")
        assert pair.receive(1)[0] == b"relayed by user space meanwhile"
        await wait_until(lambda: metric(hosts, relay, "fast_path_errors_total") >= 1, "noticed")
        await wait_until(
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
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "first installed"
        )
        await asyncio.to_thread(second.bind)
        waiting = chain_name(second.vni, second.lamport_id, 0)
        assert waiting not in chains(hosts, relay), "no room for the second"

        def second_in_the_kernel() -> bool:
            """Whether it is; meanwhile the first expires and the second stays busy."""
            second.send(0, b"keepalive")
            assert second.receive(1)[0] == b"keepalive"
            return waiting in chains(hosts, relay)

        await wait_until(
            second_in_the_kernel,
            "the second in the first's room",
            timeout=lifetime + DEADLINE,
            interval=0.3,
        )
        assert [e["VNI"] for e in endpoints(hosts, relay)] == [second.vni]
        with stopped(relay):
            second.send(1, b"now in the kernel")
            assert second.receive(0)[0] == b"now in the kernel"
    finally:
        first.close()
        second.close()
        await relay.stop()


async def test_a_version_1_rebind_moves_the_kernel_rules_to_the_new_address(hosts):
    """Protocol version 1: client a binds again from a new port while the kernel relays the
    pair; within a poll the rules name the new address, control packets having reached user
    space, and the kernel relays to and from it alone."""
    relay = await start_relay(hosts)
    pair = BoundPair(hosts, relay)
    remote = [pair.keys[1].public, pair.keys[0].public]

    def bind_v1(index: int, sock: socket.socket, generation: int) -> None:
        client = pair.clients[index]
        sock.sendto(client.bind_v1(remote[index], generation), pair.relay[index])
        challenge, _ = sock.recvfrom(2048)
        sock.sendto(client.answer(challenge), pair.relay[index])

    def kernel_legs() -> set[tuple[int, str, int]]:
        return set(rules.parse_legs(hosts.nft("-j", "list", "maps", "netdev"), table))

    table = table_name(relay.ready["udp_port"])
    moved = hosts.udp_socket("a")
    moved.settimeout(5)
    try:
        await asyncio.to_thread(bind_v1, 0, pair.sockets[0], 1)
        await asyncio.to_thread(bind_v1, 1, pair.sockets[1], 1)
        await wait_until(
            lambda: metric(hosts, relay, "fast_path_endpoints") == 1, "rules installed"
        )
        old_port = pair.sockets[0].getsockname()[1]
        new_port = moved.getsockname()[1]
        assert (pair.vni, netns.CLIENT_IP["a"], old_port) in kernel_legs()

        await asyncio.to_thread(bind_v1, 0, moved, 2)
        await wait_until(
            lambda: (pair.vni, netns.CLIENT_IP["a"], new_port) in kernel_legs(),
            "the rules follow client a to its new port",
        )
        assert (pair.vni, netns.CLIENT_IP["a"], old_port) not in kernel_legs()
        with stopped(relay):
            pair.send(1, b"to the new address")
            datagram, _ = moved.recvfrom(2048)
            assert pair.clients[0].read_data(datagram) == b"to the new address"
            assert pair.silent(0), "nothing goes to the old address"
            moved.sendto(pair.clients[0].data(b"from the new address"), pair.relay[0])
            assert pair.receive(1)[0] == b"from the new address"
            pair.send(0, b"from the old address")
            assert pair.silent(1), "the old address is no client of the endpoint any more"
        assert metric(hosts, relay, "fast_path_errors_total") == 0
    finally:
        moved.close()
        pair.close()
        code, stderr = await relay.stop()
    assert code == 0, stderr


async def test_a_relay_of_two_workers_relays_the_endpoints_of_both_in_the_kernel(hosts, tmp_path):
    """Each worker keeps its own table for the endpoints it owns, all hooked at the relay's
    devices; the Redis the workers share is reached over a Unix socket across namespaces."""
    socket_path = tmp_path / "redis.sock"
    unix = ("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    with RedisServer(tmp_path, args=("--save", "", "--appendonly", "no", *unix)):
        relay = await start_relay(
            hosts, "--workers", "2", "--store", f"unix://{socket_path}", "--report-status", "off"
        )
        pairs: list[BoundPair] = []
        try:
            while {worker_for_vni(p.vni, 2) for p in pairs} != {0, 1}:
                pairs.append(BoundPair(hosts, relay))
            for pair in pairs:
                await asyncio.to_thread(pair.bind)
            await wait_until(
                lambda: metric(hosts, relay, "fast_path_endpoints") == len(pairs),
                "every endpoint's rules installed, in both workers",
            )
            port = relay.ready["udp_port"]
            for worker in (0, 1):
                table = hosts.nft("list", "table", "netdev", table_name(port, worker))
                owned = [p for p in pairs if worker_for_vni(p.vni, 2) == worker]
                assert all(chain_name(p.vni, p.lamport_id, 0) in table for p in owned)
            workers = [
                int(pid) for pid in re.findall(r"started \(pid (\d+)\)", relay.log.read_text())
            ]
            with stopped(relay), stopped_pids(workers):
                for pair in pairs:
                    for sender in (0, 1):
                        pair.send(sender, b"by the kernel")
                        assert pair.receive(1 - sender)[0] == b"by the kernel"
        finally:
            for pair in pairs:
                pair.close()
            code, log = await relay.stop()
        assert code == 0, log
        tables = subprocess.run(
            [*hosts.exec(hosts.relay), "nft", "list", "tables"], capture_output=True, text=True
        ).stdout
        assert rules.TABLE_PREFIX not in tables, "every worker's table removed at exit"


@contextlib.contextmanager
def stopped_pids(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
