"""Disco frames: the sealed control messages inside Geneve control packets.

A frame is ``magic | sender public key | nonce | NaCl box``; the opened box
holds ``type | version | body``. Only the three bind messages matter to the
relay (docs/protocol.md "Control packets"). They come in two forms: version 0
with a 32-byte body, and version 1 (docs/protocol.md "Version 1"), whose
72-byte body carries the VNI, a handshake generation and the other client's
key; the body's length tells them apart. The relay acts on nothing else, but
clients also speak the three messages of allocation over disco (docs/protocol.md
"Version 1: allocation over disco"): 0x07 CallMeMaybeVia, 0x08
AllocateUDPRelayEndpointRequest and 0x09 AllocateUDPRelayEndpointResponse, read
and written here as the reference at tailscale.com v1.102.5 does
(tests/conformance/test_disco_codec.py checks that byte for byte). Everything
here is pure bytes in, bytes out.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

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
TYPE_CALL_ME_MAYBE_VIA = 0x07
TYPE_ALLOCATE_REQUEST = 0x08
TYPE_ALLOCATE_RESPONSE = 0x09
ALLOCATION_TYPES = (TYPE_CALL_ME_MAYBE_VIA, TYPE_ALLOCATE_REQUEST, TYPE_ALLOCATE_RESPONSE)
ALLOCATE_REQUEST_LEN = 2 * KEY_LEN + 4
"""An allocation request body: both clients' keys and a generation."""
ENDPOINT_FIXED_LEN = 3 * KEY_LEN + 8 + 4 + 8 + 8
"""An endpoint before its addresses: server key, client keys, LamportID, VNI, two lifetimes."""
ADDR_PORT_LEN = 16 + 2
"""One address: 16 bytes of IPv6 (IPv4 mapped into it) and a port."""
_BIND_V1 = struct.Struct(f">BBII{KEY_LEN}s{CHALLENGE_LEN}s")
"""A version 1 bind message's payload: type, version, VNI, generation, key, challenge."""


_nonce_prefix: bytes
_nonce_counter: Iterator[int]


def _fresh_nonces() -> None:
    global _nonce_prefix, _nonce_counter
    _nonce_prefix = os.urandom(NONCE_LEN - 8)
    _nonce_counter = itertools.count()


_fresh_nonces()
os.register_at_fork(after_in_child=_fresh_nonces)


def new_nonce() -> bytes:
    """A box nonce never used before: a random 16-byte prefix per process (drawn again in
    a forked child) and a 64-bit counter. A box key must never see a nonce twice, and
    the relay's processes share its key; any unique nonce will do, and this one needs no
    system call (os.urandom per box took 0.8 µs, this 0.15)."""
    return _nonce_prefix + next(_nonce_counter).to_bytes(8, "big")


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


class BindV1(NamedTuple):
    """One of the three bind messages in version 1 (``type``: 0x04, 0x05 or 0x06).

    ``vni`` must equal the Geneve header's; ``generation`` is the client's
    handshake, never 0; ``remote_key`` is the raw key of the endpoint's other
    client; ``challenge`` is padding in a bind, the server's MAC in a
    challenge, and its echo in an answer.

    A named tuple rather than a frozen dataclass like the other messages: the
    relay parses one per handshake message, and a tuple is made in 0.3 µs
    where the dataclass took 0.9.
    """

    type: int
    vni: int
    generation: int
    remote_key: bytes
    challenge: bytes = bytes(CHALLENGE_LEN)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddrPort = tuple[IPAddress, int]


@dataclass(frozen=True, slots=True)
class UDPRelayEndpoint:
    """An allocated endpoint as 0x07 and 0x09 carry it: the binary form of the
    allocation answer (relay.protocol.server_endpoint.ServerEndpoint is its JSON form).

    Keys are raw, ``client_disco`` in key order; lifetimes are Go durations in
    integer nanoseconds (signed 64 bits); ``vni`` is 32 bits on this wire. There
    is at least one address, an IPv4 one as IPv4 (a mapped IPv6 form reads back as
    IPv4, so marshal refuses it).
    """

    server_disco: bytes
    client_disco: tuple[bytes, bytes]
    lamport_id: int
    vni: int
    bind_lifetime_ns: int
    steady_state_lifetime_ns: int
    addr_ports: tuple[AddrPort, ...]


@dataclass(frozen=True, slots=True)
class CallMeMaybeVia:
    """A client tells its peer of an endpoint to meet it at (type 0x07)."""

    endpoint: UDPRelayEndpoint


@dataclass(frozen=True, slots=True)
class AllocateUDPRelayEndpointRequest:
    """A client asks a relay for an endpoint for two clients (type 0x08); the relay
    echoes ``generation`` in its response."""

    client_disco: tuple[bytes, bytes]
    generation: int


