"""docs/protocol.md's allocation rules, VNI choice and LamportIDs, against every store."""

import asyncio
from dataclasses import replace

import pytest

from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPrivateKey
from relay.store import SUBSCRIBED, Change, MemoryStore, RelayRecord, VNIExhausted
from relay.store.redis import RedisStore
from tests.support.waiting import wait_until


def pair():
    return DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public


async def test_same_pair_not_yet_bound_gets_the_same_allocation_in_either_order(make_store):
    store = make_store()
    a, b = pair()
    first = await store.allocate("r", (a, b), now=100.0)
    again = await store.allocate("r", (b, a), now=150.0)
    assert first.created and not again.created
    assert again.allocation == first.allocation
    assert again.allocation.allocated_at == 100.0


async def test_same_pair_after_bind_is_discarded_and_allocated_afresh(make_store):
    store = make_store()
    keys = pair()
    first = (await store.allocate("r", keys, 1.0)).allocation
    assert await store.mark_bound("r", [(first.vni, first.lamport_id)]) == [True]
    second = await store.allocate("r", keys, 2.0)
    assert second.created
    assert second.replaced == first.as_bound()
    assert second.allocation.lamport_id > first.lamport_id
    assert second.allocation.vni != first.vni
    assert [a.vni for a in await store.allocations("r")] == [second.allocation.vni]


async def test_lamport_ids_rise_per_relay_and_vnis_are_unique(make_store):
    store = make_store()
    allocations = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(50)]
    assert [a.lamport_id for a in allocations] == list(range(1, 51))
    assert len({a.vni for a in allocations}) == 50
    other = (await store.allocate("other", pair(), 0.0)).allocation
    assert other.lamport_id == 1


async def test_no_vni_free_is_an_error_and_freeing_one_makes_room(make_store):
    store = make_store(max_vni=3)
    allocations = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(3)]
    assert sorted(a.vni for a in allocations) == [1, 2, 3]
    with pytest.raises(VNIExhausted):
        await store.allocate("r", pair(), 0.0)
    assert await store.free("r", [(2, allocations[1].lamport_id)]) == [True]
    again = await store.allocate("r", pair(), 0.0)
    assert again.allocation.vni == 2
    assert again.allocation.lamport_id == 4


async def test_a_per_call_limit_is_the_relays_capacity(make_store):
    store = make_store()
    allocations = [(await store.allocate("r", pair(), 0.0, max_vni=2)).allocation for _ in range(2)]
    assert sorted(a.vni for a in allocations) == [1, 2]
    with pytest.raises(VNIExhausted, match="all 2 VNIs"):
        await store.allocate("r", pair(), 0.0, max_vni=2)
    assert (await store.allocate("r", pair(), 0.0, max_vni=3)).allocation.vni == 3


async def test_freed_vnis_come_back_last(make_store):
    store = make_store(max_vni=10)
    first = (await store.allocate("r", pair(), 0.0)).allocation
    await store.free("r", [(first.vni, first.lamport_id)])
    second = (await store.allocate("r", pair(), 0.0)).allocation
    assert second.vni == 2


async def test_the_vni_search_wraps_from_the_cursor_to_the_first_free_one(make_store):
    store = make_store(max_vni=4)
    allocations = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(4)]
    for allocation in allocations[2], allocations[0]:
        assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    assert [(await store.allocate("r", pair(), 0.0)).allocation.vni for _ in range(2)] == [1, 3]


async def test_free_and_mark_bound_name_one_allocation_exactly(make_store):
    store = make_store()
    allocation = (await store.allocate("r", pair(), 0.0)).allocation
    assert await store.free("r", [(allocation.vni, allocation.lamport_id + 1)]) == [False]
    assert await store.mark_bound("r", [(allocation.vni, allocation.lamport_id + 1)]) == [False]
    assert await store.free("nobody", [(allocation.vni, allocation.lamport_id)]) == [False]
    assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [False]
    assert await store.allocations("r") == []


async def test_unknown_or_impossible_vnis_and_lamport_ids_are_simply_not_found(make_store):
    store = make_store()
    allocation = (await store.allocate("r", pair(), 0.0)).allocation
    for vni, lamport_id in [(0, 1), (MAX_VNI + 1, 1), (-1, 1), (allocation.vni, -1), (9, 1)]:
        assert await store.free("r", [(vni, lamport_id)]) == [False]
        assert await store.mark_bound("r", [(vni, lamport_id)]) == [False]
    assert await store.allocations("r") == [allocation]


