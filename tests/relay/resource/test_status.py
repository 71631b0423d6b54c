"""Status building: every field of an allocation, and conditions by the API conventions."""

import re

from relay.protocol.core import ClientState, Endpoint, Handshake
from relay.protocol.keys import DiscoPrivateKey, raw_pair, sorted_pair
from relay.resource.status import (
    allocated_status,
    client_status,
    expired_status,
    live_status,
    missing_status,
    pending_status,
    set_condition,
)
from relay.store import Allocation, RelayRecord

KEYS = sorted_pair((DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public))
SERVER = DiscoPrivateKey.generate().public
RELAY = RelayRecord(
    "relay-1", SERVER, ("203.0.113.7:7000", "[2001:db8::7]:7000"), 3, 100, "0.1.0", 0.0
)
ALLOCATION = Allocation("relay-1", 42, 7, raw_pair(KEYS), 1_700_000_000.5)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_allocated_status_has_every_field():
    status = allocated_status(
        ALLOCATION, RELAY, bind_lifetime=30, steady_state_lifetime=300, generation=2, now=1e9
    )
    assert status["phase"] == "Allocated"
    assert status["relay"] == "relay-1"
    assert status["serverDisco"] == str(SERVER)
    assert status["addrPorts"] == ["203.0.113.7:7000", "[2001:db8::7]:7000"]
    assert (status["vni"], status["lamportID"]) == (42, 7)
    assert (status["bindLifetime"], status["steadyStateLifetime"]) == ("30s", "5m0s")
    assert status["allocatedAt"] == "2023-11-14T22:13:20Z"
    assert [c["discoKey"] for c in status["clients"]] == [str(k) for k in KEYS]
    assert all(c["handshake"] == "Init" for c in status["clients"])
    assert status["observedGeneration"] == 2
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Allocated"]["status"] == "True"
    assert by_type["Bound"] == {
        "type": "Bound",
        "status": "False",
        "reason": "WaitingForPeers",
        "message": "waiting for both peers to bind",
        "observedGeneration": 2,
        "lastTransitionTime": "2001-09-09T01:46:40Z",
    }


def test_pending_status_says_why():
    status = pending_status("NoRelayAvailable", "no live relay", generation=1, now=0)
    assert status["phase"] == "Pending"
    allocated, ready = status["conditions"]
    assert (allocated["type"], allocated["status"], allocated["reason"]) == (
        "Allocated",
        "False",
        "NoRelayAvailable",
    )
    assert RFC3339.match(allocated["lastTransitionTime"])
    assert (ready["type"], ready["status"], ready["reason"], ready["message"]) == (
        "Ready",
        "False",
        "NoRelayAvailable",
        "no live relay",
    )


