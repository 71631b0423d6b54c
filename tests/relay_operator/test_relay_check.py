"""The fleet-wide relay check against the memory store: who gets marked, and when.

The annotation's real path (kubernetes patch, kopf handler, new allocation) is
tested end to end in test_e2e.py and tests/faults/test_relay_kill.py.
"""

from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import RELAY_DEAD_ANNOTATION
from relay.store import MemoryStore, RelayRecord
from relay_operator.allocating import Allocator
from relay_operator.relay_check import check_relays, index_entry


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def register(store, name, heartbeat_at):
    key = DiscoPrivateKey.generate().public
    record = RelayRecord(name, key, ("127.0.0.1:7000",), 0, 100, "0", heartbeat_at)
    await store.register(record, ttl=15.0)


def test_index_holds_only_resources_a_relay_serves():
    meta = {"namespace": "ns", "name": "e1", "annotations": {RELAY_DEAD_ANNOTATION: "r1"}}
    assert index_entry({"relay": "r1", "phase": "Bound"}, meta) == {"r1": ("ns", "e1", "r1")}
    assert index_entry({"relay": "r1", "phase": "Allocated"}, {"name": "e2"}) == {
        "r1": ("", "e2", None)
    }
    for status in ({"relay": "r1", "phase": "Expired"}, {"phase": "Pending"}, {}):
        assert index_entry(status, meta) is None


async def test_only_resources_of_dead_relays_are_marked_and_only_once():
    clock = Clock()
    store = MemoryStore(clock=clock)
    await register(store, "alive", heartbeat_at=clock.now)
    await register(store, "dead", heartbeat_at=clock.now)
    clock.now += 10
    await register(store, "alive", heartbeat_at=clock.now)
    clock.now += 10  # "dead" last beat 20 s ago, with a 15 s TTL
    by_relay = {
        "alive": [("ns", "a1", None)],
        "dead": [("ns", "d1", None), ("ns", "d2", "dead")],
        "gone": [("other", "g1", None)],  # no longer registered at all
    }
    marked = []

    async def mark(namespace, name, relay):
        marked.append((namespace, name, relay))

    assert await check_relays(by_relay, Allocator(store, clock), mark) == 2
    assert sorted(marked) == [("ns", "d1", "dead"), ("other", "g1", "gone")]


async def test_a_failed_mark_does_not_stop_the_others():
    clock = Clock()
    store = MemoryStore(clock=clock)
    by_relay = {"gone": [("ns", "x", None), ("ns", "y", None)]}
    marked = []

    async def mark(namespace, name, relay):
        if name == "x":
            raise RuntimeError("API server said no")
        marked.append(name)

    assert await check_relays(by_relay, Allocator(store, clock), mark) == 1
    assert marked == ["y"]
