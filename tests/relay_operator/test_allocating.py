"""The operator's allocation steps against the memory store: reuse, placement, re-placement."""

import asyncio

import pytest

from relay.protocol.keys import DiscoPrivateKey, sorted_pair
from relay.store import MemoryStore, RelayRecord, VNIExhausted
from relay_operator.allocating import (
    RELAY_DEAD,
    RELAY_REKEYED,
    Allocator,
    CurrentAllocation,
    NoRelayAvailable,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(clock):
    return MemoryStore(clock=clock)


async def register(store, name, load=0, capacity=100, heartbeat_at=0.0, ttl=15.0):
    key = DiscoPrivateKey.generate().public
    record = RelayRecord(name, key, ("127.0.0.1:7000",), load, capacity, "0", heartbeat_at)
    await store.register(record, ttl)
    return record


def keys():
    return sorted_pair((DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public))


async def test_no_relay_is_a_clear_error(store):
    with pytest.raises(NoRelayAvailable, match="no live relay"):
        await Allocator(store).choose(None)
    await register(store, "a")
    with pytest.raises(NoRelayAvailable, match="'b'"):
        await Allocator(store).choose("b")


async def test_allocation_is_reused_while_its_relay_lives(store, clock):
    await register(store, "a")
    allocator = Allocator(store, clock)
    pair = keys()
    placed = await allocator.allocate(pair, "a")
    current = CurrentAllocation("a", placed.allocation.vni, placed.allocation.lamport_id)
    again = await allocator.current(pair, current)
    assert again.allocation == placed.allocation and not again.created
    assert await allocator.current(keys(), current) is None
    assert await allocator.current(pair, CurrentAllocation("a", 99, 1)) is None
    clock.now += 60
    assert await allocator.current(pair, current) is None


async def test_a_retry_after_a_crash_allocates_nothing_new(store, clock):
    await register(store, "a")
    pair = keys()
    first = await Allocator(store, clock).allocate(pair, "a")
    retried = await Allocator(store, clock).allocate(pair, "a")
    assert retried.allocation == first.allocation
    assert not retried.created


async def test_burst_spreads_over_relays_before_heartbeats_catch_up(store, clock):
    await register(store, "a", load=0, capacity=100)
    await register(store, "b", load=0, capacity=100)
    allocator = Allocator(store, clock)
    chosen = []
    for _ in range(10):
        relay = await allocator.choose(None)
        await allocator.allocate(keys(), relay.name)
        chosen.append(relay.name)
    assert chosen.count("a") == chosen.count("b") == 5


async def test_concurrent_choices_spread_before_any_allocation(store, clock):
    """The handlers choose in one pass and allocate in the next: choices alone must spread."""
    await register(store, "a", load=0, capacity=100)
    await register(store, "b", load=0, capacity=100)
    allocator = Allocator(store, clock)
    chosen = [(await allocator.choose(None)).name for _ in range(10)]
    assert chosen.count("a") == chosen.count("b") == 5


async def test_replacing_onto_another_relay_frees_the_old_allocation(store, clock):
    await register(store, "a")
    await register(store, "b")
    allocator = Allocator(store, clock)
    pair = keys()
    old = (await allocator.allocate(pair, "a")).allocation
    previous = CurrentAllocation("a", old.vni, old.lamport_id)
    new = await allocator.allocate(pair, "b", previous)
    assert new.relay.name == "b" and new.created
    assert await store.allocations("a") == []


async def test_allocating_on_a_relay_that_died_meanwhile_is_refused(store, clock):
    await register(store, "a", ttl=1)
    clock.now += 2
    with pytest.raises(NoRelayAvailable, match="no longer alive"):
        await Allocator(store, clock).allocate(keys(), "a")


async def test_a_relays_capacity_bounds_its_vnis(store, clock):
    await register(store, "small", capacity=2)
    allocator = Allocator(store, clock)
    vnis = [(await allocator.allocate(keys(), "small")).allocation.vni for _ in range(2)]
    assert sorted(vnis) == [1, 2]
    with pytest.raises(VNIExhausted):
        await allocator.allocate(keys(), "small")


async def test_holding_finds_an_allocation_a_crash_left_on_a_live_relay(store, clock):
    await register(store, "a")
    await register(store, "b")
    allocator = Allocator(store, clock)
    pair = keys()
    assert await allocator.holding(pair) is None
    await allocator.allocate(pair, "b")
    assert await allocator.holding(pair) == "b"
    assert await allocator.holding(pair, exclude="b") is None


async def test_a_relay_back_under_another_key_no_longer_serves_what_the_status_names(store, clock):
    first = await register(store, "a", heartbeat_at=clock.now)
    allocator = Allocator(store, clock)
    pair = keys()
    placed = await allocator.allocate(pair, "a")
    named = CurrentAllocation(
        "a", placed.allocation.vni, placed.allocation.lamport_id, str(first.server_disco)
    )
    assert await allocator.server_gone(named) is None
    assert (await allocator.current(pair, named)).allocation == placed.allocation
    await register(store, "a", heartbeat_at=clock.now)  # the same name, a new key
    assert await allocator.server_gone(named) == RELAY_REKEYED
    assert await allocator.current(pair, named) is None
    clock.now += 60
    assert await allocator.server_gone(named) == RELAY_DEAD


class CountingStore(MemoryStore):
    """The memory store, counting its calls and the most ever in flight at once. A call of
    ``relays`` or ``allocate`` waits until its gate is open, so that the callers pile up."""

    def __init__(self, clock):
        super().__init__(clock=clock)
        self.gates = {"relays": asyncio.Event(), "allocate": asyncio.Event()}
        self.in_flight = self.most_in_flight = self.relay_reads = 0

    async def _counted(self, gate, call):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gates[gate].wait()
            return await call()
        finally:
            self.in_flight -= 1

    async def relays(self):
        self.relay_reads += 1
        return await self._counted("relays", super().relays)

    async def allocate(self, *args, **kwargs):
        call = super().allocate
        return await self._counted("allocate", lambda: call(*args, **kwargs))


async def test_a_burst_of_allocations_keeps_the_store_calls_in_flight_bounded(clock):
    store = CountingStore(clock)
    store.gates["relays"].set()
    await register(store, "a", capacity=1000)
    allocator = Allocator(store, clock, max_calls=4)
    burst = [asyncio.create_task(allocator.allocate(keys(), "a")) for _ in range(50)]
    while store.in_flight < 4:
        await asyncio.sleep(0)
    for _ in range(100):
        await asyncio.sleep(0)
    assert store.in_flight == 4
    store.gates["allocate"].set()
    placed = await asyncio.gather(*burst)
    assert len({p.allocation.vni for p in placed}) == 50
    assert store.most_in_flight == 4


async def test_callers_waiting_for_the_relays_share_one_read(clock):
    store = CountingStore(clock)
    store.gates["relays"].set()
    await register(store, "a")
    store.gates["relays"].clear()
    reads_before = store.relay_reads
    allocator = Allocator(store, clock)
    readers = [asyncio.create_task(allocator.relays()) for _ in range(20)]
    while store.in_flight < 1:
        await asyncio.sleep(0)
    store.gates["relays"].set()
    results = await asyncio.gather(*readers)
    assert store.relay_reads == reads_before + 1
    assert all(set(r) == {"a"} for r in results)
    # A read after that one is done is a read of its own: nothing stale is kept.
    await allocator.relays()
    assert store.relay_reads == reads_before + 2


async def test_a_reader_cancelled_while_waiting_leaves_the_read_to_the_others(clock):
    store = CountingStore(clock)
    store.gates["relays"].set()
    await register(store, "a")
    store.gates["relays"].clear()
    allocator = Allocator(store, clock)
    first = asyncio.create_task(allocator.relays())
    second = asyncio.create_task(allocator.relays())
    while store.in_flight < 1:
        await asyncio.sleep(0)
    first.cancel()
    store.gates["relays"].set()
    assert set(await second) == {"a"}
    with pytest.raises(asyncio.CancelledError):
        await first
