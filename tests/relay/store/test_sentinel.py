"""What the Redis store must show behind a real Redis Sentinel.

The rule tests (test_rules.py) run behind Sentinel too; these show that calls
and change announcements follow a failover to the new master, and that a
master, sentinel or password out of reach is StoreUnavailable, promptly.
"""

import asyncio
import os
import signal
import time

import pytest

from relay.protocol.keys import DiscoPublicKey
from relay.store import SUBSCRIBED, Allocation, Change, StoreUnavailable
from relay.store.redis import RedisStore
from tests.relay.store.conftest import DB, PASSWORD
from tests.support.redis_cluster import LocalSentinel
from tests.support.waiting import wait_until


def pair():
    return DiscoPublicKey(os.urandom(32)), DiscoPublicKey(os.urandom(32))


@pytest.fixture
def own_sentinel(tmp_path):
    """Start a master and a sentinel of this test's own: ``own_sentinel(replicas=1, ...)``."""
    setups = []

    def start(**options):
        directory = tmp_path / f"setup{len(setups)}"
        directory.mkdir()
        setup = LocalSentinel(directory, password=PASSWORD, **options)
        setups.append(setup)
        setup.start()
        return setup

    yield start
    for setup in setups:
        setup.stop(signal.SIGKILL)


async def test_calls_and_changes_follow_a_failover_to_the_new_master(own_sentinel):
    setup = own_sentinel(replicas=1, down_after_ms=300)
    (replica,) = setup.replicas
    store = RedisStore.from_url(setup.url(DB), timeout=0.5)
    try:
        changes = store.changes("r")
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        first = (await store.allocate("r", pair(), 0.0)).allocation
        assert await asyncio.wait_for(anext(changes), 5) == Change("alloc", 1, 1)
        with setup.master.client(DB) as client:
            assert client.wait(1, 5000) == 1

        setup.master.stop(signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match="Redis master 'relayfleet' via Sentinel at"):
            await asyncio.wait_for(anext(changes), 5)

        async def allocated() -> Allocation | None:
            try:
                return (await store.allocate("r", pair(), 0.0)).allocation
            except StoreUnavailable:
                return None

        second = await wait_until(allocated, "the store to reach a new master", timeout=15.0)
        assert setup.current_master() is replica
        assert (second.vni, second.lamport_id) == (2, 2)
        assert await store.allocations("r") == [first, second]

        changes = store.changes("r")
        assert await asyncio.wait_for(anext(changes), 5) == SUBSCRIBED
        with replica.client(DB) as client:
            channel = store.channel("r")
            assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]
        assert await store.free("r", [(first.vni, first.lamport_id)]) == [True]
        assert await asyncio.wait_for(anext(changes), 5) == Change("free", 1, 1)
        await changes.aclose()
    finally:
        await store.close()


async def test_a_master_sentinel_or_password_out_of_reach_is_unavailable_promptly(own_sentinel):
    setup = own_sentinel()
    sentinel_port = setup.sentinel.port
    store = RedisStore.from_url(setup.url())
    wrong = RedisStore.from_url(
        f"redis+sentinel://:not-the-password@127.0.0.1:{sentinel_port}/relayfleet"
    )
    try:
        with pytest.raises(StoreUnavailable, match="via Sentinel at") as caught:
            await wrong.allocate("r", pair(), 0.0)
        assert "not-the-password" not in str(caught.value)

        assert (await store.allocate("r", pair(), 0.0)).created
        setup.sentinel.stop()
        assert (await store.allocate("r", pair(), 0.0)).created, "a connection made is kept"
        newcomer = RedisStore.from_url(setup.url())
        try:
            started = time.monotonic()
            message = f"Redis master 'relayfleet' via Sentinel at 127.0.0.1:{sentinel_port} is"
            with pytest.raises(StoreUnavailable, match=f"{message} unavailable.*No master found"):
                await newcomer.allocations("r")
            assert time.monotonic() - started < 1.0
        finally:
            await newcomer.close()

        setup.sentinel.start()
        setup.master.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            await store.allocate("r", pair(), 0.0)
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            await anext(store.changes("r"))
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()
        await wrong.close()
