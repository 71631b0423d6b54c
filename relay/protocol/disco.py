"""Disco frames: the sealed control messages inside Geneve control packets.

A frame is ``magic | sender public key | nonce | NaCl box``; the opened box
holds ``type | version | body``. Only the three bind messages matter to the
relay (docs/protocol.md "Control packets"); everything here is pure bytes in,
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
class OtherMessage:
    """A well-formed message of a type the relay does not act on (ping, pong, ...)."""

    type: int


Message = (
    BindUDPRelayEndpoint | BindUDPRelayEndpointChallenge | BindUDPRelayEndpointAnswer | OtherMessage
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
    raise TypeError(f"cannot marshal {message!r}")


def _fixed(value: bytes) -> bytes:
    if len(value) != CHALLENGE_LEN:
        raise ValueError(f"challenge and answer are {CHALLENGE_LEN} bytes")
    return bytes(value)


def parse(payload: bytes) -> Message:
    """Parse an opened payload; trailing bytes are ignored, a short body is an error."""
    if len(payload) < 2:
        raise DiscoError("message shorter than its type and version")
    kind, body = payload[0], payload[2:]
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