async def test_mark_bound_keeps_the_allocation_and_is_idempotent(make_store):
    store = make_store()
    allocation = (await store.allocate("r", pair(), 7.25)).allocation
    assert await store.mark_bound("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    assert await store.mark_bound("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    assert await store.allocations("r") == [allocation.as_bound()]
    assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    assert await store.mark_bound("r", [(allocation.vni, allocation.lamport_id)]) == [False]


async def test_a_vni_freed_while_bound_comes_back_unbound(make_store):
    store = make_store(max_vni=1)
    first = (await store.allocate("r", pair(), 0.0)).allocation
    assert await store.mark_bound("r", [(first.vni, first.lamport_id)]) == [True]
    assert await store.free("r", [(first.vni, first.lamport_id)]) == [True]
    second = (await store.allocate("r", pair(), 1.0)).allocation
    assert second.vni == first.vni and not second.bound
    assert await store.allocation("r", second.vni) == second


async def test_one_mark_bound_marks_many_and_answers_for_each_in_order(make_store):
    store = make_store()
    made = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(300)]
    gone = made[7]
    await store.free("r", [(gone.vni, gone.lamport_id)])
    marks = [(a.vni, a.lamport_id) for a in made]
    marks[3] = (made[3].vni, made[3].lamport_id + 1)  # a LamportID the VNI no longer has
    marks.insert(200, (0, 1))  # never a VNI
    unmarkable = {marks[3], marks[200], (gone.vni, gone.lamport_id)}
    expected = [mark not in unmarkable for mark in marks]
    assert await store.mark_bound("r", marks) == expected
    assert expected.count(False) == 3
    live = [a for a in made if a is not gone]
    assert await store.allocations("r") == [a if a is made[3] else a.as_bound() for a in live]
    assert await store.mark_bound("r", []) == []


async def test_one_free_frees_many_answers_for_each_in_order_and_announces_each(make_store):
    store = make_store()
    made = [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(300)]
    kept = made[150]
    frees = [(a.vni, a.lamport_id) for a in made if a is not kept]
    frees[3] = (made[3].vni, made[3].lamport_id + 1)  # a LamportID the VNI no longer has
    frees.insert(200, (0, 1))  # never a VNI
    frees.append(frees[10])  # freed earlier in the same call
    expected = [free not in (frees[3], frees[200]) for free in frees]
    expected[-1] = False
    changes = store.changes("r")
    try:
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        assert await store.free("r", frees) == expected
        assert await store.allocations("r") == [made[3], kept]
        freed = [free for free, done in zip(frees, expected, strict=True) if done]
        announced = [await asyncio.wait_for(anext(changes), 5) for _ in freed]
        assert announced == [Change("free", vni, lamport_id) for vni, lamport_id in freed]
        assert await store.free("r", []) == []
    finally:
        await changes.aclose()


async def test_allocations_list_every_live_one_oldest_first(make_store):
    store = make_store()
    made = [(await store.allocate("r", pair(), float(i))).allocation for i in range(5)]
    await store.free("r", [(made[1].vni, made[1].lamport_id)])
    await store.mark_bound("r", [(made[3].vni, made[3].lamport_id)])
    expected = [made[0], made[2], made[3].as_bound(), made[4]]
    assert await store.allocations("r") == expected
    assert await store.allocations("nobody") == []


def test_max_vni_out_of_range_is_refused():
    with pytest.raises(ValueError):
        MemoryStore(max_vni=MAX_VNI + 1)
    with pytest.raises(ValueError):
        MemoryStore(max_vni=0)
    for bad in 0, MAX_VNI + 1:
        with pytest.raises(ValueError):
            RedisStore.from_url("redis://127.0.0.1:1", max_vni=bad)


async def test_one_allocation_is_found_by_its_vni(make_store):
    store = make_store()
    allocation = (await store.allocate("r", pair(), 3.0)).allocation
    assert await store.allocation("r", allocation.vni) == allocation
    await store.mark_bound("r", [(allocation.vni, allocation.lamport_id)])
    assert await store.allocation("r", allocation.vni) == allocation.as_bound()
    assert await store.allocation("r", allocation.vni + 1) is None
    assert await store.allocation("r", 0) is None
    assert await store.allocation("nobody", allocation.vni) is None
    await store.free("r", [(allocation.vni, allocation.lamport_id)])
    assert await store.allocation("r", allocation.vni) is None


