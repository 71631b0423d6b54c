"""Our DERP client (relay/tailnet/derp_client.py) against tailscale.com v1.102.5's DERP server.

``derp-echo`` (tests/conformance_v1/cmd/derp-echo) runs derpserver behind its
own HTTP upgrade handler on loopback, with one reference client (derphttp)
logged in that sends every packet back to its sender. Our client must log in
(the server's key and its sealed ServerInfo check out), carry packets to and
from the reference client and between two of ours, and hear that a node is
not there.
"""

from __future__ import annotations

import asyncio

import pytest
from nacl.public import PrivateKey

from relay.protocol.disco import MAGIC, MIN_FRAME_LEN
from relay.tailnet import derp
from relay.tailnet.derp_client import DerpConnection
from tests.conformance_v1.derp_echo import IO_TIMEOUT, log_in


async def next_packet(connection: DerpConnection) -> derp.ReceivedPacket | derp.PeerGone:
    while True:
        message = await asyncio.wait_for(connection.receive(), IO_TIMEOUT)
        if isinstance(message, derp.ReceivedPacket | derp.PeerGone):
            return message


async def test_login_learns_the_servers_key_and_waits_for_its_server_info(echo_server):
    connection = await log_in(echo_server)
    try:
        assert connection.server_public == echo_server.server_public
        assert connection.server_info == derp.ServerInfo(0, 0), "no rate limit configured"
    finally:
        await connection.close()


async def test_packets_to_the_reference_client_come_back_from_it(echo_server):
    connection = await log_in(echo_server)
    try:
        packets = [b"hello", bytes(range(256)) * 4, b"\x00" * derp.MAX_PACKET_LEN]
        for packet in packets:
            connection.send(echo_server.echo_public, packet)
        await connection.drain()
        for packet in packets:
            received = await next_packet(connection)
            assert received == derp.ReceivedPacket(echo_server.echo_public, packet)
    finally:
        await connection.close()


async def test_two_of_our_clients_reach_each_other(echo_server):
    alice, bob = await log_in(echo_server), await log_in(echo_server)
    try:
        alice_key, bob_key = alice.node_public, bob.node_public
        alice.send(bob_key, b"to bob")
        await alice.drain()
        assert await next_packet(bob) == derp.ReceivedPacket(alice_key, b"to bob")
        bob.send(alice_key, b"to alice")
        await bob.drain()
        assert await next_packet(alice) == derp.ReceivedPacket(bob_key, b"to alice")
    finally:
        await alice.close()
        await bob.close()


async def test_a_disco_packet_to_a_node_not_there_gets_peer_gone(echo_server):
    connection = await log_in(echo_server)
    try:
        nobody = bytes(PrivateKey.generate().public_key)
        connection.send(nobody, MAGIC + b"\x00" * (MIN_FRAME_LEN - len(MAGIC)))
        await connection.drain()
        assert await next_packet(connection) == derp.PeerGone(nobody, 1)
    finally:
        await connection.close()


async def test_a_server_that_refuses_the_upgrade_is_a_clear_error(echo_server):
    node = bytes(PrivateKey.generate())
    with pytest.raises(derp.DerpError, match="refused the DERP upgrade"):
        await asyncio.wait_for(
            DerpConnection.open("127.0.0.1", echo_server.port, node, path="/nothing"),
            IO_TIMEOUT,
        )
