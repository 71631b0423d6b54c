"""DERP, the relay of last resort that tailnet nodes reach each other through, as bytes.

A Tailscale client asks a peer relay for an endpoint with a disco message
sent over DERP (issue 18), so a relay that serves a tailnet must hold a DERP
connection to its home region. This module is the wire format of that
connection, sans I/O like :mod:`relay.protocol`: it turns bytes into frames
and frames into messages, and builds the frames a client sends.
:mod:`relay.tailnet.derp_client` moves them over a socket.

The stream, after an HTTP upgrade: the server sends its key (``ServerKey``),
the client proves its node key (``ClientInfo``: a NaCl box to the server's
key), the server answers with ``ServerInfo``; then packets, keep-alives and
pings in both directions. Every frame is a type byte, a big-endian uint32
length and that many bytes. Frames of a type this module does not know are
skipped, as the reference client skips them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

MAGIC = "DERP🔑".encode()
KEY_LEN = 32
NONCE_LEN = 24
HEADER = struct.Struct(">BI")
PROTOCOL_VERSION = 2
MAX_PACKET_LEN = 64 << 10
# A frame longer than this closes the connection (the reference client's limit).
MAX_FRAME_LEN = 1 << 20
PING_LEN = 8

FRAME_SERVER_KEY = 0x01
FRAME_CLIENT_INFO = 0x02
FRAME_SERVER_INFO = 0x03
FRAME_SEND_PACKET = 0x04
FRAME_RECV_PACKET = 0x05
FRAME_KEEP_ALIVE = 0x06
FRAME_NOTE_PREFERRED = 0x07
FRAME_PEER_GONE = 0x08
FRAME_PING = 0x12
FRAME_PONG = 0x13
FRAME_HEALTH = 0x14
FRAME_RESTARTING = 0x15


class DerpError(ValueError):
    """The server sent what the protocol does not allow; the connection is no good."""


@dataclass(frozen=True, slots=True)
class ReceivedPacket:
    source: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerGone:
    peer: bytes
    reason: int


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class ServerInfo:
    bytes_per_second: int
    bytes_burst: int


@dataclass(frozen=True, slots=True)
class Health:
    problem: str


@dataclass(frozen=True, slots=True)
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int


Message = ReceivedPacket | PeerGone | Ping | Pong | KeepAlive | ServerInfo | Health | Restarting


class FrameReader:
    """Bytes from the stream in, whole ``(type, payload)`` frames out.

    Invariant: ``_buffer`` never holds a whole frame after :meth:`feed`
    returns; a frame header announcing more than ``MAX_FRAME_LEN`` raises.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME_LEN:
                raise DerpError(f"frame of {length} bytes (at most {MAX_FRAME_LEN})")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames


def node_public(node_private: bytes) -> bytes:
    """The node key that a private key logs in as (X25519)."""
    return bytes(PrivateKey(node_private).public_key)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def server_key(kind: int, payload: bytes) -> bytes:
    """The server's public key from its first frame (longer greetings are allowed)."""
    if kind != FRAME_SERVER_KEY or len(payload) < len(MAGIC) + KEY_LEN:
        raise DerpError("the server's first frame is not its key")
    if payload[: len(MAGIC)] != MAGIC:
        raise DerpError("the server's greeting lacks the DERP magic")
    return payload[len(MAGIC) : len(MAGIC) + KEY_LEN]


def client_info(node_private: bytes, server_public: bytes, *, can_ack_pings: bool = True) -> bytes:
    """The ``ClientInfo`` frame: our node key and a box to the server that proves we hold it."""
    private = PrivateKey(node_private)
    info = json.dumps({"version": PROTOCOL_VERSION, "CanAckPings": can_ack_pings}).encode()
    sealed = Box(private, PublicKey(server_public)).encrypt(info)
    return frame(FRAME_CLIENT_INFO, bytes(private.public_key) + bytes(sealed))


def send_packet(destination: bytes, packet: bytes) -> bytes:
    if len(destination) != KEY_LEN:
        raise ValueError("a destination is a 32-byte node key")
    if len(packet) > MAX_PACKET_LEN:
        raise ValueError(f"a packet of {len(packet)} bytes (at most {MAX_PACKET_LEN})")
    return frame(FRAME_SEND_PACKET, destination + packet)


def pong(ping: Ping) -> bytes:
    return frame(FRAME_PONG, ping.data)


def note_preferred(preferred: bool) -> bytes:
    return frame(FRAME_NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def parse(
    kind: int, payload: bytes, *, node_private: bytes, server_public: bytes
) -> Message | None:
    """One frame from the server as a message; None for a frame to skip.

    A short frame of a known type is skipped too (the reference logs and
    skips it); a ``ServerInfo`` that does not open is an error, since it
    means the server is not who it said it was.
    """
    if kind == FRAME_RECV_PACKET:
        if len(payload) < KEY_LEN:
            return None
        return ReceivedPacket(payload[:KEY_LEN], payload[KEY_LEN:])
    if kind == FRAME_KEEP_ALIVE:
        return KeepAlive()
    if kind == FRAME_PING:
        return Ping(payload[:PING_LEN]) if len(payload) >= PING_LEN else None
    if kind == FRAME_PONG:
        return Pong(payload[:PING_LEN]) if len(payload) >= PING_LEN else None
    if kind == FRAME_PEER_GONE:
        if len(payload) < KEY_LEN:
            return None
        return PeerGone(payload[:KEY_LEN], payload[KEY_LEN] if len(payload) > KEY_LEN else 0)
    if kind == FRAME_SERVER_INFO:
        return _server_info(payload, node_private, server_public)
    if kind == FRAME_HEALTH:
        return Health(payload.decode(errors="replace"))
    if kind == FRAME_RESTARTING:
        if len(payload) < 8:
            return None
        reconnect_in, try_for = struct.unpack_from(">II", payload)
        return Restarting(reconnect_in, try_for)
    return None


def _server_info(payload: bytes, node_private: bytes, server_public: bytes) -> ServerInfo:
    if len(payload) < NONCE_LEN:
        raise DerpError("short ServerInfo frame")
    box = Box(PrivateKey(node_private), PublicKey(server_public))
    try:
        opened = box.decrypt(payload)
        info = json.loads(opened)
    except (CryptoError, ValueError) as exc:
        raise DerpError(f"ServerInfo does not open with the server's key: {exc}") from exc
    if not isinstance(info, dict):
        raise DerpError("ServerInfo is not a JSON object")
    return ServerInfo(
        int(info.get("TokenBucketBytesPerSecond") or 0),
        int(info.get("TokenBucketBytesBurst") or 0),
    )