async def test_changes_start_with_subscribed_and_follow_every_change_in_order(make_store):
    store = make_store()
    changes = store.changes("r")
    others = store.changes("other")
    try:
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        assert await asyncio.wait_for(anext(others), 5) == SUBSCRIBED
        first = (await store.allocate("r", pair(), 0.0)).allocation
        await store.allocate("r", first.disco_keys, 0.0)
        assert await store.mark_bound("r", [(first.vni, first.lamport_id)]) == [True]
        second = (await store.allocate("r", first.disco_keys, 0.0)).allocation
        assert await store.free("r", [(second.vni, second.lamport_id + 1)]) == [False]
        assert await store.free("r", [(second.vni, second.lamport_id)]) == [True]
        await store.allocate("other", pair(), 0.0)
        expected = [  # a bound mark is not announced
            Change("alloc", first.vni, first.lamport_id),
            Change("free", first.vni, first.lamport_id),
            Change("alloc", second.vni, second.lamport_id),
            Change("free", second.vni, second.lamport_id),
        ]
        assert [await asyncio.wait_for(anext(changes), 5) for _ in expected] == expected
        assert await asyncio.wait_for(anext(others), 5) == Change("alloc", 1, 1)
    finally:
        await changes.aclose()
        await others.aclose()


def record(name, load=0, heartbeat_at=0.0):
    return RelayRecord(
        name=name,
        server_disco=DiscoPrivateKey.generate().public,
        addr_ports=("192.0.2.1:3478", "[2001:db8::1]:3478"),
        load=load,
        capacity=1000,
        version="0.1.0",
        heartbeat_at=heartbeat_at,
    )


async def test_relays_register_and_stay_alive_while_their_heartbeat_lasts(make_store):
    store = make_store()
    a, b = record("relay-a", load=3, heartbeat_at=12.5), record("relay-b")
    await store.register(b, ttl=60.0)
    await store.register(a, ttl=0.05)
    assert sorted(await store.relays(), key=lambda r: r.name) == [a, b]

    async def a_dead() -> bool:
        return not {r.name: r.alive for r in await store.relays()}["relay-a"]

    await wait_until(a_dead, "relay-a's heartbeat to expire", timeout=5.0, interval=0.01)
    assert {r.name: r.alive for r in await store.relays()} == {"relay-a": False, "relay-b": True}

    again = replace(a, load=4, heartbeat_at=13.5)
    await store.register(again, ttl=60.0)
    assert sorted(await store.relays(), key=lambda r: r.name) == [again, b]


async def test_a_scan_yields_every_allocation_once_in_slices(make_store):
    store = make_store()
    made = [(await store.allocate("r", pair(), 1.0)).allocation for _ in range(2500)]
    freed = made[::7]
    for allocation in freed:
        assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    slices = [found async for found in store.scan_allocations("r")]
    scanned = [allocation for found in slices for allocation in found]
    assert len(slices) > 1
    assert sorted(scanned, key=lambda a: a.vni) == sorted(
        (a for a in made if a not in freed), key=lambda a: a.vni
    )
    assert [found async for found in store.scan_allocations("nobody")] == []


async def test_holding_names_the_relay_with_an_allocation_for_the_pair(make_store):
    store = make_store()
    keys = pair()
    assert await store.holding(["r", "s"], keys) is None
    made = (await store.allocate("s", keys, 1.0)).allocation
    assert await store.holding(["r", "s"], tuple(reversed(keys))) == "s"
    assert await store.holding(["r"], keys) is None
    assert await store.free("s", [(made.vni, made.lamport_id)]) == [True]
    assert await store.holding(["r", "s"], keys) is None
    assert await store.holding([], keys) is None


async def test_holding_asks_every_relay_of_a_large_fleet(make_store):
    """Forty relays, whose keys a cluster spreads over all its nodes: the one holding the
    pair is found wherever it is in the list."""
    store = make_store()
    keys = pair()
    fleet = [f"relay-{n}" for n in range(40)]
    for holder in (fleet[0], fleet[23], fleet[-1]):
        made = (await store.allocate(holder, keys, 1.0)).allocation
        assert await store.holding(fleet, keys) == holder
        assert await store.holding([r for r in fleet if r != holder], keys) is None
        assert await store.free(holder, [(made.vni, made.lamport_id)]) == [True]
