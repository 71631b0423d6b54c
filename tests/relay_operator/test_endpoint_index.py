"""The operator's one index read as four: each part sees only its own keys."""

from relay_operator.endpoint_index import BY_RELAY, PAIRS, WAITING, IndexPart, entries


def test_a_resource_s_entries_are_keyed_by_part_and_skip_parts_it_is_not_in() -> None:
    assert entries(
        {
            PAIRS: {"a b": (True, "t", "uid-1")},
            BY_RELAY: None,
            WAITING: {},
        }
    ) == {(PAIRS, "a b"): (True, "t", "uid-1")}


def test_a_part_reads_and_iterates_only_its_own_keys() -> None:
    index = {
        (PAIRS, "a b"): [(True, "t", "uid-1")],
        (BY_RELAY, "relay-1"): [("ns", "x", None, None)],
        (BY_RELAY, "relay-2"): [("ns", "y", None, None)],
    }
    by_relay = IndexPart(index, BY_RELAY)
    assert sorted(by_relay) == ["relay-1", "relay-2"]
    assert len(by_relay) == 2
    assert by_relay["relay-1"] == [("ns", "x", None, None)]
    assert "a b" not in by_relay and "relay-2" in by_relay
    assert by_relay.get("a b") is None
    assert dict(IndexPart(index, PAIRS)) == {"a b": [(True, "t", "uid-1")]}
    assert len(IndexPart(index, WAITING)) == 0


def test_a_part_is_live() -> None:
    index: dict = {}
    waiting = IndexPart(index, WAITING)
    index[(WAITING, "New")] = [(1.0, 2.0)]
    assert dict(waiting) == {"New": [(1.0, 2.0)]}
