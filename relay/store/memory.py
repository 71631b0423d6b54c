"""The in-memory store: one process's allocations, for the standalone relay and the tests.

Memory grows with what is allocated, never with the 2^24 VNI space: a relay
keeps a dict of VNIs in use and a cursor; a new VNI is the first free one at
or after the cursor, so freed VNIs come back last, as in the reference's pool.
The allocations it holds are the ones it handed out, which the relay in the
same process serves: a bound mark is one bit of a VNI bitmap, not a bound copy
of the allocation, which is made only when one is read. The bitmap reaches as
far as the highest VNI marked (at most 2 MiB); new VNIs come from a cursor, so
those in use are mostly low and dense, where a set would take 40 B a VNI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPublicKey, raw_pair
from relay.store.interface import (
    SCAN_SLICE,
    SUBSCRIBED,
    Allocation,
    AllocationResult,
    Change,
    RelayRecord,
    VNIExhausted,
)


class _VniBits:
    """A set of VNIs as a bitmap, grown up to the highest VNI added."""

    __slots__ = ("_bits",)

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, vni: int) -> None:
        byte = vni >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        self._bits[byte] |= 1 << (vni & 7)

    def discard(self, vni: int) -> None:
        byte = vni >> 3
        if byte < len(self._bits):
            self._bits[byte] &= ~(1 << (vni & 7))

    def __contains__(self, vni: int) -> bool:
        byte = vni >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (vni & 7) & 1)


@dataclass
class _RelayAllocations:
    lamport_id: int = 0
    cursor: int = 1
    by_vni: dict[int, Allocation] = field(default_factory=dict)
    by_pair: dict[bytes, int] = field(default_factory=dict)  # by raw_pair
    bound: _VniBits = field(default_factory=_VniBits)  # the VNIs of by_vni's allocations bound

    def take_vni(self, max_vni: int) -> int:
        if len(self.by_vni) >= max_vni:
            raise VNIExhausted(f"all {max_vni} VNIs are in use")
        vni = self.cursor if self.cursor <= max_vni else 1
        while vni in self.by_vni:
            vni = vni % max_vni + 1
        self.cursor = vni % max_vni + 1
        return vni

    def drop(self, allocation: Allocation) -> None:
        del self.by_vni[allocation.vni]
        del self.by_pair[allocation.raw_keys]
        self.bound.discard(allocation.vni)

    def read(self, allocation: Allocation) -> Allocation:
        """The allocation as the store has it: bound if marked so."""
        return allocation.as_bound() if allocation.vni in self.bound else allocation


class MemoryStore:
    """The store interface over plain dicts. ``max_vni`` caps VNIs at 1..max_vni per relay."""

    def __init__(self, max_vni: int = MAX_VNI, clock: Callable[[], float] = time.time) -> None:
        if not 1 <= max_vni <= MAX_VNI:
            raise ValueError(f"max_vni must be between 1 and {MAX_VNI}")
        self._max_vni = max_vni
        self._clock = clock
        self._relays: dict[str, _RelayAllocations] = {}
        self._registry: dict[str, tuple[RelayRecord, float]] = {}
        self._subscribers: dict[str, set[asyncio.Queue[Change]]] = {}

    def _publish(self, relay: str, kind: str, allocation: Allocation) -> None:
        for queue in self._subscribers.get(relay, ()):
            queue.put_nowait(Change(kind, allocation.vni, allocation.lamport_id))

    def _relay(self, relay: str) -> _RelayAllocations:
        state = self._relays.get(relay)
        if state is None:
            state = self._relays[relay] = _RelayAllocations()
        return state

    async def holding(
        self, relays: list[str], disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]
    ) -> str | None:
        pair = raw_pair(disco_keys)
        return next(
            (r for r in relays if r in self._relays and pair in self._relays[r].by_pair), None
        )

    async def allocate(
        self,
        relay: str,
        disco_keys: tuple[DiscoPublicKey, DiscoPublicKey],
        now: float,
        max_vni: int | None = None,
    ) -> AllocationResult:
        state = self._relay(relay)
        pair = raw_pair(disco_keys)
        replaced = None
        vni = state.by_pair.get(pair)
        if vni is not None:
            existing = state.by_vni[vni]
            if vni not in state.bound:
                return AllocationResult(existing, created=False)
            replaced = state.read(existing)
            state.drop(existing)
        new_vni = state.take_vni(max_vni or self._max_vni)
        state.lamport_id += 1
        allocation = Allocation(relay, new_vni, state.lamport_id, pair, now)
        state.by_vni[new_vni] = allocation
        state.by_pair[pair] = new_vni
        if replaced is not None:
            self._publish(relay, "free", replaced)
        self._publish(relay, "alloc", allocation)
        return AllocationResult(allocation, created=True, replaced=replaced)

    def _current(self, relay: str, vni: int, lamport_id: int) -> Allocation | None:
        state = self._relays.get(relay)
        allocation = state.by_vni.get(vni) if state else None
        if allocation is None or allocation.lamport_id != lamport_id:
            return None
        return allocation

    async def mark_bound(self, relay: str, endpoints: Sequence[tuple[int, int]]) -> list[bool]:
        marked = []
        for vni, lamport_id in endpoints:
            allocation = self._current(relay, vni, lamport_id)
            if allocation is not None:
                self._relays[relay].bound.add(vni)
            marked.append(allocation is not None)
        return marked

    async def free(self, relay: str, endpoints: Sequence[tuple[int, int]]) -> list[bool]:
        freed = []
        for vni, lamport_id in endpoints:
            allocation = self._current(relay, vni, lamport_id)
            if allocation is not None:
                self._relays[relay].drop(allocation)
                self._publish(relay, "free", allocation)
            freed.append(allocation is not None)
        return freed

    async def allocations(self, relay: str) -> list[Allocation]:
        state = self._relays.get(relay)
        return [state.read(a) for a in state.by_vni.values()] if state else []

    async def scan_allocations(self, relay: str) -> AsyncIterator[list[Allocation]]:
        allocations = await self.allocations(relay)
        for start in range(0, len(allocations), SCAN_SLICE):
            yield allocations[start : start + SCAN_SLICE]
            await asyncio.sleep(0)

    async def allocation(self, relay: str, vni: int) -> Allocation | None:
        state = self._relays.get(relay)
        allocation = state.by_vni.get(vni) if state else None
        return None if allocation is None else state.read(allocation)

    async def changes(self, relay: str) -> AsyncIterator[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        subscribers = self._subscribers.setdefault(relay, set())
        subscribers.add(queue)
        try:
            yield SUBSCRIBED
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)

    async def register(self, record: RelayRecord, ttl: float) -> None:
        self._registry[record.name] = (record, self._clock() + ttl)

    async def relays(self) -> list[RelayRecord]:
        now = self._clock()
        return [
            replace(record, alive=now < expires_at)
            for record, expires_at in self._registry.values()
        ]

    async def close(self) -> None:
        self._relays.clear()
