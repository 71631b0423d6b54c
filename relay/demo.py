"""``relayfleet demo``: the whole story on one machine in a few seconds.

A relay on loopback with an in-memory store, two clients with fresh keys,
allocation through the real HTTP API, both bind handshakes over real UDP in
protocol version 1 (or 0 on request), traffic both ways, a stranger's packet
dropped, and a short summary.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp

from relay.config import RelayConfig
from relay.protocol.addresses import parse_host_port
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey
from relay.protocol.server_endpoint import ServerEndpoint
from relay.server import RelayServer
from relay.shells.keyfile import RelaySecrets
from relay.shells.peer import UdpPeer
from relay.store import MemoryStore

HANDSHAKE_ATTEMPTS = 3
REPLY_TIMEOUT = 1.0
WINDOW = 256


class DemoFailed(Exception):
    """A step of the demo did not work; the message says which."""


@dataclass
class DemoReport:
    endpoint: ServerEndpoint
    protocol: int
    handshake_ms: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=lambda: [0, 0])
    received: list[int] = field(default_factory=lambda: [0, 0])
    traffic_seconds: float = 0.0
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    handshakes_by_version: list[int] = field(default_factory=lambda: [0, 0])
    """As the relay counted them: index 0 and 1 for protocol versions 0 and 1."""

    @property
    def in_protocol(self) -> bool:
        return self.handshakes_by_version[self.protocol] == 2

    @property
    def ok(self) -> bool:
        return self.received == self.sent and self.in_protocol


async def _handshake(client: RelayClient, peer: UdpPeer, relay: tuple[str, int]) -> float:
    started = time.perf_counter()
    for _ in range(HANDSHAKE_ATTEMPTS):
        peer.send(client.bind(), relay)
        try:
            challenge = await peer.receive(REPLY_TIMEOUT)
        except TimeoutError:
            continue
        peer.send(client.answer(challenge), relay)
        return (time.perf_counter() - started) * 1000
    raise DemoFailed(f"no challenge from the relay after {HANDSHAKE_ATTEMPTS} binds")


async def _wait_bound(session: aiohttp.ClientSession, api: str, vni: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        async with session.get(f"{api}/v0/relay/endpoints") as response:
            table = await response.json()
        if any(e["VNI"] == vni and e["Bound"] for e in table["Endpoints"]):
            return
        await asyncio.sleep(0.01)
    raise DemoFailed("the relay did not report the endpoint bound")


async def _exchange(clients, peers, relay, packets: int, size: int, report: DemoReport) -> None:
    """Send ``packets`` each way in windows, so that loopback buffers never overflow."""
    padding = bytes(max(0, size - 4))
    for first in range(0, packets, WINDOW):
        window = range(first, min(first + WINDOW, packets))
        for seq in window:
            for sender in (0, 1):
                peers[sender].send(clients[sender].data(seq.to_bytes(4, "big") + padding), relay)
                report.sent[sender] += 1
        for receiver in (0, 1):
            for _ in window:
                try:
                    datagram = await peers[receiver].receive(REPLY_TIMEOUT)
                except TimeoutError:
                    break
                clients[receiver].read_data(datagram)
                report.received[1 - receiver] += 1


async def run_demo(
    packets: int = 1000, size: int = 200, ipv6: bool = False, protocol: int = 1
) -> DemoReport:
    host = "::1" if ipv6 else "127.0.0.1"
    config = RelayConfig(listen=host, port=0, api_listen=(host, 0), addrs=(host,), name="demo")
    server = RelayServer(config, MemoryStore(), RelaySecrets.generate())
    await server.start()
    peers: list[UdpPeer] = []
    try:
        keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        api = f"http://{server.api_address}"
        async with aiohttp.ClientSession() as session:
            request = {"DiscoKeys": [str(k.public) for k in keys]}
            async with session.post(f"{api}/v0/relay/endpoint", json=request) as response:
                if response.status != 200:
                    raise DemoFailed(
                        f"allocation answered {response.status}: {await response.text()}"
                    )
                endpoint = ServerEndpoint.from_json(await response.json())
            report = DemoReport(endpoint, protocol)
            relay = parse_host_port(endpoint.addr_ports[0])
            clients = [
                RelayClient(k, endpoint.server_disco, endpoint.vni, other.public, protocol)
                for k, other in zip(keys, reversed(keys), strict=True)
            ]
            peers = [await UdpPeer.open(host) for _ in keys]
            for client, peer in zip(clients, peers, strict=True):
                report.handshake_ms.append(await _handshake(client, peer, relay))
            await _wait_bound(session, api, endpoint.vni)
            started = time.perf_counter()
            await _exchange(clients, peers, relay, packets, size, report)
            report.traffic_seconds = time.perf_counter() - started
            stranger = await UdpPeer.open(host)
            peers.append(stranger)
            stranger.send(clients[0].data(b"let me in"), relay)
            await _wait_for(lambda: sum(server.core.drops.values()) > 0)
        report.handshakes_by_version = list(server.core.handshakes_by_version)
        report.forwarded_packets = server.core.forwarded_packets
        report.forwarded_bytes = server.core.forwarded_bytes
        report.drops = {r.value: n for r, n in server.core.drops.items() if n}
        return report
    finally:
        for peer in peers:
            peer.close()
        await server.close()


async def _wait_for(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DemoFailed("the relay did not count the stranger's packet")
        await asyncio.sleep(0.005)


def print_report(report: DemoReport, out: TextIO) -> None:
    e = report.endpoint
    rate = sum(report.received) / report.traffic_seconds if report.traffic_seconds else 0.0
    lines = [
        f"relay-fleet demo: one relay, two clients, loopback, protocol version {report.protocol}",
        f"  allocation   VNI {e.vni}, LamportID {e.lamport_id}, server {e.server_disco.short()}",
        f"               at {', '.join(e.addr_ports)}",
        "  handshakes   client A {:.1f} ms, client B {:.1f} ms".format(*report.handshake_ms),
        "               at the relay: {} in version 0, {} in version 1".format(
            *report.handshakes_by_version
        ),
        f"  A -> B       {report.received[0]}/{report.sent[0]} packets relayed",
        f"  B -> A       {report.received[1]}/{report.sent[1]} packets relayed",
        f"  relay        {report.forwarded_packets} packets, {report.forwarded_bytes} bytes "
        f"forwarded ({rate:,.0f} packets/s through Python on loopback)",
        "  drops        "
        + (", ".join(f"{n} {reason}" for reason, n in report.drops.items()) or "none"),
        "  result       " + _verdict(report),
    ]
    out.write("\n".join(lines) + "\n")


def _verdict(report: DemoReport) -> str:
    if report.ok:
        return "OK"
    if not report.in_protocol:
        return f"HANDSHAKES NOT IN VERSION {report.protocol}"
    return "PACKETS LOST"
