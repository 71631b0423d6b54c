"""Which disco messages arriving over DERP become allocations, and the answers to them.

A Tailscale client asks a peer relay for an endpoint with a disco
AllocateUDPRelayEndpointRequest (0x08) sent over DERP, sealed to the relay
node's disco key; the relay answers with an AllocateUDPRelayEndpointResponse
(0x09) echoing the request's generation. This module is the relay's side of
that exchange, sans I/O: :meth:`RequestGate.check` takes a DERP packet, the
node key DERP says sent it and what the netmap says of that node, and returns
either a :class:`Request` to allocate for or the :class:`Drop` reason to
count. Nothing is answered that the rules below do not admit.

Rules, as tailscale.com v1.102.5's magicsock applies them to a request
(wgengine/magicsock, handleDiscoMessage), plus a replay rule of our own:

1. The packet is a disco frame (magic, sender key, nonce, box).
2. DERP's source node is a peer in the netmap, and the frame's sender disco
   key is that peer's disco key in the netmap.
3. The box opens with our node disco key and the sender's, and holds a
   well-formed message of type 0x08 (version 0).
4. The sender is one of the two ClientDisco keys.
5. The netmap grants ``tailscale.com/cap/relay`` from that peer to us.
6. The frame's nonce has not been seen from that sender recently (a
   captured request sent again allocates nothing; the reference does not
   check this, and answers a replay as it answers the original).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from relay.protocol import disco
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey, sorted_pair

# How many (sender, nonce) pairs the replay rule remembers; the oldest go first.
REPLAY_MEMORY = 65536


class Drop(enum.StrEnum):
    """Why a packet from DERP did not become an allocation (a metric label)."""

    NOT_DISCO = "not_disco"
    UNKNOWN_PEER = "unknown_peer"
    DISCO_KEY_MISMATCH = "disco_key_mismatch"
    UNDECRYPTABLE = "undecryptable"
    MALFORMED = "malformed"
    NOT_A_REQUEST = "not_a_request"
    SENDER_NOT_A_CLIENT = "sender_not_a_client"
    NOT_GRANTED = "not_granted"
    REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class Peer:
    """What the netmap says of the node a DERP packet came from."""

    node_key: bytes
    disco_key: DiscoPublicKey
    granted: bool
    """Whether the control server grants ``tailscale.com/cap/relay`` from this peer to us."""


@dataclass(frozen=True, slots=True)
class Request:
    """An admitted request: allocate for ``clients`` and answer ``sender`` via ``node_key``."""

    node_key: bytes
    sender: DiscoPublicKey
    clients: tuple[DiscoPublicKey, DiscoPublicKey]
    generation: int


class RequestGate:
    """The rules above for one tailnet node, with the replay memory they need.

    Invariant: a :class:`Request` is returned only for a frame that passed
    every rule, and its nonce is remembered before it is returned.
    """

    def __init__(self, node_disco: DiscoPrivateKey, *, replay_memory: int = REPLAY_MEMORY) -> None:
        self.node_disco = node_disco
        self._replay_memory = replay_memory
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def check(self, node_key: bytes, packet: bytes, peer: Peer | None) -> Request | Drop:
        try:
            sender_raw = disco.frame_sender(packet)
        except disco.DiscoError:
            return Drop.NOT_DISCO
        if peer is None or peer.node_key != node_key:
            return Drop.UNKNOWN_PEER
        if peer.disco_key.raw != sender_raw:
            return Drop.DISCO_KEY_MISMATCH
        try:
            payload = disco.open_frame(packet, self.node_disco.shared(peer.disco_key))
        except disco.DiscoError:
            return Drop.UNDECRYPTABLE
        try:
            message = disco.parse(payload)
        except disco.DiscoError:
            return Drop.MALFORMED
        if not isinstance(message, disco.AllocateUDPRelayEndpointRequest):
            return Drop.NOT_A_REQUEST
        if sender_raw not in message.client_disco:
            return Drop.SENDER_NOT_A_CLIENT
        if not peer.granted:
            return Drop.NOT_GRANTED
        nonce_key = sender_raw + bytes(packet[disco.NONCE_OFFSET : disco.BOX_OFFSET])
        if nonce_key in self._seen:
            return Drop.REPLAYED
        self._seen[nonce_key] = None
        if len(self._seen) > self._replay_memory:
            self._seen.popitem(last=False)
        a, b = (DiscoPublicKey(raw) for raw in message.client_disco)
        return Request(node_key, peer.disco_key, sorted_pair((a, b)), message.generation)

    def answer(self, request: Request, endpoint: disco.UDPRelayEndpoint) -> bytes:
        """The sealed 0x09 for ``request``, to send over DERP to ``request.node_key``."""
        response = disco.AllocateUDPRelayEndpointResponse(request.generation, endpoint)
        shared = self.node_disco.shared(request.sender)
        return disco.seal(self.node_disco.public.raw, shared, response)
