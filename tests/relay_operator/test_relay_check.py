"""The fleet-wide relay check against the memory store: who gets marked, and when (a dead
relay, or one back under another disco key).

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
    return str(key)


def test_index_holds_only_resources_a_relay_serves():
    meta = {"namespace": "ns", "name": "e1", "annotations": {RELAY_DEAD_ANNOTATION: "r1"}}
    status = {"relay": "r1", "phase": "Bound", "serverDisco": "discokey:k"}
    assert index_entry(status, meta) == {"r1": ("ns", "e1", "r1", "discokey:k")}
    assert index_entry({"relay": "r1", "phase": "Allocated"}, {"name": "e2"}) == {
        "r1": ("", "e2", None, None)
    }
    for status in ({"relay": "r1", "phase": "Expired"}, {"phase": "Pending"}, {}):
        assert index_entry(status, meta) is None


async def test_only_resources_of_dead_relays_are_marked_and_only_once():
    clock = Clock()
    store = MemoryStore(clock=clock)
    await register(store, "alive", heartbeat_at=clock.now)
    dead = await register(store, "dead", heartbeat_at=clock.now)
    clock.now += 10
    alive = await register(store, "alive", heartbeat_at=clock.now)
    clock.now += 10  # "dead" last beat 20 s ago, with a 15 s TTL
    by_relay = {
        "alive": [("ns", "a1", None, alive), ("ns", "a2", None, None)],
        "dead": [("ns", "d1", None, dead), ("ns", "d2", "dead", dead)],
        "gone": [("other", "g1", None, "discokey:gone")],  # no longer registered at all
    }
    marked = []

    async def mark(namespace, name, relay):
        marked.append((namespace, name, relay))

    assert await check_relays(by_relay, Allocator(store, clock), mark) == 2
    assert sorted(marked) == [("ns", "d1", "dead"), ("other", "g1", "gone")]


async def test_a_failed_mark_does_not_stop_the_others():
    clock = Clock()
    store = MemoryStore(clock=clock)
    by_relay = {"gone": [("ns", "x", None, None), ("ns", "y", None, None)]}
    marked = []

    async def mark(namespace, name, relay):
        if name == "x":
            raise RuntimeError("API server said no")
        marked.append(name)

    assert await check_relays(by_relay, Allocator(store, clock), mark) == 1
    assert marked == ["y"]


async def test_resources_of_a_relay_back_under_another_key_are_marked():
    """The relay lives, but not as the server their status names: it freed their allocations."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    old = await register(store, "rekeyed", heartbeat_at=clock.now)
    new = await register(store, "rekeyed", heartbeat_at=clock.now)
    by_relay = {
        "rekeyed": [
            ("ns", "stale", None, old),
            ("ns", "placed-again", None, new),
            ("ns", "being-placed", "rekeyed", old),
        ]
    }
    marked = []

    async def mark(namespace, name, relay):
        marked.append((namespace, name, relay))

    assert await check_relays(by_relay, Allocator(store, clock), mark) == 1
    assert marked == [("ns", "stale", "rekeyed")]
