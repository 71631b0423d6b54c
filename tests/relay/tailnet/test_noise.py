"""The control protocol's Noise handshake and records, without a network.

Our client against our own server side (``accept``): both must agree on every
key and hash, and each must refuse what Tailscale's controlbase refuses.
tests/conformance_v1/test_controlbase.py holds the client to the Go server.
"""

from __future__ import annotations

import pytest

from relay.protocol.keys import InvalidKey
from relay.tailnet.noise import (
    HEADER,
    INITIATION_LEN,
    MAX_CIPHERTEXT_LEN,
    MAX_MESSAGE_LEN,
    MAX_PLAINTEXT_LEN,
    MSG_ERROR,
    MSG_RECORD,
    MSG_RESPONSE,
    RESPONSE_LEN,
    Accepted,
    ClientHandshake,
    HandshakeError,
    MachinePrivateKey,
    MachinePublicKey,
    RecordError,
    ServerRefused,
    Transport,
    accept,
)

VERSION = 142


@pytest.fixture
def machine_key() -> MachinePrivateKey:
    return MachinePrivateKey.generate()


@pytest.fixture
def control_key() -> MachinePrivateKey:
    return MachinePrivateKey.generate()


def connect(
    machine_key: MachinePrivateKey, control_key: MachinePrivateKey
) -> tuple[Transport, Accepted]:
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    accepted = accept(control_key, handshake.initiation)
    client = handshake.receive(accepted.response)
    assert client is not None
    return client, accepted


def records(wire: bytes) -> list[bytes]:
    """The whole messages in ``wire``, split by their headers."""
    found = []
    while wire:
        _, length = HEADER.unpack_from(wire)
        found.append(wire[: HEADER.size + length])
        wire = wire[HEADER.size + length :]
    return found


def test_the_initiation_carries_the_version_in_clear(machine_key, control_key):
    initiation = ClientHandshake(machine_key, control_key.public, VERSION).initiation
    assert len(initiation) == INITIATION_LEN == 101
    assert initiation[:5] == bytes([0, VERSION, 1, 0, 96])
    assert machine_key.public.raw not in initiation


def test_both_sides_agree_on_keys_version_and_handshake_hash(machine_key, control_key):
    client, accepted = connect(machine_key, control_key)
    server = accepted.transport
    assert server.peer == machine_key.public
    assert client.peer == control_key.public
    assert client.version == server.version == VERSION
    assert client.handshake_hash == server.handshake_hash
    assert len(accepted.response) == RESPONSE_LEN == 51


def test_every_handshake_has_its_own_keys(machine_key, control_key):
    first, _ = connect(machine_key, control_key)
    second, _ = connect(machine_key, control_key)
    assert first.handshake_hash != second.handshake_hash
    assert first.seal(b"same") != second.seal(b"same")


def test_records_round_trip_both_ways(machine_key, control_key):
    client, accepted = connect(machine_key, control_key)
    server = accepted.transport
    for message in (b"a", b"hello control", bytes(range(256)) * 3):
        assert server.open(client.seal(message)) == message
        assert client.open(server.seal(message)) == message
        assert client.buffered == server.buffered == 0


def test_long_plaintext_is_split_into_records_of_at_most_4096_bytes(machine_key, control_key):
    client, accepted = connect(machine_key, control_key)
    message = bytes(i % 251 for i in range(3 * MAX_PLAINTEXT_LEN + 5))
    wire = client.seal(message)
    sizes = [len(record) for record in records(wire)]
    assert sizes == [MAX_MESSAGE_LEN] * 3 + [HEADER.size + 5 + 16]
    assert {record[0] for record in records(wire)} == {MSG_RECORD}
    assert accepted.transport.open(wire) == message


def test_no_plaintext_makes_no_record(machine_key, control_key):
    client, _ = connect(machine_key, control_key)
    assert client.seal(b"") == b""


def test_partial_records_wait_for_their_rest(machine_key, control_key):
    client, accepted = connect(machine_key, control_key)
    wire = accepted.transport.seal(b"first") + accepted.transport.seal(b"second")
    received = [client.open(wire[i : i + 1]) for i in range(len(wire))]
    assert b"".join(received) == b"firstsecond"
    assert [chunk for chunk in received if chunk] == [b"first", b"second"]
    assert client.buffered == 0
    assert client.open(wire[:0]) == b""


def test_bytes_that_came_with_the_response_are_kept_for_the_transport(machine_key, control_key):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    accepted = accept(control_key, handshake.initiation)
    early = accepted.transport.seal(b"early payload")
    assert handshake.receive(accepted.response[:20]) is None
    client = handshake.receive(accepted.response[20:] + early[:10])
    assert client is not None
    assert client.buffered == 10
    assert client.open(early[10:]) == b"early payload"


