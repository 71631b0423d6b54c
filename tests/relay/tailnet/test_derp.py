"""The DERP wire format (relay/tailnet/derp.py), without a network."""

from __future__ import annotations

import json
import struct

import pytest
from nacl.public import Box, PrivateKey

from relay.tailnet import derp

SERVER = PrivateKey.generate()
NODE = PrivateKey.generate()
PEER = bytes(PrivateKey.generate().public_key)


def parse(kind: int, payload: bytes) -> derp.Message | None:
    return derp.parse(
        kind, payload, node_private=bytes(NODE), server_public=bytes(SERVER.public_key)
    )


def test_frames_come_whole_however_the_bytes_are_cut():
    stream = derp.frame(derp.FRAME_KEEP_ALIVE) + derp.send_packet(PEER, b"x" * 300)
    reader = derp.FrameReader()
    frames = []
    for i in range(0, len(stream), 7):
        frames += reader.feed(stream[i : i + 7])
    assert frames == [(derp.FRAME_KEEP_ALIVE, b""), (derp.FRAME_SEND_PACKET, PEER + b"x" * 300)]


def test_a_frame_announced_over_the_limit_is_refused_from_its_header():
    reader = derp.FrameReader()
    with pytest.raises(derp.DerpError, match="frame of"):
        reader.feed(struct.pack(">BI", derp.FRAME_RECV_PACKET, derp.MAX_FRAME_LEN + 1))


def test_the_server_key_is_read_from_its_greeting_and_longer_greetings_are_allowed():
    key = bytes(SERVER.public_key)
    assert derp.server_key(derp.FRAME_SERVER_KEY, derp.MAGIC + key + b"future") == key
    with pytest.raises(derp.DerpError, match="magic"):
        derp.server_key(derp.FRAME_SERVER_KEY, b"NOTDERP!" + key)
    with pytest.raises(derp.DerpError, match="first frame"):
        derp.server_key(derp.FRAME_KEEP_ALIVE, derp.MAGIC + key)
    with pytest.raises(derp.DerpError, match="first frame"):
        derp.server_key(derp.FRAME_SERVER_KEY, derp.MAGIC + key[:31])


def test_client_info_names_our_key_and_opens_only_for_the_server():
    [(kind, payload)] = derp.FrameReader().feed(
        derp.client_info(bytes(NODE), bytes(SERVER.public_key))
    )
    assert kind == derp.FRAME_CLIENT_INFO
    assert payload[: derp.KEY_LEN] == bytes(NODE.public_key)
    opened = Box(SERVER, NODE.public_key).decrypt(payload[derp.KEY_LEN :])
    assert json.loads(opened) == {"version": derp.PROTOCOL_VERSION, "CanAckPings": True}


def test_server_info_opens_with_the_servers_key_and_a_forged_one_is_an_error():
    info = json.dumps({"version": 2, "TokenBucketBytesPerSecond": 5, "TokenBucketBytesBurst": 9})
    sealed = bytes(Box(SERVER, NODE.public_key).encrypt(info.encode()))
    assert parse(derp.FRAME_SERVER_INFO, sealed) == derp.ServerInfo(5, 9)
    forged = bytes(Box(PrivateKey.generate(), NODE.public_key).encrypt(info.encode()))
    with pytest.raises(derp.DerpError, match="does not open"):
        parse(derp.FRAME_SERVER_INFO, forged)
    with pytest.raises(derp.DerpError, match="short"):
        parse(derp.FRAME_SERVER_INFO, b"\x00" * 10)


def test_each_frame_from_the_server_becomes_its_message():
    assert parse(derp.FRAME_RECV_PACKET, PEER + b"data") == derp.ReceivedPacket(PEER, b"data")
    assert parse(derp.FRAME_KEEP_ALIVE, b"") == derp.KeepAlive()
    assert parse(derp.FRAME_PING, b"12345678") == derp.Ping(b"12345678")
    assert parse(derp.FRAME_PONG, b"12345678") == derp.Pong(b"12345678")
    assert parse(derp.FRAME_PEER_GONE, PEER + b"\x01") == derp.PeerGone(PEER, 1)
    assert parse(derp.FRAME_PEER_GONE, PEER) == derp.PeerGone(PEER, 0)
    assert parse(derp.FRAME_HEALTH, b"duplicate") == derp.Health("duplicate")
    assert parse(derp.FRAME_RESTARTING, struct.pack(">II", 500, 9000)) == derp.Restarting(500, 9000)


def test_short_and_unknown_frames_are_skipped():
    assert parse(derp.FRAME_RECV_PACKET, PEER[:31]) is None
    assert parse(derp.FRAME_PING, b"1234567") is None
    assert parse(derp.FRAME_PEER_GONE, b"") is None
    assert parse(derp.FRAME_RESTARTING, b"\x00" * 7) is None
    assert parse(0x7F, b"whatever") is None


def test_packets_over_the_limit_or_to_a_short_key_are_refused():
    with pytest.raises(ValueError, match="at most"):
        derp.send_packet(PEER, b"x" * (derp.MAX_PACKET_LEN + 1))
    with pytest.raises(ValueError, match="32-byte"):
        derp.send_packet(PEER[:16], b"x")


def test_a_pong_echoes_its_ping():
    assert derp.pong(derp.Ping(b"abcdefgh")) == derp.frame(derp.FRAME_PONG, b"abcdefgh")
