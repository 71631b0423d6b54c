"""Our Python client in version 1 against the v1.102.5 reference server and ours.

The client binds with the other client's key and a generation, answers the
challenge, relays both ways, then binds again from a new source port with a
new generation, and the other client's traffic follows it. Passing against
the reference proves the client, so the tests built on it cannot share a
misreading of docs/protocol.md with our server.

The reference runs as shipped, with several sockets read in parallel: the
order in which it handles datagrams from different sockets is not fixed, so
relaying is observed by sending numbered packets until one arrives.
"""

from __future__ import annotations

import itertools
import select

import pytest

from relay.protocol import disco
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.protocol.server_endpoint import ServerEndpoint
from tests.conformance.servers import ServerProcess
from tests.conformance.wire_script import Socket, post_allocation
from tests.support.waiting import wait_until_sync

ATTEMPT = 0.2
"""Seconds one numbered packet is waited for before the next is sent."""
NUMBERS = itertools.count()
"""Data packets are numbered in the order sent, across the whole module."""


@pytest.fixture(params=["ours", "reference-v1"])
def server(request, go_helpers):
    process = ServerProcess.start(request.param)
    yield process
    process.stop()


def handshake(client: RelayClient, sock: Socket, relay: tuple[str, int]) -> None:
    """Bind from ``sock``, check the challenge names this bind, answer it."""
    sock.send(client.bind(), relay)
    datagram = sock.receive()
    challenge = client.read_control(datagram)
    assert isinstance(challenge, disco.BindV1) and challenge.type == disco.TYPE_CHALLENGE
    expected = (client.vni, client.generation, client.remote_key.raw)
    assert (challenge.vni, challenge.generation, challenge.remote_key) == expected
    sock.send(client.answer(datagram), relay)


def send_until_delivered(
    sender: RelayClient,
    sock: Socket,
    relay: tuple[str, int],
    receiver: RelayClient,
    targets: list[Socket],
) -> dict[str, list[int]]:
    """Send numbered data packets one at a time until one reaches the last of ``targets``;
    return the numbers each target received."""
    received: dict[str, list[int]] = {target.name: [] for target in targets}

    def delivered() -> bool:
        sock.send(sender.data(str(next(NUMBERS)).encode()), relay)
        ready, _, _ = select.select([t.sock for t in targets], [], [], ATTEMPT)
        for target in targets:
            if target.sock in ready:
                for datagram in target.drain():
                    received[target.name].append(int(receiver.read_data(datagram)))
        return bool(received[targets[-1].name])

    wait_until_sync(delivered, f"data relayed to {targets[-1].name}")
    return received


def test_python_client_binds_relays_and_rebinds_in_version_1(server):
    keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
    status, body = post_allocation(server.url, [str(k.public) for k in keys])
    assert status == 200, body
    endpoint = ServerEndpoint.from_json(body)
    assert endpoint.server_disco == DiscoPublicKey.parse(server.server_disco)
    a, b = (
        RelayClient(key, endpoint.server_disco, endpoint.vni, remote_key=other.public)
        for key, other in zip(keys, reversed(keys), strict=True)
    )
    a_sock, b_sock, a_moved = Socket("a"), Socket("b"), Socket("a moved")
    try:
        handshake(a, a_sock, server.udp)
        handshake(b, b_sock, server.udp)
        send_until_delivered(a, a_sock, server.udp, b, [b_sock])
        send_until_delivered(b, b_sock, server.udp, a, [a_sock])

        first_generation = a.generation
        handshake(a, a_moved, server.udp)
        assert a.generation != first_generation
        seen = send_until_delivered(b, b_sock, server.udp, a, [a_sock, a_moved])
        last = next(NUMBERS)
        b_sock.send(b.data(str(last).encode()), server.udp)
        assert int(a.read_data(a_moved.receive())) == last
        # B's packets are handled in the order sent, so once one went to A's new
        # port, none after it went to the old one
        seen["a"] += [int(a.read_data(d)) for d in a_sock.drain()]
        assert seen["a"] == [] or max(seen["a"]) < min(seen["a moved"])
        send_until_delivered(a, a_moved, server.udp, b, [b_sock])
    finally:
        for sock in (a_sock, b_sock, a_moved):
            sock.close()