def test_a_tampered_record_is_refused_and_so_is_everything_after_it(machine_key, control_key):
    client, accepted = connect(machine_key, control_key)
    server = accepted.transport
    tampered = bytearray(client.seal(b"pay me"))
    tampered[-1] ^= 1
    with pytest.raises(RecordError, match="decrypt"):
        server.open(bytes(tampered))
    with pytest.raises(RecordError, match="earlier record"):
        server.open(client.seal(b"valid"))
    assert client.open(server.seal(b"sending still works")) == b"sending still works"


def test_a_replayed_record_does_not_decrypt(machine_key, control_key):
    client, accepted = connect(machine_key, control_key)
    record = client.seal(b"once")
    assert accepted.transport.open(record) == b"once"
    with pytest.raises(RecordError, match="decrypt"):
        accepted.transport.open(record)


def test_records_of_one_direction_do_not_open_in_the_other(machine_key, control_key):
    client, _ = connect(machine_key, control_key)
    with pytest.raises(RecordError):
        client.open(client.seal(b"reflected"))


def test_an_oversize_record_is_refused_from_its_header(machine_key, control_key):
    client, _ = connect(machine_key, control_key)
    with pytest.raises(RecordError, match="more than 4093"):
        client.open(HEADER.pack(MSG_RECORD, MAX_CIPHERTEXT_LEN + 1))


@pytest.mark.parametrize(
    "header",
    [HEADER.pack(MSG_RESPONSE, 48), HEADER.pack(MSG_ERROR, 5), HEADER.pack(MSG_RECORD, 15)],
    ids=["response", "error", "shorter-than-tag"],
)
def test_anything_but_a_record_is_refused(machine_key, control_key, header):
    client, _ = connect(machine_key, control_key)
    with pytest.raises(RecordError):
        client.open(header + bytes(48))


def test_a_server_without_the_expected_key_cannot_accept(machine_key, control_key):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    with pytest.raises(HandshakeError):
        accept(MachinePrivateKey.generate(), handshake.initiation)


def test_a_response_from_another_handshake_is_refused(machine_key, control_key):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    other = ClientHandshake(machine_key, control_key.public, VERSION)
    with pytest.raises(HandshakeError, match="authenticate"):
        handshake.receive(accept(control_key, other.initiation).response)


def test_a_tampered_response_is_refused(machine_key, control_key):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    response = bytearray(accept(control_key, handshake.initiation).response)
    response[10] ^= 0x80
    with pytest.raises(HandshakeError):
        handshake.receive(bytes(response))


def test_a_version_changed_on_the_wire_breaks_the_handshake(machine_key, control_key):
    initiation = ClientHandshake(machine_key, control_key.public, VERSION).initiation
    with pytest.raises(HandshakeError):
        accept(control_key, (VERSION - 1).to_bytes(2, "big") + initiation[2:])


def test_a_server_error_is_reported_with_its_text(machine_key, control_key):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    text = b"wrong handshake initiation size"
    message = HEADER.pack(MSG_ERROR, len(text)) + text
    assert handshake.receive(message[:8]) is None
    with pytest.raises(ServerRefused) as refused:
        handshake.receive(message[8:])
    assert refused.value.text == text.decode()


@pytest.mark.parametrize(
    "message",
    [HEADER.pack(MSG_RECORD, 48) + bytes(48), HEADER.pack(MSG_RESPONSE, 47) + bytes(47)],
    ids=["wrong-type", "wrong-length"],
)
def test_a_malformed_response_is_refused(machine_key, control_key, message):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    with pytest.raises(HandshakeError):
        handshake.receive(message)


def test_a_handshake_is_used_once(machine_key, control_key):
    handshake = ClientHandshake(machine_key, control_key.public, VERSION)
    accepted = accept(control_key, handshake.initiation)
    assert handshake.receive(accepted.response) is not None
    with pytest.raises(HandshakeError, match="spent"):
        handshake.receive(b"")


@pytest.mark.parametrize("version", [-1, 0x10000])
def test_a_version_must_fit_in_16_bits(machine_key, control_key, version):
    with pytest.raises(ValueError):
        ClientHandshake(machine_key, control_key.public, version)


def test_machine_keys_in_text():
    key = MachinePrivateKey.generate()
    assert MachinePublicKey.parse(str(key.public)) == key.public
    assert str(key.public).startswith("mkey:")
    assert MachinePrivateKey.parse(key.text()) == key
    assert key.text() not in repr(key) and key.raw.hex() not in str(key)


@pytest.mark.parametrize(
    "text", ["", "mkey:" + "ab" * 31, "mkey:" + "AB" * 32, "discokey:" + "ab" * 32, "ab" * 32]
)
def test_malformed_machine_keys_are_refused(text):
    with pytest.raises(InvalidKey):
        MachinePublicKey.parse(text)