def test_transition_time_moves_only_when_the_status_does():
    first = set_condition(None, "Bound", "False", "WaitingForPeers", "m", generation=1, now=100)
    same = set_condition(first, "Bound", "False", "StillWaiting", "m2", generation=2, now=200)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["reason"] == "StillWaiting" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Bound", "True", "Bound", "m3", generation=2, now=300)
    assert flipped[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_other_conditions_are_kept():
    conditions = set_condition(None, "Allocated", "True", "Allocated", "m", generation=1, now=1)
    both = set_condition(conditions, "Bound", "True", "Bound", "m", generation=1, now=2)
    assert [c["type"] for c in both] == ["Allocated", "Bound"]
    assert both[0] == conditions[0]


def test_live_status_names_each_peers_protocol_version_and_generation():
    endpoint = Endpoint(ALLOCATION)
    v0, v1 = endpoint.touch()
    v0.version, v0.handshake = 0, Handshake.CHALLENGE_SENT
    v1.version, v1.generation, v1.handshake = 1, 41, Handshake.CHALLENGE_SENT
    clients = live_status(endpoint, generation=1, now=1e9, conditions=None)["clients"]
    assert [(c.get("protocolVersion"), c.get("generation")) for c in clients] == [
        (0, None),
        (1, 41),
    ]
    assert "protocolVersion" not in client_status(KEYS[0], ClientState())


def by_type(status):
    return {c["type"]: c for c in status["conditions"]}


def allocated(generation=2, now=1e9, conditions=None):
    return allocated_status(
        ALLOCATION,
        RELAY,
        bind_lifetime=30,
        steady_state_lifetime=300,
        generation=generation,
        now=now,
        conditions=conditions,
    )


def test_an_allocated_endpoint_is_ready_and_every_condition_observes_the_generation():
    status = allocated(generation=5)
    conditions = by_type(status)
    assert set(conditions) == {"Allocated", "Bound", "Ready"}
    ready = conditions["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Allocated")
    assert ready["message"] == (
        "VNI 42 on relay relay-1 at 203.0.113.7:7000; waiting for both peers to bind"
    )
    assert {c["observedGeneration"] for c in status["conditions"]} == {5}
    assert status["observedGeneration"] == 5


def test_the_wide_columns_fields():
    status = allocated()
    assert status["serverDiscoShort"] == str(SERVER).removeprefix("discokey:")[:12]
    assert len(status["serverDiscoShort"]) == 12
    assert status["clientsBound"] == "0/2"


def bound_endpoint(bound: int) -> Endpoint:
    endpoint = Endpoint(ALLOCATION)
    for client in endpoint.touch()[:bound]:
        client.handshake = Handshake.BOUND
    endpoint.bound = bound == 2
    return endpoint


def test_the_relay_moving_allocated_to_bound_keeps_ready_and_its_transition_time():
    operator = allocated(now=1000)
    one = live_status(bound_endpoint(1), generation=2, now=2000, conditions=operator["conditions"])
    assert (one["phase"], one["clientsBound"]) == ("Allocated", "1/2")
    both = live_status(bound_endpoint(2), generation=2, now=3000, conditions=one["conditions"])
    assert (both["phase"], both["clientsBound"]) == ("Bound", "2/2")
    before, after = by_type(operator)["Ready"], by_type(both)["Ready"]
    assert (after["status"], after["reason"]) == ("True", "Bound")
    assert after["lastTransitionTime"] == before["lastTransitionTime"] == "1970-01-01T00:16:40Z"
    assert by_type(both)["Bound"]["lastTransitionTime"] == "1970-01-01T00:50:00Z"
    assert by_type(both)["Allocated"] == by_type(operator)["Allocated"]  # the operator's own


def test_expired_is_not_ready():
    status = expired_status("bind", generation=3, now=5000, conditions=allocated()["conditions"])
    ready = by_type(status)["Ready"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "Expired",
        3,
    )
    assert "relayfleet.io/reallocate" in ready["message"]
    assert ready["lastTransitionTime"] == "1970-01-01T01:23:20Z"
    assert status["clientsBound"] == "0/2"


def test_pending_after_the_relay_died_says_so_in_ready():
    status = pending_status(
        "NoRelayAvailable",
        "no live relay with a free VNI (0 alive of 1)",
        generation=2,
        now=2e9,
        conditions=allocated()["conditions"],
        ready_reason="RelayDead",
        ready_message="relay relay-1 stopped heart-beating, and no relay can take it",
    )
    conditions = by_type(status)
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "RelayDead")
    assert conditions["Allocated"]["reason"] == "NoRelayAvailable"
    assert conditions["Ready"]["lastTransitionTime"] == "2033-05-18T03:33:20Z"
    # placed again: Ready again, from then
    again = allocated(now=3e9, conditions=status["conditions"])
    assert by_type(again)["Ready"]["status"] == "True"
    assert by_type(again)["Ready"]["lastTransitionTime"] == "2065-01-24T05:20:00Z"


def test_a_status_written_before_ready_gets_what_it_lacks_once():
    old = allocated()
    old = {k: v for k, v in old.items() if k not in ("serverDiscoShort", "clientsBound")}
    old["conditions"] = [c for c in old["conditions"] if c["type"] != "Ready"]
    old["phase"], old["clients"][0]["handshake"] = "Bound", "Bound"
    missing = missing_status(old, generation=2, now=1e9)
    assert missing is not None
    assert missing["serverDiscoShort"] == str(SERVER).removeprefix("discokey:")[:12]
    assert missing["clientsBound"] == "1/2"
    ready = by_type(missing)["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Bound")
    assert missing_status({**old, **missing}, generation=2, now=1e9) is None
    assert missing_status(allocated(), generation=2, now=1e9) is None
    assert missing_status({"phase": "Pending"}, generation=1, now=1e9) is None
