"""Disco frames and the three bind messages, byte for byte (docs/protocol.md "Control packets")."""

import os

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from relay.protocol import disco
from relay.protocol.keys import DiscoPrivateKey

NONCE = bytes(range(24))
CHALLENGE = bytes(range(100, 132))


@pytest.fixture
def keys():
    return DiscoPrivateKey.generate(), DiscoPrivateKey.generate()


def test_magic_is_ts_and_speech_balloon():
    assert bytes.fromhex("5453f09f92ac") == disco.MAGIC
    assert "TS\U0001f4ac".encode() == disco.MAGIC


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (disco.BindUDPRelayEndpoint(), bytes.fromhex("0400") + bytes(32)),
        (disco.BindUDPRelayEndpointChallenge(CHALLENGE), bytes.fromhex("0500") + CHALLENGE),
        (disco.BindUDPRelayEndpointAnswer(CHALLENGE), bytes.fromhex("0600") + CHALLENGE),
    ],
)
def test_message_payloads(message, payload):
    assert disco.marshal(message) == payload
    assert disco.parse(payload) == message


def test_readers_ignore_trailing_bytes_and_accept_any_bind_padding_below_version_1():
    assert disco.parse(bytes.fromhex("0600") + CHALLENGE + b"extra") == (
        disco.BindUDPRelayEndpointAnswer(CHALLENGE)
    )
    assert disco.parse(bytes.fromhex("0400")) == disco.BindUDPRelayEndpoint()
    padding = bytes(disco.V1_BODY_LEN - 1)
    assert disco.parse(bytes.fromhex("0401") + padding) == disco.BindUDPRelayEndpoint()


@pytest.mark.parametrize("kind", [disco.TYPE_BIND, disco.TYPE_CHALLENGE, disco.TYPE_ANSWER])
def test_a_body_of_72_bytes_or_more_is_version_1(kind):
    key = bytes(range(32))
    body = (7).to_bytes(4, "big") + (9).to_bytes(4, "big") + key + CHALLENGE
    message = disco.BindV1(kind, 7, 9, key, CHALLENGE)
    assert disco.parse(bytes((kind, 0)) + body + b"extra") == message
    assert disco.marshal(message) == bytes((kind, 0)) + body
    assert len(disco.marshal(message)) == 2 + disco.V1_BODY_LEN == 74


def test_a_version_1_frame_is_told_apart_before_it_is_opened(keys):
    sender, receiver = keys
    shared = sender.shared(receiver.public)
    v0 = disco.seal(sender.public.raw, shared, disco.BindUDPRelayEndpoint(), NONCE)
    v1 = disco.seal(sender.public.raw, shared, disco.BindV1(4, 1, 1, bytes(32)), NONCE)
    assert disco.body_len(len(v0)) == disco.BIND_PADDING_LEN
    assert disco.body_len(len(v1)) == disco.V1_BODY_LEN


@pytest.mark.parametrize("payload", [b"", b"\x05", bytes.fromhex("0500") + bytes(31)])
def test_short_messages_are_errors(payload):
    with pytest.raises(disco.DiscoError):
        disco.parse(payload)


def test_other_types_parse_as_other():
    assert disco.parse(bytes.fromhex("0100") + bytes(40)) == disco.OtherMessage(1)


def test_frame_layout_and_offsets(keys):
    sender, receiver = keys
    frame = disco.seal(
        sender.public.raw, sender.shared(receiver.public), disco.BindUDPRelayEndpoint(), NONCE
    )
    assert frame[0:6] == disco.MAGIC
    assert frame[6:38] == sender.public.raw
    assert frame[38:62] == NONCE
    assert len(frame) == 6 + 32 + 24 + (2 + 32) + 16
    assert disco.frame_sender(frame) == sender.public.raw


def test_box_opens_with_nacl_public_box(keys):
    """An independent path (PyNaCl's Box, not the precomputed-key bindings) opens our box."""
    sender, receiver = keys
    frame = disco.seal(
        sender.public.raw,
        sender.shared(receiver.public),
        disco.BindUDPRelayEndpointChallenge(CHALLENGE),
        NONCE,
    )
    box = Box(PrivateKey(receiver.raw), PublicKey(sender.public.raw))
    assert box.decrypt(frame[62:], NONCE) == bytes.fromhex("0500") + CHALLENGE


def test_open_frame_round_trip_and_tamper(keys):
    sender, receiver = keys
    frame = disco.seal(
        sender.public.raw, sender.shared(receiver.public), disco.BindUDPRelayEndpoint()
    )
    assert disco.parse(disco.open_frame(frame, receiver.shared(sender.public))) == (
        disco.BindUDPRelayEndpoint()
    )
    tampered = frame[:-1] + bytes([frame[-1] ^ 1])
    with pytest.raises(disco.DiscoError):
        disco.open_frame(tampered, receiver.shared(sender.public))


@pytest.mark.parametrize(
    "frame",
    [b"", disco.MAGIC, disco.MAGIC + bytes(32 + 24 + 15), b"XX\xf0\x9f\x92\xac" + bytes(72)],
)
def test_short_or_unmagical_frames_are_errors(frame):
    with pytest.raises(disco.DiscoError):
        disco.frame_sender(frame)


def test_nonces_never_repeat_and_a_forked_child_draws_its_own():
    """The relay's processes share one key: a forked worker must not count on from the
    parent's nonces."""
    mine = [disco.new_nonce() for _ in range(1000)]
    assert len(set(mine)) == 1000
    assert all(len(nonce) == disco.NONCE_LEN for nonce in mine)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only writes and leaves
        os.write(writing, b"".join(disco.new_nonce() for _ in range(1000)))
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        theirs = pipe.read()
    os.waitpid(child, 0)
    theirs_nonces = {
        theirs[i : i + disco.NONCE_LEN] for i in range(0, len(theirs), disco.NONCE_LEN)
    }
    assert len(theirs_nonces) == 1000
    assert not theirs_nonces & {*mine, *(disco.new_nonce() for _ in range(1000))}
    assert {n[:16] for n in theirs_nonces}.isdisjoint(n[:16] for n in mine)
