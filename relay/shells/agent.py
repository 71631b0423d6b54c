"""The relay agent: keeps one relay's core and the store in step.

It registers the relay and heart-beats, so the fleet knows it is alive and
how loaded it is; installs the relay's allocations from the store (all at
start, each as it is announced, and all again by a periodic resync, so a
missed announcement loses nothing); and writes back what only the relay
knows: endpoints bound by both clients, and endpoints expired, whose VNIs it
frees. When the store is unreachable the data plane goes on untouched: the
writes wait and are retried with backoff, and the agent resyncs once the
store is back.

Before it first registers or allocates, a relay that comes back under another
disco key than its registry entry names (no ``--key-file``: a new key every
start) frees the allocations the store holds for it: their clients were given
the old key and seal their handshakes to it, so they could never bind. The
operator sees the new key in the registry and places their RelayEndpoints
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable

from relay.aio import SLICE, Backoff, in_turns, stop_tasks
from relay.protocol.core import Endpoint, RelayCore
from relay.protocol.keys import DiscoPublicKey
from relay.shells import gc_freeze
from relay.store import SUBSCRIBED, Allocation, Change, RelayRecord, Store, StoreUnavailable

log = logging.getLogger(__name__)

MAX_EXPIRY_TICK = 1.0
MAX_BACKOFF = 5.0
EXPIRY_BATCH = 256
"""Endpoints the core expires per step, and expired ones freed in the store per call."""
RESYNC_SHARE = 0.01
"""At most this share of a relay's time goes to periodic resyncs: a resync that takes
longer than ``RESYNC_SHARE`` of ``--resync-interval`` (a million endpoints: seconds)
puts the next one off to ``1 / RESYNC_SHARE`` times its duration."""


def resync_delay(interval: float, took: float) -> float:
    """The wait before the next periodic resync after one that took ``took`` seconds:
    ``interval``, or ``took / RESYNC_SHARE`` where that is longer."""
    return max(interval, took / RESYNC_SHARE)


class StoreRetries:
    """Retrying an unreachable store after the delays of a :class:`relay.aio.Backoff`,
    logged once per outage.

    Every failure is counted in ``errors`` under the operation's name
    (``heartbeat``, ``changes``, ``resync``, ``write_back``).
    """

    def __init__(
        self,
        what: str,
        errors: Counter[str],
        first: float = 0.1,
        limit: float = MAX_BACKOFF,
    ) -> None:
        self._what = what
        self._errors = errors
        self._delays = Backoff(first, limit)
        self._failing = False

    def failed(self, error: Exception) -> float:
        """Count and (first in an outage) log a failure; the delay before trying again."""
        self._errors[self._what] += 1
        if not self._failing:
            log.warning("store unavailable during %s (%s); retrying", self._what, error)
            self._failing = True
        return self._delays.next_delay()

    def succeeded(self) -> None:
        if self._failing:
            log.info("store reachable again (%s)", self._what)
            self._failing = False
            self._delays.reset()


class PendingFrees(set[tuple[int, int]]):
    """Expired ``(vni, lamport_id)`` not yet freed in the store, in the order they expired.

    A member stays until its free is written, so the allocation API never
    hands out an endpoint the relay has already expired.
    """

    def __init__(self) -> None:
        super().__init__()
        self.order: deque[tuple[int, int]] = deque()

    def add(self, key: tuple[int, int]) -> None:
        if key not in self:
            super().add(key)
            self.order.append(key)


class RelayAgent:
    def __init__(
        self,
        core: RelayCore,
        store: Store,
        record: Callable[[], RelayRecord],
        clock: Callable[[], float],
        *,
        heartbeat_interval: float = 5.0,
        resync_interval: float = 60.0,
        owns: Callable[[int], bool] | None = None,
        registers: bool = True,
        serves: bool = True,
    ) -> None:
        """``owns``: the VNIs this process serves, where the relay's workers share them out
        (relay/workers.py; default every one). ``registers``: register and heart-beat the
        relay (its parent does, for workers). ``serves``: install and expire endpoints (a
        parent of workers serves none)."""
        self._core = core
        self._owns = owns
        self._registers = registers
        self._serves = serves
        self._store = store
        self._record = record
        self._clock = clock
        self.name = record().name
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self._pending_bound: set[tuple[int, int]] = set()
        self._pending_free = PendingFrees()
        self._installed_during_resync: set[int] | None = None
        self._removed_during_resync: set[tuple[int, int]] | None = None
        self._resyncing = asyncio.Lock()
        self._taking_over = asyncio.Lock()
        self._flushing_bound = asyncio.Lock()
        self.taken_over = False
        self.freed_under_old_key = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.resyncs = 0
        self.store_errors: Counter[str] = Counter()
        self.allocations_created = 0
        self.on_expired: Callable[[list[Endpoint]], None] | None = None

    # -- what the server calls ---------------------------------------------

    async def allocate(self, disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> Allocation:
        """Allocate for a pair in the store (the allocation API's request) and serve it.

        Bound marks are written first, so that a pair that has bound gets a
        fresh allocation. An allocation the core has expired but the store has
        not yet freed is freed now and allocated afresh, never handed out; so
        is one made under an earlier disco key (:meth:`take_over`, done first).
        Raises StoreUnavailable (counted) and VNIExhausted.
        """
        try:
            await self.take_over()
            await self.flush_bound()
            result = await self._store.allocate(self.name, disco_keys, self._clock())
            while self.expired_unfreed(result.allocation):
                await self.free_now(result.allocation)
                result = await self._store.allocate(self.name, disco_keys, self._clock())
        except StoreUnavailable:
            self.store_errors["allocate"] += 1
            raise
        if result.replaced is not None:
            self._core.remove(result.replaced.vni, result.replaced.lamport_id)
        self.install(result.allocation)
        if result.created:
            self.allocations_created += 1
        return result.allocation

    def install(self, allocation: Allocation) -> None:
        """Serve an allocation now (the allocation API made it, or the store announced it),
        if this process owns its VNI."""
        if (allocation.vni, allocation.lamport_id) in self._pending_free:
            return
        if self._owns is not None and not self._owns(allocation.vni):
            return
        self._core.install(allocation, self._clock())
        if self._installed_during_resync is not None:
            self._installed_during_resync.add(allocation.vni)
        else:  # a resync exempts what it installs all at once, when it ends
            gc_freeze.installed_one()

    @property
    def pending_writes(self) -> int:
        """Bound marks and frees learnt by the core and not yet written to the store."""
        return len(self._pending_bound) + len(self._pending_free)

    def expired_unfreed(self, allocation: Allocation) -> bool:
        """Whether the core expired this allocation and the store has not heard yet."""
        return (allocation.vni, allocation.lamport_id) in self._pending_free

    async def flush(self) -> None:
        """Write what the core learnt (bound, expired) to the store; raises StoreUnavailable."""
        await self.flush_bound()
        pending = self._pending_free
        order = pending.order
        while order:
            span = min(EXPIRY_BATCH, len(order))  # some maybe freed already by free_now
            frees = [key for key in itertools.islice(order, span) if key in pending]
            if frees:
                await self._store.free(self.name, frees)
                pending.difference_update(frees)
            for _ in range(span):
                order.popleft()
            await asyncio.sleep(0)

    async def flush_bound(self) -> None:
        """Write the bound marks the core learnt; raises StoreUnavailable.

        One flush at a time: every allocation request flushes first, and a
        burst of them would otherwise each write the same marks.
        """
        async with self._flushing_bound:
            for allocation in self._core.take_bound():
                self._pending_bound.add((allocation.vni, allocation.lamport_id))
            marks = sorted(self._pending_bound)
            if marks:
                await self._store.mark_bound(self.name, marks)
                self._pending_bound.difference_update(marks)

    async def free_now(self, allocation: Allocation) -> None:
        """Write one expired allocation's free ahead of the queue; raises StoreUnavailable."""
        await self._store.free(self.name, [(allocation.vni, allocation.lamport_id)])
        self._pending_free.discard((allocation.vni, allocation.lamport_id))

    async def take_over(self) -> None:
        """Once, before this relay registers (and allocates): free what it held under another
        disco key.

        The relay's registry entry names the key it last ran with. When that is
        not this relay's key, every allocation the store holds for the relay's
        name was made under the old key, which no one holds any more: clients
        given it can never bind. Each is freed by VNI and LamportID, so that an
        allocation made meanwhile (by an operator that still read the old entry)
        stays; the operator gives that one the new key, and places the
        RelayEndpoints of the freed ones again. A relay never registered, or
        under the same key (``--key-file``), keeps its allocations. Raises
        StoreUnavailable; the next call tries again.

        The other loops need not wait: an old allocation a resync installs
        meanwhile is removed again by the announcement of its free (or by the
        resync itself, which reads the store after the free).
        """
        if self.taken_over:
            return
        async with self._taking_over:
            if self.taken_over:
                return
            key = self._record().server_disco
            previous = next((r for r in await self._store.relays() if r.name == self.name), None)
            if previous is not None and previous.server_disco != key:
                async for allocations in self._store.scan_allocations(self.name):
                    freed = await self._store.free(
                        self.name, [(a.vni, a.lamport_id) for a in allocations]
                    )
                    self.freed_under_old_key += sum(freed)
                log.warning(
                    "relay %s last ran as %s, now as %s: freed the %d allocations made under "
                    "the old key (their clients could never bind); the operator places their "
                    "RelayEndpoints again",
                    self.name,
                    previous.server_disco,
                    key,
                    self.freed_under_old_key,
                )
            self.taken_over = True

    async def resync(self) -> None:
        """Make the core serve exactly the store's allocations for this relay.

        Works in slices, yielding to the event loop between them, so a resync
        of a million endpoints never stalls relaying; one resync at a time.
        Afterwards the endpoints are exempt from garbage collection (relay/shells/gc_freeze.py).
        """
        async with self._resyncing:
            with gc_freeze.paused():
                await self._resync()
                gc_freeze.exempt_survivors()

    async def _resync(self) -> None:
        self._installed_during_resync = set()
        self._removed_during_resync = set()
        try:
            wanted: set[tuple[int, int]] = set()
            async for allocations in self._store.scan_allocations(self.name):
                for allocation in allocations:
                    if self._owns is not None and not self._owns(allocation.vni):
                        continue
                    key = (allocation.vni, allocation.lamport_id)
                    wanted.add(key)
                    served = self._core.endpoint(allocation.vni)
                    if served is not None and served.allocation.lamport_id == key[1]:
                        continue  # the common case: nothing to do
                    if key not in self._removed_during_resync:
                        self.install(allocation)
                await asyncio.sleep(0)
            fresh = self._installed_during_resync
            async for endpoint in in_turns(list(self._core.endpoints())):
                key = (endpoint.allocation.vni, endpoint.allocation.lamport_id)
                if key not in wanted and key[0] not in fresh:
                    self._core.remove(*key)
        finally:
            self._installed_during_resync = None
            self._removed_during_resync = None
        self.resyncs += 1

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        loops = []
        if self._serves:
            gc_freeze.collect_and_exempt()  # what the process made to start: scanned once
            loops += [self._expiry_loop, self._changes_loop, self._resync_loop]
        if self._registers:
            loops.append(self._heartbeat_loop)
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=f"agent-{loop.__name__}"))

    async def close(self) -> None:
        await stop_tasks(*self._tasks)
        self._tasks.clear()
        with contextlib.suppress(StoreUnavailable):
            await self.flush()

    # -- loops ---------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        backoff = StoreRetries("write_back", self.store_errors)
        core = self._core
        tick = min(MAX_EXPIRY_TICK, core.bind_lifetime / 10, core.steady_state_lifetime / 10)
        while True:
            expired = core.expire(self._clock(), EXPIRY_BATCH)
            for endpoint in expired:
                self._pending_free.add((endpoint.allocation.vni, endpoint.allocation.lamport_id))
            if expired and self.on_expired is not None:
                self.on_expired(expired)
            if len(expired) == EXPIRY_BATCH:
                await asyncio.sleep(0)
                continue
            delay = tick
            try:
                await self.flush()
                backoff.succeeded()
            except StoreUnavailable as error:
                delay = max(delay, backoff.failed(error))
            deadline = core.next_deadline()
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - self._clock() + 0.001))
            await asyncio.sleep(delay)

    async def _heartbeat_loop(self) -> None:
        backoff = StoreRetries("heartbeat", self.store_errors)
        while True:
            delay = self.heartbeat_interval
            try:
                await self.take_over()  # before the first registration names this key
                await self._store.register(self._record(), ttl=3 * self.heartbeat_interval)
                backoff.succeeded()
            except StoreUnavailable as error:
                delay = min(delay, backoff.failed(error))
            await asyncio.sleep(delay)

    async def _changes_loop(self) -> None:
        backoff = StoreRetries("changes", self.store_errors)
        while True:
            try:
                applied = 0
                async for change in self._store.changes(self.name):
                    await self._apply(change)
                    backoff.succeeded()
                    applied += 1
                    if applied % SLICE == 0:
                        await asyncio.sleep(0)
            except StoreUnavailable as error:
                await asyncio.sleep(backoff.failed(error))

    async def _apply(self, change: Change) -> None:
        if change == SUBSCRIBED:
            await self.resync()
        elif change.kind == "alloc":
            if self._owns is not None and not self._owns(change.vni):
                return
            served = self._core.endpoint(change.vni)
            if served is not None and served.allocation.lamport_id == change.lamport_id:
                return  # installed already, by this process's own allocate or its parent
            allocation = await self._store.allocation(self.name, change.vni)
            if allocation is not None and allocation.lamport_id == change.lamport_id:
                self.install(allocation)
        elif change.kind == "free":
            self._core.remove(change.vni, change.lamport_id)
            if self._removed_during_resync is not None:
                self._removed_during_resync.add((change.vni, change.lamport_id))

    async def _resync_loop(self) -> None:
        backoff = StoreRetries("resync", self.store_errors)
        loop = asyncio.get_running_loop()
        delay = self.resync_interval
        while True:
            await asyncio.sleep(delay)
            delay = self.resync_interval
            started = loop.time()
            try:
                await self.resync()
                backoff.succeeded()
            except StoreUnavailable as error:
                delay = min(delay, backoff.failed(error))
                continue
            took = loop.time() - started
            delay = resync_delay(self.resync_interval, took)
            if delay > self.resync_interval:
                log.debug(
                    "resync of %d endpoints: %.1f s; the next in %.0f s",
                    len(self._core),
                    took,
                    delay,
                )
