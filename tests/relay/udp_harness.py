"""A real relay on loopback, and client pairs that allocate over HTTP and bind over UDP."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from relay.config import RelayConfig
from relay.protocol.client import RelayClient
from relay.protocol.core import Drop
from relay.protocol.keys import DiscoPrivateKey
from relay.protocol.server_endpoint import ServerEndpoint
from relay.server import RelayServer
from relay.shells.keyfile import RelaySecrets
from relay.shells.peer import UdpPeer
from relay.store import MemoryStore
from tests.support.waiting import wait_until


@dataclass
class UdpPair:
    endpoint: ServerEndpoint
    keys: list[DiscoPrivateKey]
    clients: list[RelayClient]
    peers: list[UdpPeer]
    relay: tuple[str, int]

    async def handshake(self, i: int) -> None:
        self.peers[i].send(self.clients[i].bind(), self.relay)
        challenge = await self.peers[i].receive()
        self.peers[i].send(self.clients[i].answer(challenge), self.relay)


@dataclass
class RelayHarness:
    server: RelayServer
    host: str
    session: aiohttp.ClientSession
    peers: list[UdpPeer] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://{self.server.api_address}"

    @property
    def relay(self) -> tuple[str, int]:
        return self.host, self.server.udp_port

    async def post_allocation(self, keys: list[str]) -> ServerEndpoint:
        async with self.session.post(
            f"{self.api}/v0/relay/endpoint", json={"DiscoKeys": keys}
        ) as response:
            assert response.status == 200, await response.text()
            return ServerEndpoint.from_json(await response.json())

    async def peer(self) -> UdpPeer:
        peer = await UdpPeer.open(self.host)
        self.peers.append(peer)
        return peer

    async def pair(self, keys: list[DiscoPrivateKey] | None = None) -> UdpPair:
        keys = keys or [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        endpoint = await self.post_allocation([str(k.public) for k in keys])
        clients = [RelayClient(k, endpoint.server_disco, endpoint.vni, protocol=0) for k in keys]
        return UdpPair(endpoint, keys, clients, [await self.peer(), await self.peer()], self.relay)

    async def bound_pair(self) -> UdpPair:
        pair = await self.pair()
        await pair.handshake(0)
        await pair.handshake(1)
        await wait_until(lambda: self.server.core.endpoint(pair.endpoint.vni).bound, "bound")
        return pair

    async def dropped(self, reason: Drop, count: int = 1) -> None:
        await wait_until(lambda: self.server.core.drops[reason] >= count, f"drop {reason}")
        assert self.server.core.drops[reason] == count

    def total_drops(self) -> int:
        return sum(self.server.core.drops.values())


async def start_relay(
    host: str = "127.0.0.1", *, api_token: str | None = None, **config: object
) -> RelayServer:
    settings = {"listen": host, "port": 0, "api_listen": (host, 0), "addrs": (host,)} | config
    relay_config = RelayConfig(**settings)
    server = RelayServer(
        relay_config,
        MemoryStore(relay_config.max_endpoints),
        RelaySecrets.generate(),
        api_token=api_token,
    )
    await server.start()
    return server


async def harness(
    host: str = "127.0.0.1", *, api_token: str | None = None, **config: object
) -> RelayHarness:
    server = await start_relay(host, api_token=api_token, **config)
    return RelayHarness(server, host, aiohttp.ClientSession())


async def close(h: RelayHarness) -> None:
    for peer in h.peers:
        peer.close()
    await h.session.close()
    await h.server.close()