@dataclass(frozen=True, slots=True)
class AllocateUDPRelayEndpointResponse:
    """A relay's answer to an allocation request of ``generation`` (type 0x09)."""

    generation: int
    endpoint: UDPRelayEndpoint


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A well-formed message of a type the relay does not act on (ping, pong, ...), or an
    allocation message of a version other than 0, whose fields the reference does not read."""

    type: int


Message = (
    BindUDPRelayEndpoint
    | BindUDPRelayEndpointChallenge
    | BindUDPRelayEndpointAnswer
    | BindV1
    | CallMeMaybeVia
    | AllocateUDPRelayEndpointRequest
    | AllocateUDPRelayEndpointResponse
    | OtherMessage
)


def marshal(message: Message) -> bytes:
    """The plaintext payload of a message: type, version, body."""
    if type(message) is BindV1:  # every version 1 handshake's, so the first looked for
        return bind_v1_payload(
            message.type, message.vni, message.generation, message.remote_key, message.challenge
        )
    match message:
        case BindUDPRelayEndpoint():
            return bytes((TYPE_BIND, MESSAGE_VERSION)) + bytes(BIND_PADDING_LEN)
        case BindUDPRelayEndpointChallenge(challenge):
            return bytes((TYPE_CHALLENGE, MESSAGE_VERSION)) + _fixed(challenge)
        case BindUDPRelayEndpointAnswer(answer):
            return bytes((TYPE_ANSWER, MESSAGE_VERSION)) + _fixed(answer)
        case CallMeMaybeVia(endpoint):
            return bytes((TYPE_CALL_ME_MAYBE_VIA, MESSAGE_VERSION)) + _endpoint_bytes(endpoint)
        case AllocateUDPRelayEndpointRequest(client_disco, generation):
            return (
                bytes((TYPE_ALLOCATE_REQUEST, MESSAGE_VERSION))
                + _key_pair(client_disco)
                + _uint(generation, 4, "generation")
            )
        case AllocateUDPRelayEndpointResponse(generation, endpoint):
            return (
                bytes((TYPE_ALLOCATE_RESPONSE, MESSAGE_VERSION))
                + _uint(generation, 4, "generation")
                + _endpoint_bytes(endpoint)
            )
    raise TypeError(f"cannot marshal {message!r}")


def bind_v1_payload(
    kind: int, vni: int, generation: int, remote_key: bytes, challenge: bytes
) -> bytes:
    """The payload of a version 1 bind message of type ``kind``, as :func:`marshal` writes
    it, without making a :class:`BindV1` first (the relay writes one per challenge).
    Fields that do not fit raise ValueError."""
    if kind not in BIND_TYPES or len(remote_key) != KEY_LEN:
        raise ValueError("a version 1 bind message needs a bind type and a 32-byte key")
    try:
        return _BIND_V1.pack(kind, MESSAGE_VERSION, vni, generation, remote_key, _fixed(challenge))
    except struct.error:
        raise ValueError("a version 1 bind's VNI and generation are 32-bit unsigned") from None


def _fixed(value: bytes) -> bytes:
    if len(value) != CHALLENGE_LEN:
        raise ValueError(f"challenge and answer are {CHALLENGE_LEN} bytes")
    return bytes(value)


def _uint(value: int, size: int, name: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{name} {value} does not fit in {8 * size} unsigned bits")
    return value.to_bytes(size, "big")


def _duration(value: int, name: str) -> bytes:
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"{name} {value} ns does not fit in a Go duration")
    return value.to_bytes(8, "big", signed=True)


def _key(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_LEN:
        raise ValueError(f"a disco key is {KEY_LEN} raw bytes")
    return value


def _key_pair(keys: tuple[bytes, bytes]) -> bytes:
    if len(keys) != 2:
        raise ValueError("client_disco holds two keys")
    return _key(keys[0]) + _key(keys[1])


def _addr_port_bytes(addr_port: AddrPort) -> bytes:
    ip, port = addr_port
    if isinstance(ip, ipaddress.IPv4Address):
        packed = bytes(10) + b"\xff\xff" + ip.packed
    elif isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None and not ip.scope_id:
        packed = ip.packed
    else:
        raise ValueError(f"{ip!r}: want an IPv4Address, or an IPv6Address not mapped nor scoped")
    return packed + _uint(port, 2, "port")


def _endpoint_bytes(endpoint: UDPRelayEndpoint) -> bytes:
    if not endpoint.addr_ports:
        raise ValueError("an endpoint has at least one address")
    return b"".join(
        (
            _key(endpoint.server_disco),
            _key_pair(endpoint.client_disco),
            _uint(endpoint.lamport_id, 8, "lamport_id"),
            _uint(endpoint.vni, 4, "vni"),
            _duration(endpoint.bind_lifetime_ns, "bind_lifetime_ns"),
            _duration(endpoint.steady_state_lifetime_ns, "steady_state_lifetime_ns"),
            *map(_addr_port_bytes, endpoint.addr_ports),
        )
    )


def parse(payload: bytes) -> Message:
    """Parse an opened payload; a short body is an error.

    A bind message whose body has :data:`V1_BODY_LEN` bytes or more is version 1.
    Trailing bytes are ignored, except after an endpoint (0x07, 0x09), whose
    addresses run to the end of the body: there they must be whole addresses.
    """
    if len(payload) < 2:
        raise DiscoError("message shorter than its type and version")
    kind = payload[0]
    if kind in BIND_TYPES and len(payload) >= _BIND_V1.size:
        kind, _, vni, generation, remote_key, challenge = _BIND_V1.unpack_from(payload)
        return BindV1(kind, vni, generation, remote_key, challenge)
    body = payload[2:]
    if kind == TYPE_BIND:
        return BindUDPRelayEndpoint()
    if kind in (TYPE_CHALLENGE, TYPE_ANSWER):
        if len(body) < CHALLENGE_LEN:
            raise DiscoError(f"message type {kind:#x} needs a {CHALLENGE_LEN}-byte body")
        value = bytes(body[:CHALLENGE_LEN])
        if kind == TYPE_CHALLENGE:
            return BindUDPRelayEndpointChallenge(value)
        return BindUDPRelayEndpointAnswer(value)
    if kind in ALLOCATION_TYPES and payload[1] == MESSAGE_VERSION:
        return _parse_allocation(kind, bytes(body))
    return OtherMessage(kind)


def _parse_allocation(kind: int, body: bytes) -> Message:
    if kind == TYPE_CALL_ME_MAYBE_VIA:
        return CallMeMaybeVia(_parse_endpoint(body))
    if kind == TYPE_ALLOCATE_REQUEST:
        if len(body) < ALLOCATE_REQUEST_LEN:
            raise DiscoError(f"an allocation request needs a {ALLOCATE_REQUEST_LEN}-byte body")
        generation = int.from_bytes(body[2 * KEY_LEN : ALLOCATE_REQUEST_LEN], "big")
        return AllocateUDPRelayEndpointRequest(_keys(body[: 2 * KEY_LEN]), generation)
    if len(body) < 4:
        raise DiscoError("an allocation response needs its generation")
    return AllocateUDPRelayEndpointResponse(
        int.from_bytes(body[:4], "big"), _parse_endpoint(body[4:])
    )


def _keys(raw: bytes) -> tuple[bytes, bytes]:
    return raw[:KEY_LEN], raw[KEY_LEN : 2 * KEY_LEN]


def _parse_endpoint(body: bytes) -> UDPRelayEndpoint:
    addresses = len(body) - ENDPOINT_FIXED_LEN
    if addresses < ADDR_PORT_LEN or addresses % ADDR_PORT_LEN:
        raise DiscoError(
            f"an endpoint is {ENDPOINT_FIXED_LEN} bytes and one or more "
            f"{ADDR_PORT_LEN}-byte addresses, not {len(body)} bytes"
        )
    return UDPRelayEndpoint(
        server_disco=body[:KEY_LEN],
        client_disco=_keys(body[KEY_LEN : 3 * KEY_LEN]),
        lamport_id=int.from_bytes(body[96:104], "big"),
        vni=int.from_bytes(body[104:108], "big"),
        bind_lifetime_ns=int.from_bytes(body[108:116], "big", signed=True),
        steady_state_lifetime_ns=int.from_bytes(body[116:124], "big", signed=True),
        addr_ports=tuple(
            _parse_addr_port(body[at : at + ADDR_PORT_LEN])
            for at in range(ENDPOINT_FIXED_LEN, len(body), ADDR_PORT_LEN)
        ),
    )


def _parse_addr_port(raw: bytes) -> AddrPort:
    ip = ipaddress.IPv6Address(raw[:16])
    return (ip.ipv4_mapped or ip), int.from_bytes(raw[16:18], "big")


def body_len(frame_len: int) -> int:
    """The body length of the message in a frame of ``frame_len`` bytes, known before
    opening the box (a box adds exactly its tag); negative for a frame too short."""
    return frame_len - MIN_FRAME_LEN - 2


def seal(sender: bytes, shared_key: bytes, message: Message, nonce: bytes | None = None) -> bytes:
    """A whole frame from ``sender`` (raw public key), boxed with a precomputed key."""
    return seal_payload(sender, shared_key, marshal(message), nonce)


def seal_payload(
    sender: bytes, shared_key: bytes, payload: bytes, nonce: bytes | None = None
) -> bytes:
    """:func:`seal` of a payload already marshalled (:func:`bind_v1_payload`)."""
    if nonce is None:
        nonce = new_nonce()
    box = bindings.crypto_box_afternm(payload, nonce, shared_key)
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
