"""The client side of docs/protocol.md, sans-I/O: what a peer sends to bind and relay.

The demo and the test suite use it; it builds datagrams and reads replies, and
leaves sockets to its caller. It speaks protocol version 1, as current clients
do, or version 0 when asked (docs/protocol.md "Version 1"). It is checked
against the reference's own Go client in the conformance tests, so it cannot
hide a misreading of the protocol.
"""

from __future__ import annotations

import random

from relay.protocol import disco, geneve
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey

PROTOCOLS = (0, 1)
_GENERATIONS = 2**32 - 1
"""Generations run 1..2**32-1: never 0, which a version 1 relay refuses."""


class RelayClient:
    """One client of one relay endpoint.

    In version 1 (the default) :meth:`bind` needs ``remote_key``, the endpoint's
    other client, which its binds name; ``generation`` is its last bind's (0
    before the first). ``protocol=0`` makes a version 0 client.
    """

    def __init__(
        self,
        private_key: DiscoPrivateKey,
        server_key: DiscoPublicKey,
        vni: int,
        remote_key: DiscoPublicKey | None = None,
        protocol: int = 1,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol version {protocol!r}: relays speak 0 and 1")
        self.private_key = private_key
        self.public_key = private_key.public
        self.server_key = server_key
        self.vni = vni
        self.remote_key = remote_key
        self.protocol = protocol
        self.generation = 0
        self._handshakes = random.randrange(_GENERATIONS)
        self._shared = private_key.shared(server_key)

    def control(self, message: disco.Message) -> bytes:
        """A sealed control datagram carrying ``message`` to the server."""
        frame = disco.seal(self.public_key.raw, self._shared, message)
        return geneve.control_header(self.vni) + frame

    def bind(self) -> bytes:
        """A bind in the client's version; in version 1 each starts a handshake of a new
        generation."""
        if self.protocol == 0:
            return self.control(disco.BindUDPRelayEndpoint())
        if self.remote_key is None:
            raise ValueError("a version 1 bind needs the other client's key (remote_key)")
        self._handshakes += 1
        self.generation = self._handshakes % _GENERATIONS + 1
        return self.bind_v1(self.remote_key, self.generation)

    def bind_v1(self, remote_key: DiscoPublicKey, generation: int) -> bytes:
        """A version 1 bind: ``remote_key`` is the endpoint's other client, ``generation``
        this handshake's number (new and non-zero for each)."""
        return self.control(disco.BindV1(disco.TYPE_BIND, self.vni, generation, remote_key.raw))

    def read_control(self, datagram: bytes) -> disco.Message:
        """Open a control datagram from the server; raises ValueError if it is not one."""
        header = geneve.decode(datagram)
        if not header.control or header.protocol != geneve.PROTOCOL_DISCO:
            raise ValueError("not a disco control packet")
        if header.vni != self.vni:
            raise ValueError(f"control packet for VNI {header.vni}, expected {self.vni}")
        frame = datagram[geneve.HEADER_LEN :]
        if disco.frame_sender(frame) != self.server_key.raw:
            raise ValueError("control packet not sent by the server's disco key")
        return disco.parse(disco.open_frame(frame, self._shared))

    def answer(self, challenge_datagram: bytes) -> bytes:
        """The answer datagram for the server's challenge datagram, in its version."""
        message = self.read_control(challenge_datagram)
        if isinstance(message, disco.BindV1) and message.type == disco.TYPE_CHALLENGE:
            fields = (message.vni, message.generation, message.remote_key, message.challenge)
            return self.control(disco.BindV1(disco.TYPE_ANSWER, *fields))
        if not isinstance(message, disco.BindUDPRelayEndpointChallenge):
            raise ValueError(f"expected a challenge, got {message!r}")
        return self.control(disco.BindUDPRelayEndpointAnswer(message.challenge))

    def data(self, payload: bytes) -> bytes:
        return geneve.data_header(self.vni) + payload

    def read_data(self, datagram: bytes) -> bytes:
        """The payload of a relayed data datagram; raises ValueError if it is not one."""
        header = geneve.decode(datagram)
        if header.control or header.vni != self.vni:
            raise ValueError("not a data packet of this endpoint")
        return datagram[geneve.HEADER_LEN :]
