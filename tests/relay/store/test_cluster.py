"""What the Redis store must show on a real 3-master Redis Cluster.

The rule tests (test_rules.py) run on the cluster too; these show what only a
cluster can: concurrent allocation over relays on different nodes, every key
of a relay in one slot while relays spread over the nodes, change
announcements from every node, and a node that goes silent or away making
only its own relays unavailable, until it is back.
"""

import asyncio
import itertools
import os
import signal
import time
from collections import deque

import pytest
from redis.crc import key_slot

from relay.protocol.keys import DiscoPublicKey
from relay.store import SUBSCRIBED, Allocation, Change, RelayRecord, StoreUnavailable
from relay.store.redis import RedisStore
from tests.support.redis_cluster import LocalCluster
from tests.support.redis_server import free_port

KEY_NAMES = ("lamport", "endpoints", "pairs", "cursor")


def pair():
    return DiscoPublicKey(os.urandom(32)), DiscoPublicKey(os.urandom(32))


def relays_on_every_node(cluster):
    """One relay name per node of the cluster, in the order of ``cluster.nodes``."""
    by_port = {}
    for number in itertools.count():
        name = f"relay-{number}"
        by_port.setdefault(cluster.node_of(name).port, name)
        if len(by_port) == len(cluster.nodes):
            return [by_port[node.port] for node in cluster.nodes]


def record(name):
    disco = DiscoPublicKey(os.urandom(32))
    return RelayRecord(name, disco, ("192.0.2.1:3478",), 0, 100, "0.1.0", 1.0)


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster of this test's own, which it may pause and stop; no password."""
    cluster = LocalCluster(tmp_path)
    cluster.start()
    yield cluster
    cluster.stop(signal.SIGKILL)


async def test_concurrent_allocators_on_three_nodes_never_share_a_vni_and_ids_only_rise(
    cluster_stores, redis_cluster
):
    """20 tasks over 4 clients, 2 000 allocations over 3 relays on 3 nodes, frees between.

    A task holds at most 3 endpoints of a relay, so a relay has at most 60 in
    use, below max_vni: allocation never runs out, while VNIs wrap around and
    get reused.
    """
    relays = relays_on_every_node(redis_cluster)
    max_vni, tasks, per_task, keep = 64, 20, 100, 2
    stores = [cluster_stores(max_vni=max_vni) for _ in range(4)]
    holder: dict[tuple[str, int], int] = {}
    issued: dict[str, list[list[Allocation]]] = {r: [[] for _ in range(tasks)] for r in relays}
    still_held: dict[str, list[Allocation]] = {relay: [] for relay in relays}

    async def allocator(task):
        store = stores[task % len(stores)]
        held = {relay: deque() for relay in relays}
        for step in range(per_task):
            relay = relays[(task + step) % len(relays)]
            result = await store.allocate(relay, pair(), 0.0)
            allocation = result.allocation
            assert result.created and result.replaced is None
            assert (relay, allocation.vni) not in holder, f"{relay} VNI {allocation.vni} twice"
            holder[relay, allocation.vni] = task
            issued[relay][task].append(allocation)
            held[relay].append(allocation)
            if len(held[relay]) > keep:
                oldest = held[relay].popleft()
                del holder[relay, oldest.vni]
                assert await store.free(relay, [(oldest.vni, oldest.lamport_id)]) == [True]
        for relay in relays:
            still_held[relay].extend(held[relay])

    await asyncio.wait_for(asyncio.gather(*(allocator(t) for t in range(tasks))), 20)

    assert sum(len(a) for per_relay in issued.values() for a in per_relay) == tasks * per_task
    for relay in relays:
        lamport_ids = [a.lamport_id for per_task in issued[relay] for a in per_task]
        assert sorted(lamport_ids) == list(range(1, len(lamport_ids) + 1))
        for per_task_allocations in issued[relay]:
            ids = [a.lamport_id for a in per_task_allocations]
            assert ids == sorted(ids)
        assert max(a.vni for per_task in issued[relay] for a in per_task) == max_vni
        expected = sorted(still_held[relay], key=lambda a: a.lamport_id)
        assert await stores[0].allocations(relay) == expected


