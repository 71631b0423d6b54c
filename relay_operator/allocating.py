"""Allocating for a RelayEndpoint: reuse what it has, or place it and allocate. No Kubernetes here.

The kopf handlers call :class:`Allocator` with what the resource says (its
keys, its pin, the allocation in its status, the relay chosen before a
crash) and get back an allocation; everything in between is the store and
the pure placement function, so it is tested with the memory store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from relay.protocol.keys import DiscoPublicKey, raw_pair
from relay.resource.definition import RELAY_DEAD, RELAY_REKEYED
from relay.store import Allocation, RelayRecord, Store
from relay_operator.placement import choose_relay

MAX_STORE_CALLS = 32
"""Store calls of the allocator in flight at once; the others wait their turn.

kopf runs a handler per resource at once: a burst of 1 000 RelayEndpoints, or a
restarted operator resuming 10 000, is as many handlers calling the store together.
redis-py's pool refuses a call beyond its 100 connections ("Too many connections")
instead of queueing it, so unbounded, most of them failed into kopf retries (each a
PATCH of kopf's progress annotations, and a back-off). Kept well below the pool's size,
which the relays' registry reads of the relay check and the Relay objects share."""

_T = TypeVar("_T")


class NoRelayAvailable(Exception):
    """No live relay with a free VNI (or not the pinned one); the message says which."""


__all__ = [
    "RELAY_DEAD",  # why a status's server is gone: its relay stopped heart-beating
    "RELAY_REKEYED",  # why a status's server is gone: its relay runs under another disco key
    "Allocator",
    "CurrentAllocation",
    "NoRelayAvailable",
    "Placement",
]


@dataclass(frozen=True)
class CurrentAllocation:
    """The allocation a resource's status names, and the server key it gave the clients."""

    relay: str
    vni: int
    lamport_id: int
    server_disco: str | None = None


@dataclass(frozen=True)
class Placement:
    allocation: Allocation
    relay: RelayRecord
    created: bool


class Allocator:
    """Places endpoints on relays and allocates through the store, remembering recent choices.

    A choice counts towards its relay's load at once, before the allocation it
    leads to, so that a burst of concurrent creations spreads over the fleet.

    At most ``max_calls`` store calls are in flight (:data:`MAX_STORE_CALLS`), and
    callers asking for the relays while a read of the registry is in flight share that
    read: in a burst, one registry read serves every handler waiting for one, instead
    of one read each (four per allocation). What they get was read after they asked,
    give or take that one round trip.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        max_calls: int = MAX_STORE_CALLS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._placed: dict[str, tuple[float, int]] = {}
        self._calls = asyncio.Semaphore(max_calls)
        self._reading: asyncio.Future[dict[str, RelayRecord]] | None = None
        self.last_relays: dict[str, RelayRecord] = {}

    async def _bounded(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()``, once fewer than ``max_calls`` store calls are in flight."""
        async with self._calls:
            return await call()

    async def relays(self) -> dict[str, RelayRecord]:
        """Every registered relay by name, dead ones too; kept as ``last_relays``.

        A read already in flight is shared; a caller cancelled while waiting leaves it
        to the others."""
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(self._read_relays())
            reading.add_done_callback(self._read_done)
        return await asyncio.shield(reading)

    async def _read_relays(self) -> dict[str, RelayRecord]:
        records = await self._bounded(self._store.relays)
        self.last_relays = {r.name: r for r in records}
        return self.last_relays

    def _read_done(self, reading: asyncio.Future[dict[str, RelayRecord]]) -> None:
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled():
            reading.exception()  # retrieved here too, should every caller have gone

    async def holding(
        self, keys: tuple[DiscoPublicKey, DiscoPublicKey], exclude: str | None = None
    ) -> str | None:
        """A live relay (not ``exclude``) already holding the pair: an attempt a crash cut short."""
        live = [name for name, r in (await self.relays()).items() if r.alive and name != exclude]
        if not live:
            return None
        return await self._bounded(lambda: self._store.holding(live, keys))

    async def current(
        self, keys: tuple[DiscoPublicKey, DiscoPublicKey], current: CurrentAllocation | None
    ) -> Placement | None:
        """The resource's allocation if it still stands: its relay alive under the key the
        status gave the clients, and the store agreeing."""
        if current is None:
            return None
        relay = (await self.relays()).get(current.relay)
        if relay is None or _server_gone(relay, current) is not None:
            return None
        allocation = await self._bounded(lambda: self._store.allocation(current.relay, current.vni))
        if (
            allocation is None
            or allocation.lamport_id != current.lamport_id
            or allocation.raw_keys != raw_pair(keys)
        ):
            return None
        return Placement(allocation, relay, created=False)

    async def relay_alive(self, name: str) -> bool:
        relay = (await self.relays()).get(name)
        return relay is not None and relay.alive

    async def server_gone(self, current: CurrentAllocation) -> str | None:
        """Why the server a status names runs no more (RELAY_DEAD, RELAY_REKEYED), or None.

        A relay restarted under another disco key is another server to the
        clients: it freed what it held under the old key (relay/shells/agent.py).
        """
        return _server_gone((await self.relays()).get(current.relay), current)

    async def choose(self, pinned: str | None) -> RelayRecord:
        """The relay a new allocation goes to; raises NoRelayAvailable."""
        relays = await self.relays()
        relay = choose_relay(relays.values(), pinned, self._placed_since_heartbeat(relays))
        if relay is not None:
            self._count(relay)
            return relay
        if pinned is not None:
            raise NoRelayAvailable(f"relay {pinned!r} is not registered, not alive, or full")
        alive = sum(r.alive for r in relays.values())
        raise NoRelayAvailable(f"no live relay with a free VNI ({alive} alive of {len(relays)})")

    async def allocate(
        self,
        keys: tuple[DiscoPublicKey, DiscoPublicKey],
        relay_name: str,
        previous: CurrentAllocation | None = None,
    ) -> Placement:
        """Allocate on ``relay_name``, freeing a previous allocation elsewhere first.

        The same pair on the same relay, not yet bound, gets its allocation
        back (the store's rule), so a retry after a crash allocates nothing new.
        """
        relays = await self.relays()
        relay = relays.get(relay_name)
        if relay is None or not relay.alive:
            raise NoRelayAvailable(f"relay {relay_name!r} is no longer alive")
        if previous is not None and previous.relay != relay_name:
            await self.free(previous)
        result = await self._bounded(
            lambda: self._store.allocate(relay_name, keys, self._clock(), relay.capacity)
        )
        return Placement(result.allocation, relay, result.created)

    async def free(self, current: CurrentAllocation) -> bool:
        [freed] = await self._bounded(
            lambda: self._store.free(current.relay, [(current.vni, current.lamport_id)])
        )
        return freed

    def _count(self, relay: RelayRecord) -> None:
        since, count = self._placed.get(relay.name, (relay.heartbeat_at, 0))
        if since != relay.heartbeat_at:
            since, count = relay.heartbeat_at, 0
        self._placed[relay.name] = (since, count + 1)

    def _placed_since_heartbeat(self, relays: dict[str, RelayRecord]) -> dict[str, int]:
        return {
            name: count
            for name, (since, count) in self._placed.items()
            if name in relays and relays[name].heartbeat_at == since
        }


def _server_gone(relay: RelayRecord | None, current: CurrentAllocation) -> str | None:
    if relay is None or not relay.alive:
        return RELAY_DEAD
    if current.server_disco is not None and str(relay.server_disco) != current.server_disco:
        return RELAY_REKEYED
    return None
