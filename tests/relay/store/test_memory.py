"""The memory store: PROTOCOL.md's allocation rules, VNI choice and LamportIDs."""

import tracemalloc

import pytest

from relay.geneve import MAX_VNI
from relay.keys import DiscoPrivateKey
from relay.store import MemoryStore, VNIExhausted


def pair():
    return DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public


async def test_same_pair_not_yet_bound_gets_the_same_allocation_in_either_order():
    store = MemoryStore()
    a, b = pair()
    first = await store.allocate("r", (a, b), now=100.0)
    again = await store.allocate("r", (b, a), now=150.0)
    assert first.created and not again.created
    assert again.allocation == first.allocation
    assert again.allocation.allocated_at == 100.0


async def test_same_pair_after_bind_is_discarded_and_allocated_afresh():
    store = MemoryStore()
    keys = pair()
    first = (await store.allocate("r", keys, 1.0)).allocation
    assert await store.mark_bound("r", first.vni, first.lamport_id)
    second = await store.allocate("r", keys, 2.0)
    assert second.created
    assert second.replaced == first.as_bound()
    assert second.allocation.lamport_id > first.lamport_id
    assert second.allocation.vni != first.vni
    assert [a.vni for a in await store.allocations("r")] == [second.allocation.vni]


async def test_lamport_ids_rise_per_relay_and_vnis_are_unique():
    store = MemoryStore()
    allocations = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(50)]
    assert [a.lamport_id for a in allocations] == list(range(1, 51))
    assert len({a.vni for a in allocations}) == 50
    other = (await store.allocate("other", pair(), 0.0)).allocation
    assert other.lamport_id == 1


async def test_no_vni_free_is_an_error_and_freeing_one_makes_room():
    store = MemoryStore(max_vni=3)
    allocations = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(3)]
    assert sorted(a.vni for a in allocations) == [1, 2, 3]
    with pytest.raises(VNIExhausted):
        await store.allocate("r", pair(), 0.0)
    assert await store.free("r", 2, allocations[1].lamport_id)
    again = await store.allocate("r", pair(), 0.0)
    assert again.allocation.vni == 2
    assert again.allocation.lamport_id == 4


async def test_freed_vnis_come_back_last():
    store = MemoryStore(max_vni=10)
    first = (await store.allocate("r", pair(), 0.0)).allocation
    await store.free("r", first.vni, first.lamport_id)
    second = (await store.allocate("r", pair(), 0.0)).allocation
    assert second.vni == 2


async def test_free_and_mark_bound_name_one_allocation_exactly():
    store = MemoryStore()
    allocation = (await store.allocate("r", pair(), 0.0)).allocation
    assert not await store.free("r", allocation.vni, allocation.lamport_id + 1)
    assert not await store.mark_bound("r", allocation.vni, allocation.lamport_id + 1)
    assert not await store.free("nobody", allocation.vni, allocation.lamport_id)
    assert await store.free("r", allocation.vni, allocation.lamport_id)
    assert not await store.free("r", allocation.vni, allocation.lamport_id)
    assert await store.allocations("r") == []


async def test_memory_grows_with_allocations_not_with_the_vni_space():
    """The reference pre-allocates a 64 MB pool of 2^24 VNIs; this store must not."""
    tracemalloc.start()
    try:
        store = MemoryStore(max_vni=MAX_VNI)
        await store.allocate("r", pair(), 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_max_vni_out_of_range_is_refused():
    with pytest.raises(ValueError):
        MemoryStore(max_vni=MAX_VNI + 1)
    with pytest.raises(ValueError):
        MemoryStore(max_vni=0)
