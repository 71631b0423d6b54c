"""The operator's gauges the dashboard and the alerts read: each relay's liveness, endpoints and
capacity, and the RelayEndpoints waiting for an allocation (relay_operator/pending.py).

Plain unit tests, no process: the collector is fed relay records and an index
as kopf would keep it, and read as Prometheus would.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import (
    ALLOCATED,
    BOUND,
    EXPIRED,
    NO_RELAY_AVAILABLE,
    PAIR_IN_USE,
    PENDING,
    READY_CONDITION,
    RELAY_DEAD,
)
from relay.resource.status import timestamp
from relay.store import RelayRecord
from relay_operator.metrics import OperatorMetrics
from relay_operator.pending import FRESH_FOR, NEW, REASONS, count_waiting, waiting_entry

NOW = 1_800_000_000.0


def relay(name: str, load: int, capacity: int, alive: bool) -> RelayRecord:
    key = DiscoPrivateKey.generate().public
    return RelayRecord(name, key, ("127.0.0.1:7000",), load, capacity, "0", NOW, alive=alive)


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def pending_resource(reason: str, since: float, created: float) -> tuple[dict, dict]:
    status = {
        "phase": PENDING,
        "conditions": [
            {"type": READY_CONDITION, "status": "False", "reason": reason,
             "lastTransitionTime": timestamp(since)},
        ],
    }  # fmt: skip
    return status, {"creationTimestamp": timestamp(created)}


def test_each_relay_has_its_liveness_endpoints_and_capacity():
    relays = {
        "relay-a": relay("relay-a", 12, 100, alive=True),
        "relay-b": relay("relay-b", 3, 50, alive=False),
    }
    got = samples(OperatorMetrics(lambda: relays, clock=lambda: NOW))
    for name, up, endpoints, capacity in (("relay-a", 1, 12, 100), ("relay-b", 0, 3, 50)):
        labels = (("relay", name),)
        assert got[("relayfleet_operator_relay_up", labels)] == up
        assert got[("relayfleet_operator_relay_endpoints", labels)] == endpoints
        assert got[("relayfleet_operator_relay_capacity", labels)] == capacity
    assert got[("relayfleet_operator_relays", (("state", "alive"),))] == 1
    assert got[("relayfleet_operator_relays", (("state", "dead"),))] == 1


def test_a_relay_gone_from_the_registry_has_no_gauges_left():
    relays = {"relay-a": relay("relay-a", 1, 10, alive=True)}
    metrics = OperatorMetrics(lambda: relays, clock=lambda: NOW)
    assert ("relayfleet_operator_relay_up", (("relay", "relay-a"),)) in samples(metrics)
    relays.clear()
    assert not [key for key in samples(metrics) if key[0] == "relayfleet_operator_relay_up"]


def test_before_the_index_is_handed_over_every_reason_reads_zero():
    got = samples(OperatorMetrics(dict, clock=lambda: NOW))
    for reason in REASONS:
        assert got[("relayfleet_operator_pending_endpoints", (("reason", reason),))] == 0
        key = ("relayfleet_operator_pending_endpoints_oldest_seconds", (("reason", reason),))
        assert got[key] == 0


def test_waiting_resources_are_counted_by_reason_with_the_oldest_age():
    metrics = OperatorMetrics(dict, clock=lambda: NOW)
    index: dict[str, list[tuple[float, float]]] = {}
    metrics.count_pending(index)  # the live index: filled after the hand-over, as kopf does
    for status, meta in (
        ({}, {"creationTimestamp": timestamp(NOW - 5)}),
        ({}, {"creationTimestamp": timestamp(NOW - 90)}),
        pending_resource(NO_RELAY_AVAILABLE, since=NOW - 70, created=NOW - 3600),
        pending_resource(PAIR_IN_USE, since=NOW - 10, created=NOW - 10),
    ):
        for reason, entry in (waiting_entry(status, meta, now=NOW - 1) or {}).items():
            index.setdefault(reason, []).append(entry)
    got = samples(metrics)

    def value(name: str, reason: str) -> float:
        return got[(f"relayfleet_operator_pending_endpoints{name}", (("reason", reason),))]

    assert value("", NEW) == 2
    assert value("_oldest_seconds", NEW) == 90
    # waiting since Ready turned False, not since its creation an hour ago
    assert value("", NO_RELAY_AVAILABLE) == 1
    assert value("_oldest_seconds", NO_RELAY_AVAILABLE) == 70
    assert value("", PAIR_IN_USE) == 1
    assert value("_oldest_seconds", PAIR_IN_USE) == 10
    assert value("", RELAY_DEAD) == 0
    assert value("_oldest_seconds", RELAY_DEAD) == 0


def test_allocated_bound_and_expired_resources_do_not_wait():
    meta = {"creationTimestamp": timestamp(NOW - 600)}
    for phase in (ALLOCATED, BOUND, EXPIRED):
        assert waiting_entry({"phase": phase}, meta, now=NOW) is None


def test_a_pending_resource_without_conditions_waits_since_its_creation():
    meta = {"creationTimestamp": timestamp(NOW - 30)}
    assert waiting_entry({"phase": PENDING}, meta, now=NOW) == {PENDING: (NOW - 30, NOW)}


def test_a_frozen_standby_view_is_left_out():
    """kopf pauses a standby replica's watch, so its index stops being recomputed: an entry
    not seen for FRESH_FOR is not counted, while one kopf's retries keep seeing is."""
    index = {
        NO_RELAY_AVAILABLE: [
            (NOW - 600, NOW - FRESH_FOR - 1),  # frozen: last recomputed long ago
            (NOW - 45, NOW - 20),  # seen at the last retry, 20 s ago
        ]
    }
    counted = count_waiting(index, NOW)
    assert counted[NO_RELAY_AVAILABLE].count == 1
    assert counted[NO_RELAY_AVAILABLE].oldest_seconds == 45
    assert count_waiting({PAIR_IN_USE: [(NOW - 600, NOW - 3600)]}, NOW)[PAIR_IN_USE].count == 0
