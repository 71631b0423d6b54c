"""What only the Redis store must show, against a real redis-server.

Atomic allocation under concurrency, memory that grows with endpoints only, a
hash-tagged key layout, persistence across a restart with AOF, outages turned
into StoreUnavailable and recovered from, change notifications, the registry.
"""

import asyncio
import itertools
import os
import signal
import time
from collections import deque

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPublicKey
from relay.store import (
    SUBSCRIBED,
    Allocation,
    Change,
    RelayRecord,
    StoreError,
    StoreUnavailable,
)
from relay.store.redis import RedisStore, _parse_change
from tests.relay.store.conftest import DB
from tests.support.redis_server import RedisServer, self_signed_certificate

KEY_NAMES = ("lamport", "endpoints", "pairs", "cursor")


def pair():
    return DiscoPublicKey(os.urandom(32)), DiscoPublicKey(os.urandom(32))


async def key_names(raw, prefix):
    return sorted([key.decode() async for key in raw.scan_iter(match=f"{prefix}*")])


def relay_keys(prefix, relay):
    return [f"{prefix}{{{relay}}}:{name}" for name in KEY_NAMES]


@pytest.fixture
async def raw(redis_server):
    """A plain client on the tests' database of the session server."""
    client = aioredis.Redis.from_url(redis_server.url(DB))
    yield client
    await client.aclose()


@pytest.fixture
def own_server(tmp_path):
    """Start a redis-server of this test's own (which it may stop): ``own_server(*args)``."""
    servers = []

    def start(*args, **options):
        directory = tmp_path / f"redis{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, **({"args": args} if args else {}), **options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


async def test_concurrent_allocators_never_share_a_vni_and_lamport_ids_only_rise(redis_stores):
    """50 tasks over 5 clients, 10 000 allocations, frees between: VNIs wrap and get reused.

    LamportIDs rise in issue order: an allocation asked for after another one
    returned has a larger LamportID.
    """
    max_vni, tasks, per_task, keep = 2048, 50, 200, 30
    stores = [redis_stores(max_vni=max_vni) for _ in range(5)]
    holder: dict[int, int] = {}
    issued: list[list[Allocation]] = [[] for _ in range(tasks)]
    still_held: list[Allocation] = []
    events = itertools.count()
    calls: list[tuple[int, int, int]] = []

    async def allocator(task):
        store = stores[task % len(stores)]
        held = deque()
        for _ in range(per_task):
            started = next(events)
            result = await store.allocate("r", pair(), time.time())
            allocation = result.allocation
            calls.append((started, next(events), allocation.lamport_id))
            assert result.created and result.replaced is None
            assert allocation.vni not in holder, f"VNI {allocation.vni} handed out twice"
            holder[allocation.vni] = task
            issued[task].append(allocation)
            held.append(allocation)
            if len(held) > keep:
                oldest = held.popleft()
                del holder[oldest.vni]
                assert await store.free("r", [(oldest.vni, oldest.lamport_id)]) == [True]
        still_held.extend(held)

    await asyncio.wait_for(asyncio.gather(*(allocator(t) for t in range(tasks))), 20)

    lamport_ids = [a.lamport_id for allocations in issued for a in allocations]
    assert sorted(lamport_ids) == list(range(1, tasks * per_task + 1))
    for allocations in issued:
        ids = [a.lamport_id for a in allocations]
        assert ids == sorted(ids)
    by_end = sorted((finished, lamport_id) for _, finished, lamport_id in calls)
    done, highest_done = 0, 0
    for started, _, lamport_id in sorted(calls):
        while done < len(by_end) and by_end[done][0] < started:
            highest_done = max(highest_done, by_end[done][1])
            done += 1
        assert lamport_id > highest_done, "a LamportID below one already returned"
    assert max(a.vni for allocations in issued for a in allocations) == max_vni
    assert await stores[0].allocations("r") == sorted(still_held, key=lambda a: a.lamport_id)


