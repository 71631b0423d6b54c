"""The agent keeps the core and the store in step: announcements, resyncs, registry, write-back."""

import asyncio

from relay.protocol.core import Drop
from relay.protocol.keys import DiscoPrivateKey, sorted_pair
from relay.shells.agent import EXPIRY_BATCH
from relay.store import Allocation
from relay.store.interface import SCAN_SLICE
from tests.support.waiting import wait_until


def new_pair():
    return sorted_pair(DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public)


async def test_an_allocation_made_elsewhere_is_installed_from_its_announcement(relay):
    server = relay.server
    result = await server.store.allocate(server.config.name, new_pair(), 0.0)
    vni = result.allocation.vni
    await wait_until(lambda: server.core.endpoint(vni) is not None, "installed")
    assert server.core.endpoint(vni).allocation == result.allocation


async def test_an_allocation_freed_elsewhere_stops_being_served(relay):
    pair = await relay.bound_pair()
    vni, lamport_id = pair.endpoint.vni, pair.endpoint.lamport_id
    assert await relay.server.store.free(relay.server.config.name, vni, lamport_id)
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
    stray = Allocation(name, 4242, 99, new_pair(), 0.0)
    server.core.install(stray)
    kept = (await server.store.allocate(name, new_pair(), 0.0)).allocation
    await server.agent.resync()
    assert server.core.endpoint(4242) is None
    assert server.core.endpoint(kept.vni).allocation == kept


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
