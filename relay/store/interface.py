"""The store interface: what every store (memory, Redis) offers the relay and the operator.

A store owns allocations: which VNI of which relay serves which pair of disco
keys, under which LamportID, since when, and whether both clients have bound.
It applies the rules of docs/protocol.md "Allocation" atomically, so that the callers never
know which implementation they talk to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from relay.protocol.allocation import (
    DEFAULT_BIND_LIFETIME,
    DEFAULT_STEADY_STATE_LIFETIME,
    Allocation,
)
from relay.protocol.keys import DiscoPublicKey

SCAN_SLICE = 256


class StoreError(Exception):
    """Base class of store errors."""


class VNIExhausted(StoreError):
    """The relay has no free VNI."""


class StoreUnavailable(StoreError):
    """The store cannot be reached; the caller may retry later."""


@dataclass(frozen=True, slots=True)
class AllocationResult:
    """What ``allocate`` did: the allocation to use, and a bound one it discarded, if any."""

    allocation: Allocation
    created: bool
    replaced: Allocation | None = None


class Change(NamedTuple):
    """One change to a relay's allocations, as announced to its subscribers."""

    kind: str  # "alloc" or "free"
    vni: int
    lamport_id: int


SUBSCRIBED = Change("subscribed", 0, 0)


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """A relay as the registry knows it; ``alive`` while its heartbeat has not expired."""

    name: str
    server_disco: DiscoPublicKey
    addr_ports: tuple[str, ...]
    load: int
    capacity: int
    version: str
    heartbeat_at: float
    alive: bool = True
    bind_lifetime: float = DEFAULT_BIND_LIFETIME
    steady_state_lifetime: float = DEFAULT_STEADY_STATE_LIFETIME
    metrics: str | None = None
    """``host:port`` of the relay's ``/metrics`` as bound (the host may be unspecified)."""
    pod: str | None = None
    """``namespace/name`` of the pod the relay runs in, where it runs in one: its ``/metrics``
    is then read through the API server's pod proxy."""


class Store(Protocol):
    async def allocate(
        self,
        relay: str,
        disco_keys: tuple[DiscoPublicKey, DiscoPublicKey],
        now: float,
        max_vni: int | None = None,
    ) -> AllocationResult:
        """Allocate for an unordered pair, as docs/protocol.md "Allocation" says.

        The same pair not yet bound gets its allocation back unchanged; the same
        pair already bound is freed and allocated afresh with a new LamportID.
        VNIs stay within 1..``max_vni`` (the relay's capacity; None: the
        store's default). Raises VNIExhausted when the relay has no free VNI.
        """
        ...

    async def mark_bound(self, relay: str, endpoints: Sequence[tuple[int, int]]) -> list[bool]:
        """Record that both clients bound, for each endpoint given by (VNI, LamportID):
        True where it is marked, False where that allocation is gone.

        One call marks many, so that a relay binding thousands of endpoints a
        second pays a store round trip per slice of them, not per endpoint.
        """
        ...

    async def free(self, relay: str, endpoints: Sequence[tuple[int, int]]) -> list[bool]:
        """Free allocations and their VNIs, each given by (VNI, LamportID): True where it
        is freed, False where it was already gone or replaced.

        Like :meth:`mark_bound`, one call frees many: a relay expiring thousands
        of endpoints at once pays a store round trip per slice of them.
        """
        ...

    async def allocations(self, relay: str) -> list[Allocation]:
        """Every live allocation of a relay, read at one instant."""
        ...

    def scan_allocations(self, relay: str) -> AsyncIterator[list[Allocation]]:
        """Every live allocation of a relay, a slice at a time, never holding the caller long.

        Unlike :meth:`allocations` it is not one instant's view: an allocation
        made or freed during the scan may or may not be in it.
        """
        ...

    async def allocation(self, relay: str, vni: int) -> Allocation | None:
        """The allocation of one VNI of a relay, if any."""
        ...

    def changes(self, relay: str) -> AsyncIterator[Change]:
        """Changes to a relay's allocations as they happen, best effort.

        The first item is ``SUBSCRIBED``, once changes are being listened
        for: a subscriber resyncs from ``allocations`` then, and now and then
        after, since a dropped connection can lose changes. Iteration raises
        StoreUnavailable when the store cannot be reached.
        """
        ...

    async def register(self, record: RelayRecord, ttl: float) -> None:
        """Announce a relay, alive for ``ttl`` seconds unless registered again."""
        ...

    async def holding(
        self, relays: list[str], disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]
    ) -> str | None:
        """The first of ``relays`` with an allocation for the pair, if any."""
        ...

    async def relays(self) -> list[RelayRecord]:
        """Every registered relay, with ``alive`` telling whose heartbeat is current."""
        ...

    async def close(self) -> None: ...
