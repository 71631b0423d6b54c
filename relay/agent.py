"""The relay agent: keeps one relay's core and the store in step.

It registers the relay and heart-beats, so the fleet knows it is alive and
how loaded it is; installs the relay's allocations from the store (all at
start, each as it is announced, and all again by a periodic resync, so a
missed announcement loses nothing); and writes back what only the relay
knows: endpoints bound by both clients, and endpoints expired, whose VNIs it
frees. When the store is unreachable the data plane goes on untouched: the
writes wait and are retried with backoff, and the agent resyncs once the
store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from relay.core import Endpoint, RelayCore
from relay.store import SUBSCRIBED, Allocation, Change, RelayRecord, Store, StoreUnavailable

log = logging.getLogger(__name__)

MAX_EXPIRY_TICK = 1.0
MAX_BACKOFF = 5.0


class Backoff:
    """Exponential delays for retrying an unreachable store, logged once per outage."""

    def __init__(self, what: str, first: float = 0.1, limit: float = MAX_BACKOFF) -> None:
        self._what = what
        self._first = first
        self._limit = limit
        self._delay = 0.0

    def failed(self, error: Exception) -> float:
        if not self._delay:
            log.warning("%s: store unavailable (%s); retrying", self._what, error)
            self._delay = self._first
        else:
            self._delay = min(self._delay * 2, self._limit)
        return self._delay

    def succeeded(self) -> None:
        if self._delay:
            log.info("%s: store reachable again", self._what)
        self._delay = 0.0


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
    ) -> None:
        self._core = core
        self._store = store
        self._record = record
        self._clock = clock
        self.name = record().name
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self._pending_bound: set[tuple[int, int]] = set()
        self._pending_free: set[tuple[int, int]] = set()
        self._installed_during_resync: set[int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.resyncs = 0
        self.on_expired: Callable[[list[Endpoint]], None] | None = None

    # -- what the server calls ---------------------------------------------

    def install(self, allocation: Allocation) -> None:
        """Serve an allocation now (the allocation API made it, or the store announced it)."""
        if (allocation.vni, allocation.lamport_id) in self._pending_free:
            return
        self._core.install(allocation, self._clock())
        if self._installed_during_resync is not None:
            self._installed_during_resync.add(allocation.vni)

    def expired_unfreed(self, allocation: Allocation) -> bool:
        """Whether the core expired this allocation and the store has not heard yet."""
        return (allocation.vni, allocation.lamport_id) in self._pending_free

    async def flush(self) -> None:
        """Write what the core learnt (bound, expired) to the store; raises StoreUnavailable."""
        for allocation in self._core.take_bound():
            self._pending_bound.add((allocation.vni, allocation.lamport_id))
        for vni, lamport_id in sorted(self._pending_bound):
            await self._store.mark_bound(self.name, vni, lamport_id)
            self._pending_bound.discard((vni, lamport_id))
        for vni, lamport_id in sorted(self._pending_free):
            await self._store.free(self.name, vni, lamport_id)
            self._pending_free.discard((vni, lamport_id))

    async def resync(self) -> None:
        """Make the core serve exactly the store's allocations for this relay."""
        self._installed_during_resync = set()
        try:
            allocations = await self._store.allocations(self.name)
            wanted = {(a.vni, a.lamport_id) for a in allocations}
            for allocation in allocations:
                self.install(allocation)
            fresh = self._installed_during_resync
            for endpoint in self._core.endpoints():
                key = (endpoint.allocation.vni, endpoint.allocation.lamport_id)
                if key not in wanted and key[0] not in fresh:
                    self._core.remove(*key)
        finally:
            self._installed_during_resync = None
        self.resyncs += 1

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for loop in (
            self._expiry_loop,
            self._heartbeat_loop,
            self._changes_loop,
            self._resync_loop,
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"agent-{loop.__name__}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(StoreUnavailable):
            await self.flush()

    # -- loops ---------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        backoff = Backoff("writing bound and expired endpoints")
        core = self._core
        tick = min(MAX_EXPIRY_TICK, core.bind_lifetime / 10, core.steady_state_lifetime / 10)
        while True:
            expired = core.expire(self._clock())
            for endpoint in expired:
                self._pending_free.add((endpoint.allocation.vni, endpoint.allocation.lamport_id))
            if expired and self.on_expired is not None:
                self.on_expired(expired)
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
        backoff = Backoff("heartbeat")
        while True:
            delay = self.heartbeat_interval
            try:
                await self._store.register(self._record(), ttl=3 * self.heartbeat_interval)
                backoff.succeeded()
            except StoreUnavailable as error:
                delay = min(delay, backoff.failed(error))
            await asyncio.sleep(delay)

    async def _changes_loop(self) -> None:
        backoff = Backoff("following allocation changes")
        while True:
            try:
                async for change in self._store.changes(self.name):
                    await self._apply(change)
                    backoff.succeeded()
            except StoreUnavailable as error:
                await asyncio.sleep(backoff.failed(error))

    async def _apply(self, change: Change) -> None:
        if change == SUBSCRIBED:
            await self.resync()
        elif change.kind == "alloc":
            allocation = await self._store.allocation(self.name, change.vni)
            if allocation is not None and allocation.lamport_id == change.lamport_id:
                self.install(allocation)
        elif change.kind == "free":
            self._core.remove(change.vni, change.lamport_id)

    async def _resync_loop(self) -> None:
        backoff = Backoff("periodic resync")
        delay = self.resync_interval
        while True:
            await asyncio.sleep(delay)
            delay = self.resync_interval
            try:
                await self.resync()
                backoff.succeeded()
            except StoreUnavailable as error:
                delay = min(delay, backoff.failed(error))
