"""A tailnet peer gets an endpoint from our relay over tailscale.com v1.102.5's DERP server.

The peer (one of our DERP clients, speaking as a Tailscale client would) seals
an AllocateUDPRelayEndpointRequest (0x08) to the relay node's disco key and
sends it through ``derp-echo``'s DERP server; the relay's door
(relay/tailnet/peer_relay.py), logged in to the same server, allocates on a
real relay and answers 0x09; the peer then binds to that endpoint over UDP in
protocol version 1. What the door must not answer, it counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nacl.public import PrivateKey

from relay.protocol import disco
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.server import RelayServer
from relay.shells.peer import UdpPeer
from relay.tailnet import derp
from relay.tailnet.allocation_requests import Drop, Peer, RequestGate
from relay.tailnet.derp_client import DerpConnection
from relay.tailnet.peer_relay import PeerRelayDoor
from tests.conformance_v1.derp_echo import IO_TIMEOUT, log_in
from tests.relay.udp_harness import start_relay
from tests.support.waiting import wait_until

NODE_DISCO = DiscoPrivateKey.generate()


class Tailnet:
    """The door's view of the netmap: node key -> peer, changed by the tests."""

    def __init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}

    def lookup(self, node_key: bytes) -> Peer | None:
        return self.peers.get(node_key)


@pytest.fixture
async def relay() -> AsyncIterator[RelayServer]:
    server = await start_relay()
    yield server
    await server.close()


@pytest.fixture
async def door(echo_server, relay) -> AsyncIterator[tuple[PeerRelayDoor, Tailnet, DerpConnection]]:
    tailnet = Tailnet()
    door = PeerRelayDoor(RequestGate(NODE_DISCO), tailnet.lookup, relay.allocate)
    connection = await log_in(echo_server)
    serving = asyncio.create_task(door.serve(connection))
    yield door, tailnet, connection
    serving.cancel()
    await connection.close()


def request(sender: DiscoPrivateKey, other: DiscoPublicKey, generation: int) -> bytes:
    message = disco.AllocateUDPRelayEndpointRequest((sender.public.raw, other.raw), generation)
    return disco.seal(sender.public.raw, sender.shared(NODE_DISCO.public), message)


async def answer(client: DerpConnection, sender: DiscoPrivateKey) -> disco.Message:
    while True:
        message = await asyncio.wait_for(client.receive(), IO_TIMEOUT)
        if isinstance(message, derp.ReceivedPacket):
            return disco.parse(disco.open_frame(message.data, sender.shared(NODE_DISCO.public)))


async def test_a_granted_peer_gets_an_endpoint_and_binds_to_it(echo_server, relay, door):
    relay_door, tailnet, relay_node = door
    me, other = DiscoPrivateKey.generate(), DiscoPrivateKey.generate()
    client = await log_in(echo_server)
    try:
        tailnet.peers[client.node_public] = Peer(client.node_public, me.public, granted=True)
        client.send(relay_node.node_public, request(me, other.public, generation=77))
        await client.drain()
        response = await answer(client, me)
    finally:
        await client.close()

    assert isinstance(response, disco.AllocateUDPRelayEndpointResponse)
    assert response.generation == 77
    endpoint = response.endpoint
    assert endpoint.server_disco == relay.core.server_key.raw
    assert endpoint.client_disco == tuple(sorted((me.public.raw, other.public.raw)))
    assert relay.core.endpoint(endpoint.vni) is not None, "allocated on the relay"
    assert relay_door.answered == 1

    peer = await UdpPeer.open("127.0.0.1")
    try:
        binder = RelayClient(me, DiscoPublicKey(endpoint.server_disco), endpoint.vni, other.public)
        address = ("127.0.0.1", relay.udp_port)
        peer.send(binder.bind(), address)
        challenge = await asyncio.wait_for(peer.receive(), IO_TIMEOUT)
        peer.send(binder.answer(challenge), address)
        await wait_until(
            lambda: relay.core.handshakes_completed == 1,
            "the peer bound to the endpoint it got over DERP",
        )
    finally:
        peer.close()


async def test_what_the_rules_refuse_is_counted_and_answered_with_nothing(echo_server, door):
    relay_door, tailnet, relay_node = door
    me, other = DiscoPrivateKey.generate(), DiscoPrivateKey.generate()
    client = await log_in(echo_server)
    try:
        tailnet.peers[client.node_public] = Peer(client.node_public, me.public, granted=False)
        client.send(relay_node.node_public, request(me, other.public, 1))
        client.send(relay_node.node_public, b"not a disco frame, not for anyone" * 3)
        forged = DiscoPrivateKey.generate()
        client.send(relay_node.node_public, request(forged, other.public, 2))
        await client.drain()
        await wait_until(
            lambda: sum(relay_door.drops.values()) == 3, "three packets judged", timeout=IO_TIMEOUT
        )
        assert relay_door.drops == {
            Drop.NOT_GRANTED: 1,
            Drop.NOT_DISCO: 1,
            Drop.DISCO_KEY_MISMATCH: 1,
        }
        assert relay_door.answered == 0
    finally:
        await client.close()


async def test_a_replayed_request_allocates_nothing_more(echo_server, relay, door):
    relay_door, tailnet, relay_node = door
    me, other = DiscoPrivateKey.generate(), DiscoPrivateKey.generate()
    client = await log_in(echo_server)
    try:
        tailnet.peers[client.node_public] = Peer(client.node_public, me.public, granted=True)
        frame = request(me, other.public, 5)
        client.send(relay_node.node_public, frame)
        await client.drain()
        await answer(client, me)
        client.send(relay_node.node_public, frame)
        await client.drain()
        await wait_until(lambda: relay_door.drops[Drop.REPLAYED] == 1, "the replay dropped")
        assert relay_door.answered == 1
        assert len(list(relay.core.endpoints())) == 1
    finally:
        await client.close()


def test_node_keys_are_x25519_public_keys():
    private = PrivateKey.generate()
    assert derp.node_public(bytes(private)) == bytes(private.public_key)
