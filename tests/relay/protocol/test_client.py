"""RelayClient: version 1 by default, version 0 on request, against a real relay core."""

from __future__ import annotations

import pytest

from relay.protocol import disco, geneve
from relay.protocol.client import RelayClient
from relay.protocol.core import Handshake
from relay.protocol.keys import DiscoPrivateKey
from tests.relay.core_harness import A_ADDR, B_ADDR, CoreHarness

SERVER = DiscoPrivateKey.generate()


def sent_message(client: RelayClient, datagram: bytes) -> disco.Message:
    """What the server reads in a client's control datagram."""
    frame = datagram[geneve.HEADER_LEN :]
    return disco.parse(disco.open_frame(frame, SERVER.shared(client.public_key)))


def test_a_client_binds_in_version_1_by_default():
    remote = DiscoPrivateKey.generate().public
    client = RelayClient(DiscoPrivateKey.generate(), SERVER.public, 7, remote)
    message = sent_message(client, client.bind())
    assert message == disco.BindV1(disco.TYPE_BIND, 7, client.generation, remote.raw)
    assert client.generation != 0


def test_each_version_1_bind_is_a_new_generation():
    client = RelayClient(DiscoPrivateKey.generate(), SERVER.public, 7, SERVER.public)
    generations = []
    for _ in range(5):
        message = sent_message(client, client.bind())
        assert isinstance(message, disco.BindV1)
        generations.append(message.generation)
    assert 0 not in generations
    assert len(set(generations)) == 5


def test_a_version_0_client_binds_as_before():
    client = RelayClient(DiscoPrivateKey.generate(), SERVER.public, 7, protocol=0)
    assert sent_message(client, client.bind()) == disco.BindUDPRelayEndpoint()
    assert client.generation == 0


def test_a_version_1_bind_needs_the_other_clients_key():
    client = RelayClient(DiscoPrivateKey.generate(), SERVER.public, 7)
    with pytest.raises(ValueError, match="remote_key"):
        client.bind()


def test_only_versions_0_and_1_exist():
    with pytest.raises(ValueError, match="protocol version 2"):
        RelayClient(DiscoPrivateKey.generate(), SERVER.public, 7, protocol=2)


@pytest.mark.parametrize("protocol", [0, 1])
def test_both_clients_bind_and_relay_through_the_core(protocol):
    h = CoreHarness()
    pair = h.allocate(vni=3)
    a, b = (
        RelayClient(mine.private_key, h.core.server_key, 3, other.public_key, protocol)
        for mine, other in ((pair.a, pair.b), (pair.b, pair.a))
    )
    for client, source in ((a, A_ADDR), (b, B_ADDR)):
        reply = h.send(client.bind(), source)
        assert reply is not None, h.drops()
        assert h.send(client.answer(reply[0]), source) is None
    endpoint = h.core.endpoint(3)
    assert [c.handshake for c in endpoint.clients] == [Handshake.BOUND] * 2
    assert [c.version for c in endpoint.clients] == [protocol] * 2
    packet = a.data(b"hello")
    assert h.send(packet, A_ADDR) == (packet, B_ADDR)
    assert b.read_data(packet) == b"hello"