async def test_memory_grows_with_allocations_only(redis_stores, raw, prefix):
    store = redis_stores(max_vni=MAX_VNI)
    keys = relay_keys(prefix, "r")

    async def footprint():
        names = await key_names(raw, prefix)
        usage = [await raw.memory_usage(name, samples=0) for name in names]
        return len(names), sum(usage)

    assert await footprint() == (0, 0)
    first = (await store.allocate("r", pair(), 0.0)).allocation
    count, one = await footprint()
    assert count == 4 and one < 2048

    async def allocate(n):
        return [(await store.allocate("r", pair(), 0.0)).allocation for _ in range(n)]

    made = [a for chunk in await asyncio.gather(*(allocate(100) for _ in range(20))) for a in chunk]
    count, many = await footprint()
    assert count == 4
    per_endpoint = await store.memory_per_endpoint("r")
    assert per_endpoint == pytest.approx(many / 2001)
    assert 100 < per_endpoint <= 300

    for allocation in [first, *made]:
        assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [True]
    names = await key_names(raw, prefix)
    assert names == sorted([keys[0], keys[3]])
    assert (await footprint())[1] < 256
    assert await store.memory_per_endpoint("r") == 0.0


async def test_every_key_of_a_relay_is_in_one_cluster_slot(redis_stores, raw, prefix):
    store = redis_stores()
    allocation = (await store.allocate("relay-a", pair(), 0.0)).allocation
    await store.mark_bound("relay-a", [(allocation.vni, allocation.lamport_id)])
    await store.allocate("relay-a", allocation.disco_keys, 1.0)
    names = await key_names(raw, prefix)
    assert names == sorted(relay_keys(prefix, "relay-a"))
    assert store.channel("relay-a") == f"{prefix}{{relay-a}}:changes"
    slots = {key_slot(name.encode()) for name in [*names, store.channel("relay-a")]}
    assert slots == {key_slot(b"relay-a")}


async def test_records_are_compact_and_binary(redis_stores, raw, prefix):
    store = redis_stores()
    a, b = sorted(pair())
    allocation = (await store.allocate("r", (b, a), 1234.5678)).allocation
    _, endpoints, pairs, cursor = relay_keys(prefix, "r")
    assert await raw.hgetall(pairs) == {a.raw + b.raw: b"\0\0\1"}
    record = (await raw.hgetall(endpoints))[b"\0\0\1"]
    assert record == (1).to_bytes(8, "big") + a.raw + b.raw + (1234568).to_bytes(8, "big") + b"\0"
    assert await raw.get(cursor) == b"2"
    assert allocation.allocated_at == 1234.568


async def test_relay_names_and_prefixes_that_would_break_the_hash_tag_are_refused(redis_stores):
    store = redis_stores()
    for relay in "", "a{b", "a}b":
        with pytest.raises(ValueError):
            await store.allocate(relay, pair(), 0.0)
        with pytest.raises(ValueError):
            store.channel(relay)
    with pytest.raises(ValueError):
        RedisStore.from_url("redis://127.0.0.1:1", prefix="x{y}:")


async def test_password_and_database_come_from_the_url(redis_server, redis_stores, prefix):
    store = redis_stores()
    await store.allocate("r", pair(), 0.0)
    async with aioredis.Redis.from_url(redis_server.url(DB)) as in_db:
        assert await in_db.exists(*relay_keys(prefix, "r")) == 4
    async with aioredis.Redis.from_url(redis_server.url(0)) as other_db:
        assert await other_db.exists(*relay_keys(prefix, "r")) == 0
    wrong = RedisStore.from_url(f"redis://:not-the-password@127.0.0.1:{redis_server.port}/{DB}")
    try:
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{redis_server.port}") as caught:
            await wrong.allocate("r", pair(), 0.0)
        assert "not-the-password" not in str(caught.value)
    finally:
        await wrong.close()