async def test_a_relays_keys_share_one_slot_and_relays_spread_over_the_nodes(
    cluster_stores, redis_cluster, prefix
):
    relays = relays_on_every_node(redis_cluster)
    store = cluster_stores()
    for relay in relays:
        allocation = (await store.allocate(relay, pair(), 0.0)).allocation
        assert await store.mark_bound(relay, [(allocation.vni, allocation.lamport_id)]) == [True]
        assert (await store.allocate(relay, allocation.disco_keys, 1.0)).replaced
        await store.register(record(relay), ttl=60.0)

    node_of_key = {}
    for node in redis_cluster.nodes:
        with node.client() as client:
            for key in client.scan_iter(match=f"{prefix}*"):
                node_of_key[key.decode()] = node.port

    relay_keys = {relay: [f"{prefix}{{{relay}}}:{name}" for name in KEY_NAMES] for relay in relays}
    assert sorted(node_of_key) == sorted(
        [f"{prefix}registry", *itertools.chain(*relay_keys.values())]
    )
    for node, relay in zip(redis_cluster.nodes, relays, strict=True):
        assert {node_of_key[key] for key in relay_keys[relay]} == {node.port}
        names = [*relay_keys[relay], store.channel(relay)]
        assert {key_slot(name.encode()) for name in names} == {key_slot(relay.encode())}

    assert [r.name for r in await store.relays()] == sorted(relays)
    for relay in relays:
        assert 50 < await store.memory_per_endpoint(relay) < 2048


async def test_changes_on_a_cluster_come_from_the_node_of_each_relay(cluster_stores, redis_cluster):
    """The subscription is on the node owning the relay's slot; a dropped one ends the iteration."""
    relays = relays_on_every_node(redis_cluster)
    store = cluster_stores()
    feeds = {relay: store.changes(relay) for relay in relays}
    try:
        for feed in feeds.values():
            assert await asyncio.wait_for(anext(feed), 5) == SUBSCRIBED
        for node, relay in zip(redis_cluster.nodes, relays, strict=True):
            with node.client() as client:
                assert client.pubsub_numsub(store.channel(relay)) == [
                    (store.channel(relay).encode(), 1)
                ]
        for relay in reversed(relays):
            allocation = (await store.allocate(relay, pair(), 0.0)).allocation
            change = await asyncio.wait_for(anext(feeds[relay]), 5)
            assert change == Change("alloc", allocation.vni, allocation.lamport_id)

        with redis_cluster.nodes[0].client() as client:
            assert client.client_kill_filter(_type="pubsub") == 1
        with pytest.raises(StoreUnavailable, match="Redis Cluster at "):
            await asyncio.wait_for(anext(feeds[relays[0]]), 5)

        feeds[relays[0]] = store.changes(relays[0])
        assert await asyncio.wait_for(anext(feeds[relays[0]]), 5) == SUBSCRIBED
        allocation = (await store.allocate(relays[0], pair(), 0.0)).allocation
        change = await asyncio.wait_for(anext(feeds[relays[0]]), 5)
        assert change == Change("alloc", allocation.vni, allocation.lamport_id)
    finally:
        for feed in feeds.values():
            await feed.aclose()


async def test_a_node_gone_silent_or_away_fails_its_relays_only_until_it_is_back(own_cluster):
    """The other nodes keep serving, even a node that must be sent the scripts again."""
    relays = relays_on_every_node(own_cluster)
    node = own_cluster.nodes[0]
    store = RedisStore.from_url(own_cluster.url(), timeout=0.3, keepalive=0.2)
    try:
        assert (await store.allocate(relays[0], pair(), 0.0)).created
        changes = store.changes(relays[0])
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED

        node.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="stopped answering"):
            await asyncio.wait_for(anext(changes), 5)
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Redis Cluster at"):
            await store.allocate(relays[0], pair(), 0.0)
        assert time.monotonic() - started < 2.0
        for relay in relays[1:]:
            assert (await store.allocate(relay, pair(), 0.0)).created
        node.resume()

        changes = store.changes(relays[0])
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        node.stop(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Redis Cluster at"):
            await asyncio.wait_for(anext(changes), 5)
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{node.port}"):
            await store.allocations(relays[0])
        assert time.monotonic() - started < 1.0
        for live in own_cluster.nodes[1:]:
            with live.client() as client:
                assert client.script_flush()
        for relay in relays[1:]:
            assert (await store.allocate(relay, pair(), 0.0)).created, "scripts sent whole"

        node.start()
        own_cluster.wait_until_ok()
        changes = store.changes(relays[0])
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        allocation = (await store.allocate(relays[0], pair(), 0.0)).allocation
        change = await asyncio.wait_for(anext(changes), 5)
        assert change == Change("alloc", allocation.vni, allocation.lamport_id)
        await changes.aclose()
    finally:
        await store.close()


async def test_a_cluster_refusing_the_password_or_not_there_is_unavailable(redis_cluster):
    port = redis_cluster.nodes[0].port
    wrong = RedisStore.from_url(f"redis+cluster://:not-the-password@127.0.0.1:{port}")
    nobody_port = free_port()
    nobody = RedisStore.from_url(f"redis+cluster://127.0.0.1:{nobody_port},127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StoreUnavailable, match=f"Redis Cluster at 127.0.0.1:{port}") as caught:
            await wrong.allocate("r", pair(), 0.0)
        assert "not-the-password" not in str(caught.value)
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{nobody_port}.* is unavailable"):
            await nobody.relays()
    finally:
        await wrong.close()
        await nobody.close()
