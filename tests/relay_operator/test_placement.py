"""Placement chooses a live relay with room, least loaded first, or the pinned one."""

from relay.protocol.keys import DiscoPrivateKey
from relay.store import RelayRecord
from relay_operator.placement import choose_relay

KEY = DiscoPrivateKey.generate().public


def relay(name, load=0, capacity=100, alive=True):
    return RelayRecord(name, KEY, ("127.0.0.1:7000",), load, capacity, "0", 0.0, alive)


def test_least_loaded_share_wins():
    relays = [relay("a", load=50, capacity=100), relay("b", load=60, capacity=1000)]
    assert choose_relay(relays).name == "b"


def test_ties_break_by_load_then_name():
    assert choose_relay([relay("b"), relay("a")]).name == "a"


def test_dead_and_full_relays_are_never_chosen():
    relays = [relay("dead", alive=False), relay("full", load=100, capacity=100)]
    assert choose_relay(relays) is None
    assert choose_relay([*relays, relay("ok", load=99)]).name == "ok"


def test_pinned_relay_or_nothing():
    relays = [relay("a"), relay("b", load=90)]
    assert choose_relay(relays, pinned="b").name == "b"
    assert choose_relay(relays, pinned="gone") is None
    assert choose_relay([relay("b", alive=False)], pinned="b") is None


def test_recent_placements_count_until_the_next_heartbeat():
    relays = [relay("a", load=10), relay("b", load=12)]
    assert choose_relay(relays).name == "a"
    assert choose_relay(relays, placed_since_heartbeat={"a": 5}).name == "b"
    assert choose_relay([relay("a", load=99)], placed_since_heartbeat={"a": 1}) is None


def test_no_relays():
    assert choose_relay([]) is None
