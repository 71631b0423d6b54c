"""What an allocation is: the relay's half of an endpoint, and the protocol's default lifetimes.

The core installs allocations and the stores keep them; both take this one
value type from here, so the core needs nothing from the store (docs/protocol.md
"Allocation").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.protocol.keys import KEY_LEN, DiscoPublicKey

DEFAULT_BIND_LIFETIME = 30.0
DEFAULT_STEADY_STATE_LIFETIME = 300.0


@dataclass(frozen=True, slots=True)
class Allocation:
    """One endpoint of one relay: the allocation half of the protocol's ServerEndpoint."""

    relay: str
    vni: int
    lamport_id: int
    raw_keys: bytes
    """The two clients' disco keys, 32 raw bytes each, in raw-byte order
    (:func:`relay.protocol.keys.raw_pair`). One object rather than a tuple of two keys
    (five objects), because a relay holds hundreds of thousands of allocations."""
    allocated_at: float
    bound: bool = False

    def __post_init__(self) -> None:
        if type(self.raw_keys) is not bytes or len(self.raw_keys) != 2 * KEY_LEN:
            raise ValueError(f"an allocation's raw_keys are two raw keys: {2 * KEY_LEN} bytes")

    @property
    def disco_keys(self) -> tuple[DiscoPublicKey, DiscoPublicKey]:
        """The two clients' disco keys, in raw-byte order (made on each call)."""
        raw = self.raw_keys
        return DiscoPublicKey(raw[:KEY_LEN]), DiscoPublicKey(raw[KEY_LEN:])

    def client_key(self, index: int) -> bytes:
        """Client ``index``'s (0 or 1) raw disco key."""
        return self.raw_keys[index * KEY_LEN : (index + 1) * KEY_LEN]

    def client_index(self, raw_key: bytes) -> int | None:
        """Which client (0 or 1) has this raw disco key; None if neither."""
        if raw_key == self.raw_keys[:KEY_LEN]:
            return 0
        if raw_key == self.raw_keys[KEY_LEN:]:
            return 1
        return None

    def as_bound(self) -> Allocation:
        return replace(self, bound=True)
