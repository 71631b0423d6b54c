"""The agent keeps the core and the store in step: announcements, resyncs, registry, write-back,
and a relay back under another disco key."""

import asyncio
import gc
import time
import weakref

import pytest

from relay.config import RelayConfig
from relay.protocol.core import Drop
from relay.protocol.keys import DiscoPrivateKey, raw_pair, sorted_pair
from relay.server import RelayServer
from relay.shells import gc_freeze
from relay.shells.agent import EXPIRY_BATCH, RESYNC_SHARE, resync_delay
from relay.shells.keyfile import RelaySecrets
from relay.store import Allocation, MemoryStore
from relay.store.interface import SCAN_SLICE
from relay.store.redis import RedisStore
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until


def new_pair():
    return sorted_pair((DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public))


async def test_an_allocation_made_elsewhere_is_installed_from_its_announcement(relay):
    server = relay.server
    result = await server.store.allocate(server.config.name, new_pair(), 0.0)
    vni = result.allocation.vni
    await wait_until(lambda: server.core.endpoint(vni) is not None, "installed")
    assert server.core.endpoint(vni).allocation == result.allocation


async def test_an_allocation_freed_elsewhere_stops_being_served(relay):
    pair = await relay.bound_pair()
    vni, lamport_id = pair.endpoint.vni, pair.endpoint.lamport_id
    assert await relay.server.store.free(relay.server.config.name, [(vni, lamport_id)]) == [True]
    await wait_until(lambda: relay.server.core.endpoint(vni) is None, "removed")
    pair.peers[0].send(pair.clients[0].data(b"after free"), relay.relay)
    await relay.dropped(Drop.UNKNOWN_VNI)


async def test_binding_is_written_back_so_the_next_allocation_is_new(relay):
    pair = await relay.bound_pair()
    store, name = relay.server.store, relay.server.config.name

    async def bound_in_store():
        return (await store.allocation(name, pair.endpoint.vni)).bound

    await wait_until(bound_in_store, "bound in the store")


async def test_resync_serves_exactly_the_stores_allocations(relay):
    server = relay.server
    name = server.config.name
    stray = Allocation(name, 4242, 99, raw_pair(new_pair()), 0.0)
    server.core.install(stray)
    kept = (await server.store.allocate(name, new_pair(), 0.0)).allocation
    await server.agent.resync()
    assert server.core.endpoint(4242) is None
    assert server.core.endpoint(kept.vni).allocation == kept


async def test_resync_replaces_an_endpoint_served_under_another_lamport_id(relay):
    server = relay.server
    name = server.config.name
    kept = (await server.store.allocate(name, new_pair(), 0.0)).allocation
    await wait_until(lambda: server.core.endpoint(kept.vni) is not None, "installed")
    server.core.install(Allocation(name, kept.vni, kept.lamport_id + 7, raw_pair(new_pair()), 0.0))
    await server.agent.resync()
    assert server.core.endpoint(kept.vni).allocation == kept


def test_a_resync_that_takes_long_puts_the_next_one_off_to_bound_its_share():
    assert resync_delay(60.0, 0.2) == 60.0
    assert resync_delay(60.0, RESYNC_SHARE * 60.0) == 60.0
    assert resync_delay(60.0, 8.0) == pytest.approx(8.0 / RESYNC_SHARE)
    assert 8.0 / resync_delay(60.0, 8.0) <= RESYNC_SHARE


async def test_the_relay_registers_itself_with_a_heartbeat(relay):
    server = relay.server
    await relay.pair()

    async def registered():
        return {r.name: r for r in await server.store.relays()}.get(server.config.name)

    await wait_until(registered, "registered")
    record = await registered()
    assert record.alive
    assert record.server_disco == server.core.server_key
    assert record.addr_ports == server.addr_ports
    assert record.capacity == server.config.max_endpoints


async def test_a_mass_expiry_is_worked_off_in_slices_between_which_the_loop_runs(relay_factory):
    h = await relay_factory("127.0.0.1", bind_lifetime=0.5)
    server, name = h.server, h.server.config.name
    total = 4 * EXPIRY_BATCH
    for _ in range(total):
        server.agent.install(
            (await server.store.allocate(name, new_pair(), server._clock())).allocation
        )
    seen: set[int] = set()

    async def watch() -> None:
        while True:
            seen.add(len(server.core))
            await asyncio.sleep(0)

    async def all_freed() -> bool:
        return not await server.store.allocations(name)

    watcher = asyncio.create_task(watch())
    await wait_until(all_freed, "every endpoint expired and freed", timeout=30)
    watcher.cancel()
    assert server.core.expired["bind"] == total
    assert any(0 < left < total for left in seen), "the loop never ran in the middle of expiry"


class Node:
    """A reference cycle, to be found by the garbage collector once dropped."""

    def __init__(self) -> None:
        self.me = self


