"""The relay's door for tailnet peers: allocation requests over DERP, answered with endpoints.

Tailscale clients ask a peer relay for an endpoint with disco 0x08 over DERP
(issue 18). This module reads the relay node's DERP connection, lets
:class:`relay.tailnet.allocation_requests.RequestGate` judge each packet,
allocates what it admits through the same call as the relay's other doors
(``allocate``: in a relay process, ``RelayServer.allocate``, with its store,
rate limits and per-pair cap) and sends the sealed 0x09 back to the asking
node. Every packet that is not answered is counted, by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from relay.protocol.keys import DiscoPublicKey
from relay.protocol.server_endpoint import ServerEndpoint
from relay.shells.api import InvalidRequest, ServerClosed
from relay.shells.api_limits import TooManyRequests
from relay.store.interface import StoreUnavailable
from relay.tailnet import derp
from relay.tailnet.allocation_requests import Drop, Peer, RequestGate
from relay.tailnet.derp_client import DerpConnection

Allocate = Callable[[DiscoPublicKey, DiscoPublicKey], Awaitable[ServerEndpoint]]
PeerLookup = Callable[[bytes], Peer | None]
"""What the netmap says of a node key (None: not a peer)."""

# What ``allocate`` may refuse with; anything else is a bug and ends serve().
REFUSALS: tuple[type[Exception], ...] = (
    InvalidRequest,
    ServerClosed,
    TooManyRequests,
    StoreUnavailable,
)


class PeerRelayDoor:
    """Answers allocation requests arriving on one DERP connection, and counts the rest."""

    def __init__(self, gate: RequestGate, peers: PeerLookup, allocate: Allocate) -> None:
        self.gate = gate
        self.peers = peers
        self.allocate = allocate
        self.answered = 0
        self.drops: Counter[Drop] = Counter()
        self.refused: Counter[str] = Counter()
        """Admitted requests that ``allocate`` refused, by the refusal's class name."""

    async def serve(self, connection: DerpConnection) -> None:
        """Until the connection breaks (its error propagates): handle every packet."""
        while True:
            message = await connection.receive()
            if isinstance(message, derp.ReceivedPacket):
                await self.handle(connection, message)

    async def handle(self, connection: DerpConnection, packet: derp.ReceivedPacket) -> None:
        verdict = self.gate.check(packet.source, packet.data, self.peers(packet.source))
        if isinstance(verdict, Drop):
            self.drops[verdict] += 1
            return
        try:
            endpoint = await self.allocate(*verdict.clients)
        except REFUSALS as exc:
            self.refused[type(exc).__name__] += 1
            return
        connection.send(packet.source, self.gate.answer(verdict, endpoint.to_disco()))
        await connection.drain()
        self.answered += 1
