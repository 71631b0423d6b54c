"""What an allocation is: the relay's half of an endpoint, and the protocol's default lifetimes.

The core installs allocations and the stores keep them; both take this one
value type from here, so the core needs nothing from the store (docs/protocol.md
"Allocation").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.protocol.keys import DiscoPublicKey

DEFAULT_BIND_LIFETIME = 30.0
DEFAULT_STEADY_STATE_LIFETIME = 300.0


@dataclass(frozen=True, slots=True)
class Allocation:
    """One endpoint of one relay: the allocation half of the protocol's ServerEndpoint."""

    relay: str
    vni: int
    lamport_id: int
    disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]
    allocated_at: float
    bound: bool = False

    def as_bound(self) -> Allocation:
        return replace(self, bound=True)
