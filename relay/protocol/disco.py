"""Disco frames: the sealed control messages inside Geneve control packets.

A frame is ``magic | sender public key | nonce | NaCl box``; the opened box
holds ``type | version | body``. Only the three bind messages matter to the
relay (docs/protocol.md "Control packets"). They come in two forms: version 0
with a 32-byte body, and version 1 (docs/protocol.md "Version 1"), whose
72-byte body carries the VNI, a handshake generation and the other client's
key; the body's length tells them apart. Everything here is pure bytes in,
bytes out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nacl import bindings
from nacl.exceptions import CryptoError

MAGIC = b"TS\xf0\x9f\x92\xac"
KEY_LEN = 32
NONCE_LEN = 24
TAG_LEN = 16
SENDER_OFFSET = len(MAGIC)
NONCE_OFFSET = SENDER_OFFSET + KEY_LEN
BOX_OFFSET = NONCE_OFFSET + NONCE_LEN
MIN_FRAME_LEN = BOX_OFFSET + TAG_LEN

MESSAGE_VERSION = 0
TYPE_BIND = 0x04
TYPE_CHALLENGE = 0x05
TYPE_ANSWER = 0x06
CHALLENGE_LEN = 32
BIND_PADDING_LEN = 32
V1_BODY_LEN = 4 + 4 + KEY_LEN + CHALLENGE_LEN
"""A version 1 bind body: VNI, generation, the other client's key, challenge."""
BIND_TYPES = (TYPE_BIND, TYPE_CHALLENGE, TYPE_ANSWER)


class DiscoError(ValueError):
    """A frame or message that cannot be read."""


@dataclass(frozen=True, slots=True)
class BindUDPRelayEndpoint:
    """A client asks to bind to an endpoint (type 0x04)."""


@dataclass(frozen=True, slots=True)
class BindUDPRelayEndpointChallenge:
    """The server's challenge to a client (type 0x05)."""

    challenge: bytes


@dataclass(frozen=True, slots=True)
class BindUDPRelayEndpointAnswer:
    """A client's echo of its challenge (type 0x06)."""

    answer: bytes


@dataclass(frozen=True, slots=True)
class BindV1:
    """One of the three bind messages in version 1 (``type``: 0x04, 0x05 or 0x06).

    ``vni`` must equal the Geneve header's; ``generation`` is the client's
    handshake, never 0; ``remote_key`` is the raw key of the endpoint's other
    client; ``challenge`` is padding in a bind, the server's MAC in a
    challenge, and its echo in an answer.
    """

    type: int
    vni: int
    generation: int
    remote_key: bytes
    challenge: bytes = bytes(CHALLENGE_LEN)


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A well-formed message of a type the relay does not act on (ping, pong, ...)."""

    type: int


Message = (
    BindUDPRelayEndpoint
    | BindUDPRelayEndpointChallenge
    | BindUDPRelayEndpointAnswer
    | BindV1
    | OtherMessage
)


def marshal(message: Message) -> bytes:
    """The plaintext payload of a message: type, version, body."""
    match message:
        case BindUDPRelayEndpoint():
            return bytes((TYPE_BIND, MESSAGE_VERSION)) + bytes(BIND_PADDING_LEN)
        case BindUDPRelayEndpointChallenge(challenge):
            return bytes((TYPE_CHALLENGE, MESSAGE_VERSION)) + _fixed(challenge)
        case BindUDPRelayEndpointAnswer(answer):
            return bytes((TYPE_ANSWER, MESSAGE_VERSION)) + _fixed(answer)
        case BindV1(kind, vni, generation, remote_key, challenge):
            if kind not in BIND_TYPES or len(remote_key) != KEY_LEN:
                raise ValueError("a version 1 bind message needs a bind type and a 32-byte key")
            return (
                bytes((kind, MESSAGE_VERSION))
                + vni.to_bytes(4, "big")
                + generation.to_bytes(4, "big")
                + bytes(remote_key)
                + _fixed(challenge)
            )
    raise TypeError(f"cannot marshal {message!r}")


def _fixed(value: bytes) -> bytes:
    if len(value) != CHALLENGE_LEN:
        raise ValueError(f"challenge and answer are {CHALLENGE_LEN} bytes")
    return bytes(value)


def parse(payload: bytes) -> Message:
    """Parse an opened payload; trailing bytes are ignored, a short body is an error.

    A bind message whose body has :data:`V1_BODY_LEN` bytes or more is version 1.
    """
    if len(payload) < 2:
        raise DiscoError("message shorter than its type and version")
    kind, body = payload[0], payload[2:]
    if kind in BIND_TYPES and len(body) >= V1_BODY_LEN:
        return BindV1(
            kind,
            int.from_bytes(body[0:4], "big"),
            int.from_bytes(body[4:8], "big"),
            bytes(body[8:40]),
            bytes(body[40:72]),
        )
    if kind == TYPE_BIND:
        return BindUDPRelayEndpoint()
    if kind in (TYPE_CHALLENGE, TYPE_ANSWER):
        if len(body) < CHALLENGE_LEN:
            raise DiscoError(f"message type {kind:#x} needs a {CHALLENGE_LEN}-byte body")
        value = bytes(body[:CHALLENGE_LEN])
        if kind == TYPE_CHALLENGE:
            return BindUDPRelayEndpointChallenge(value)
        return BindUDPRelayEndpointAnswer(value)
    return OtherMessage(kind)


def body_len(frame_len: int) -> int:
    """The body length of the message in a frame of ``frame_len`` bytes, known before
    opening the box (a box adds exactly its tag); negative for a frame too short."""
    return frame_len - MIN_FRAME_LEN - 2


def seal(sender: bytes, shared_key: bytes, message: Message, nonce: bytes | None = None) -> bytes:
    """A whole frame from ``sender`` (raw public key), boxed with a precomputed key."""
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    box = bindings.crypto_box_afternm(marshal(message), nonce, shared_key)
    return MAGIC + sender + nonce + box


def frame_sender(frame: bytes) -> bytes:
    """The sender's raw public key; a short frame or a wrong magic raises DiscoError."""
    if len(frame) < MIN_FRAME_LEN:
        raise DiscoError("frame shorter than magic, key, nonce and tag")
    if frame[:SENDER_OFFSET] != MAGIC:
        raise DiscoError("frame does not start with the disco magic")
    return bytes(frame[SENDER_OFFSET:NONCE_OFFSET])


def open_frame(frame: bytes, shared_key: bytes) -> bytes:
    """The opened payload of a frame; a box that does not open raises DiscoError."""
    try:
        return bindings.crypto_box_open_afternm(
            bytes(frame[BOX_OFFSET:]), bytes(frame[NONCE_OFFSET:BOX_OFFSET]), shared_key
        )
    except CryptoError as exc:
        raise DiscoError("box does not open with the sender's key") from exc