async def test_tls_by_rediss_url(own_server, tmp_path):
    server = own_server("--save", "", "--appendonly", "no", tls=self_signed_certificate(tmp_path))
    assert server.url().startswith("rediss://")
    store = RedisStore.from_url(server.url())
    try:
        allocation = (await store.allocate("r", pair(), 0.0)).allocation
        assert await store.allocations("r") == [allocation]
    finally:
        await store.close()
    plain = RedisStore.from_url(f"redis://127.0.0.1:{server.port}", timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await plain.allocate("r", pair(), 0.0)
    finally:
        await plain.close()


async def test_other_redis_errors_are_store_errors_not_redis_py_ones(redis_stores, raw, prefix):
    store = redis_stores()
    await raw.set(relay_keys(prefix, "r")[1], b"not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.allocate("r", pair(), 0.0)
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.allocations("r")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_nothing_allocated_is_lost_across_a_restart_with_aof(own_server, sig):
    server = own_server("--save", "", "--appendonly", "yes", "--appendfsync", "always")
    store = RedisStore.from_url(server.url())
    try:
        made = [(await store.allocate("r", pair(), 1000.0 + i)).allocation for i in range(200)]
        for allocation in made[:50]:
            assert await store.free("r", [(allocation.vni, allocation.lamport_id)]) == [True]
        for allocation in made[50:100]:
            assert await store.mark_bound("r", [(allocation.vni, allocation.lamport_id)]) == [True]
        before = await store.allocations("r")
        assert len(before) == 150

        server.restart(sig)

        after = RedisStore.from_url(server.url())
        try:
            assert await after.allocations("r") == before
            unbound = made[150]
            again = await after.allocate("r", unbound.disco_keys, 5000.0)
            assert not again.created and again.allocation == unbound
            fresh = (await store.allocate("r", pair(), 5000.0)).allocation
            assert fresh.lamport_id == 201
            assert fresh.vni == 201
            rebound = await after.allocate("r", made[50].disco_keys, 5000.0)
            assert rebound.replaced == made[50].as_bound()
            assert rebound.allocation.lamport_id == 202
        finally:
            await after.close()
    finally:
        await store.close()


async def test_a_stopped_redis_is_unavailable_promptly_and_the_store_recovers_by_itself(
    own_server,
):
    server = own_server()
    store = RedisStore.from_url(server.url())
    try:
        allocation = (await store.allocate("r", pair(), 0.0)).allocation
        server.stop()
        calls = [
            lambda: store.allocate("r", pair(), 0.0),
            lambda: store.mark_bound("r", [(allocation.vni, allocation.lamport_id)]),
            lambda: store.free("r", [(allocation.vni, allocation.lamport_id)]),
            lambda: store.allocations("r"),
            lambda: store.memory_per_endpoint("r"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port} is unavailable"):
                await call()
            assert time.monotonic() - started < 1.0

        server.start()
        result = await store.allocate("r", pair(), 0.0)
        assert result.created and result.allocation.lamport_id == 1
    finally:
        await store.close()


async def test_a_redis_that_does_not_answer_times_out_into_store_unavailable(own_server):
    server = own_server()
    store = RedisStore.from_url(server.url(socket_timeout=0.3))
    try:
        await store.allocate("r", pair(), 0.0)
        server.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await store.allocate("r", pair(), 0.0)
        assert 0.25 < time.monotonic() - started < 2.0
        server.resume()
        assert (await store.allocate("r", pair(), 0.0)).created
    finally:
        await store.close()


async def test_every_allocation_and_free_is_published_on_the_relay_channel(
    redis_server, redis_stores
):
    store = redis_stores()
    async with aioredis.Redis.from_url(redis_server.url(DB)) as client, client.pubsub() as pubsub:
        await pubsub.subscribe(store.channel("r"))
        await pubsub.subscribe(store.channel("other"))

        first = (await store.allocate("r", pair(), 0.0)).allocation
        await store.allocate("r", first.disco_keys, 0.0)
        await store.mark_bound("r", [(first.vni, first.lamport_id)])
        await store.mark_bound("r", [(first.vni, first.lamport_id)])
        second = (await store.allocate("r", first.disco_keys, 0.0)).allocation
        await store.free("r", [(second.vni, second.lamport_id + 1)])
        await store.free("r", [(second.vni, second.lamport_id)])
        await store.allocate("other", pair(), 0.0)

        expected = [  # bound marks are not announced
            ("r", "alloc 1 1"),
            ("r", "free 1 1"),
            ("r", "alloc 2 2"),
            ("r", "free 2 2"),
            ("other", "alloc 1 1"),
        ]
        received = []
        deadline = time.monotonic() + 5.0
        while len(received) < len(expected) and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                relay = "r" if message["channel"] == store.channel("r").encode() else "other"
                received.append((relay, message["data"].decode()))
        assert received == expected
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05) is None


def test_change_messages_are_read_with_ascii_digits_only():
    assert _parse_change(b"free 9 12") == Change("free", 9, 12)
    for data in ("free 9 \u00b2", "alloc \u0663 1", "bound 1 \uff11", "free 9 -1", "free 9"):
        assert _parse_change(data.encode()) is None


async def test_changes_resubscribe_after_a_dropped_connection_and_say_so(redis_stores, raw):
    store = redis_stores()
    changes = store.changes("r")
    try:
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        assert await raw.client_kill_filter(_type="pubsub") >= 1
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        allocation = (await store.allocate("r", pair(), 0.0)).allocation
        assert await asyncio.wait_for(anext(changes), 5) == Change("alloc", allocation.vni, 1)
    finally:
        await changes.aclose()


async def test_changes_end_in_store_unavailable_when_redis_stops_or_goes_silent(own_server):
    server = own_server()
    store = RedisStore.from_url(server.url(), timeout=0.3, keepalive=0.2)
    try:
        changes = store.changes("r")
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        server.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="stopped answering"):
            await asyncio.wait_for(anext(changes), 5)
        assert time.monotonic() - started < 2.0
        server.resume()

        changes = store.changes("r")
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            await asyncio.wait_for(anext(changes), 5)
        assert time.monotonic() - started < 1.0

        server.start()
        changes = store.changes("r")
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        allocation = (await store.allocate("r", pair(), 0.0)).allocation
        assert await asyncio.wait_for(anext(changes), 5) == Change("alloc", allocation.vni, 1)
        await changes.aclose()
    finally:
        await store.close()


async def test_the_registry_is_one_key_and_uses_the_servers_clock(redis_stores, raw, prefix):
    store = redis_stores()
    disco = DiscoPublicKey(os.urandom(32))
    record = RelayRecord("relay-a", disco, ("192.0.2.1:3478",), 1, 10, "0.1.0", -1e9)
    await store.register(record, ttl=30.0)
    assert await key_names(raw, prefix) == [f"{prefix}registry"]
    (listed,) = await store.relays()
    assert listed == record and listed.alive
    value = await raw.hget(f"{prefix}registry", "relay-a")
    expires_ms = int(value.split(b" ", 1)[0])
    seconds, micros = await raw.time()
    assert 29_000 < expires_ms - (seconds * 1000 + micros // 1000) <= 30_000


async def test_a_cancelled_call_is_cancelled_whenever_the_cancellation_comes(redis_stores):
    """Python 3.11's wait_for in redis-py can swallow a cancellation; the store must not."""
    swallowed = []
    for steps in range(120):
        store = redis_stores()
        until_cancelled = asyncio.Event()

        async def user(store=store, until_cancelled=until_cancelled):
            await store.allocations("r")
            await until_cancelled.wait()

        task = asyncio.create_task(user())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        if not done:
            swallowed.append(steps)
            until_cancelled.set()
        await store.close()
    assert swallowed == []
