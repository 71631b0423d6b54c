"""A relay core with a fake clock and two clients per endpoint, for instant protocol tests.

Addresses are TEST-NET-1 tuples: the core only compares them, nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.protocol.client import RelayClient
from relay.protocol.core import RelayCore, Send
from relay.protocol.keys import DiscoPrivateKey, raw_pair
from relay.protocol.ratelimit import DEFAULT_HANDSHAKE_LIMITS, HandshakeLimits
from relay.shells.keyfile import RelaySecrets
from relay.store import Allocation

A_ADDR = ("192.0.2.1", 40001)
B_ADDR = ("192.0.2.2", 40002)
STRANGER_ADDR = ("192.0.2.3", 40003)


@dataclass
class Pair:
    allocation: Allocation
    a: RelayClient
    b: RelayClient

    @property
    def clients(self) -> tuple[RelayClient, RelayClient]:
        return self.a, self.b


class CoreHarness:
    def __init__(
        self,
        bind_lifetime: float = 30.0,
        steady_state_lifetime: float = 300.0,
        handshake_limits: HandshakeLimits = DEFAULT_HANDSHAKE_LIMITS,
    ) -> None:
        self.secrets = RelaySecrets.generate()
        self.core = RelayCore(
            self.secrets.private_key,
            self.secrets.challenge_secret,
            bind_lifetime,
            steady_state_lifetime,
            handshake_limits,
        )
        self.now = 1_000_000.0

    def allocate(self, vni: int = 1, lamport_id: int = 1) -> Pair:
        """Install an endpoint; client ``a`` has index 0 (the lower key), ``b`` index 1."""
        keys = sorted(
            (DiscoPrivateKey.generate(), DiscoPrivateKey.generate()), key=lambda k: k.public.raw
        )
        raw_keys = raw_pair((keys[0].public, keys[1].public))
        allocation = Allocation("relay", vni, lamport_id, raw_keys, self.now)
        self.core.install(allocation)
        server = self.core.server_key
        return Pair(
            allocation,
            RelayClient(keys[0], server, vni, protocol=0),
            RelayClient(keys[1], server, vni, protocol=0),
        )

    def send(self, datagram: bytes, source) -> Send | None:
        return self.core.handle(datagram, source, self.now)

    def challenge_for(self, client: RelayClient, source) -> bytes:
        reply = self.send(client.bind(), source)
        assert reply is not None, "bind got no challenge"
        return reply[0]

    def bind(self, client: RelayClient, source) -> None:
        assert self.send(client.answer(self.challenge_for(client, source)), source) is None

    def bind_pair(self, pair: Pair, a_addr=A_ADDR, b_addr=B_ADDR) -> None:
        self.bind(pair.a, a_addr)
        self.bind(pair.b, b_addr)
        assert self.core.endpoint(pair.allocation.vni).bound

    def drops(self) -> dict[str, int]:
        return {reason.value: n for reason, n in self.core.drops.items() if n}

    def snapshot(self):
        """Everything about every endpoint that a packet could change."""
        return {
            e.allocation.vni: (
                tuple(c.handshake for c in e.clients),
                tuple(c.addr for c in e.clients),
                tuple(c.last_seen for c in e.clients),
                tuple(c.packets for c in e.clients),
                tuple(c.bytes for c in e.clients),
                e.bound,
            )
            for e in self.core.endpoints()
        }


def assert_same_state(core: RelayCore, other: RelayCore, vnis) -> None:
    """``core`` counted, dropped and bound as ``other`` did, on the endpoints ``vnis``."""
    assert core.drops == other.drops
    assert (core.forwarded_packets, core.forwarded_bytes) == (
        other.forwarded_packets,
        other.forwarded_bytes,
    )
    assert core.handshakes_completed == other.handshakes_completed
    for vni in vnis:
        mine, theirs = core.endpoint(vni), other.endpoint(vni)
        assert mine.bound == theirs.bound
        for m, t in zip(mine.clients, theirs.clients, strict=True):
            assert (m.packets, m.bytes, m.last_seen, m.addr, m.handshake) == (
                t.packets,
                t.bytes,
                t.last_seen,
                t.addr,
                t.handshake,
            )