async def test_endpoints_installed_one_at_a_time_are_exempted_from_collection(relay):
    # with automatic collection off, only the agent's own collection runs: every
    # EXEMPT_EVERY installs it collects cyclic garbage, then exempts what survives
    server, name = relay.server, relay.server.config.name
    allocations = [
        (await server.store.allocate(name, new_pair(), server._clock())).allocation
        for _ in range(gc_freeze.EXEMPT_EVERY)
    ]
    await wait_until(lambda: len(server.core) == len(allocations), "announcements installed")
    await server.agent.resync()  # exempts all there is, and the count of installs starts afresh
    for allocation in allocations:
        server.core.remove(allocation.vni, allocation.lamport_id)
    gc.disable()
    try:
        gc.collect()
        garbage = Node()
        collected = weakref.ref(garbage)
        del garbage
        frozen = gc.get_freeze_count()
        for allocation in allocations[:-1]:
            server.agent.install(allocation)
        assert gc.get_freeze_count() == frozen and collected() is not None
        server.agent.install(allocations[-1])
        assert collected() is None, "cyclic garbage was exempted, not collected"
        assert gc.get_freeze_count() >= frozen + len(allocations)
        scanned = {id(o) for o in gc.get_objects()}  # in one of the collector's generations
        endpoints = list(server.core.endpoints())
        assert len(endpoints) == len(allocations)
        assert not any(id(endpoint) in scanned for endpoint in endpoints)
    finally:
        gc.enable()


async def test_a_resync_installs_in_slices_between_which_the_loop_runs(relay):
    server, name = relay.server, relay.server.config.name
    total = 2 * SCAN_SLICE + 10
    for _ in range(total):
        await server.store.allocate(name, new_pair(), server._clock())
    await wait_until(lambda: len(server.core) == total, "announcements installed")
    for endpoint in server.core.endpoints():
        server.core.remove(endpoint.allocation.vni, endpoint.allocation.lamport_id)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(len(server.core))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await server.agent.resync()
    watcher.cancel()
    assert len(server.core) == total
    assert any(0 < installed < total for installed in seen)


# -- a relay back under another disco key ---------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def shared_store(request, tmp_path):
    """The store a relay's runs share: one MemoryStore object, or a real redis-server."""
    if request.param == "memory":
        store = MemoryStore()
        yield store
        await store.close()
        return
    with RedisServer(tmp_path) as server:
        store = RedisStore.from_url(server.url())
        yield store
        await store.close()


async def run_relay(store, secrets: RelaySecrets) -> RelayServer:
    config = RelayConfig(
        listen="127.0.0.1", port=0, api_listen=("127.0.0.1", 0), addrs=("127.0.0.1",),
        name="relay-r",
    )  # fmt: skip
    server = RelayServer(config, store, secrets)
    await server.start()
    return server


async def registered_as(store, name: str, key) -> bool:
    record = {r.name: r for r in await store.relays()}.get(name)
    return record is not None and record.server_disco == key


async def test_a_relay_back_under_a_new_key_frees_what_it_held_under_the_old_one(shared_store):
    """Without --key-file every start has a new key: what the store holds under the old one
    could never be bound, so it is freed before the new key is registered."""
    store = shared_store
    first = await run_relay(store, RelaySecrets.generate())
    await wait_until(lambda: registered_as(store, "relay-r", first.core.server_key), "registered")
    old = [(await store.allocate("relay-r", new_pair(), time.time())).allocation for _ in range(2)]
    assert await store.mark_bound("relay-r", [(old[1].vni, old[1].lamport_id)]) == [True]
    await wait_until(lambda: len(first.core) == 2, "both served")
    await first.close()

    second = await run_relay(store, RelaySecrets.generate())
    try:
        # an allocation asked for at once is made after the old ones are gone
        fresh = await second.allocate(*old[0].disco_keys)
        assert fresh.lamport_id > max(a.lamport_id for a in old)
        assert fresh.server_disco == second.core.server_key != first.core.server_key
        await wait_until(
            lambda: registered_as(store, "relay-r", second.core.server_key), "new key registered"
        )
        held = await store.allocations("relay-r")
        assert [(a.vni, a.lamport_id) for a in held] == [(fresh.vni, fresh.lamport_id)]
        assert second.agent.freed_under_old_key == 2
        for allocation in old:
            endpoint = second.core.endpoint(allocation.vni)
            assert endpoint is None or endpoint.allocation.lamport_id != allocation.lamport_id
    finally:
        await second.close()


async def test_a_relay_back_under_the_same_key_keeps_its_allocations(shared_store):
    store = shared_store
    secrets = RelaySecrets.generate()
    first = await run_relay(store, secrets)
    await wait_until(lambda: registered_as(store, "relay-r", first.core.server_key), "registered")
    kept = (await store.allocate("relay-r", new_pair(), time.time())).allocation
    await first.close()

    second = await run_relay(store, secrets)
    try:
        await wait_until(lambda: second.core.endpoint(kept.vni) is not None, "served again")
        assert second.agent.taken_over
        assert second.agent.freed_under_old_key == 0
        assert await store.allocations("relay-r") == [kept]
        again = await second.allocate(*kept.disco_keys)
        assert (again.vni, again.lamport_id) == (kept.vni, kept.lamport_id)
    finally:
        await second.close()
