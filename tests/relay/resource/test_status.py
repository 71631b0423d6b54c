"""Status building: every field of an allocation, and conditions by the API conventions."""

import re

from relay.protocol.core import ClientState, Endpoint, Handshake
from relay.protocol.keys import DiscoPrivateKey, sorted_pair
from relay.resource.status import (
    allocated_status,
    client_status,
    live_status,
    pending_status,
    set_condition,
)
from relay.store import Allocation, RelayRecord

KEYS = sorted_pair(DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public)
SERVER = DiscoPrivateKey.generate().public
RELAY = RelayRecord(
    "relay-1", SERVER, ("203.0.113.7:7000", "[2001:db8::7]:7000"), 3, 100, "0.1.0", 0.0
)
ALLOCATION = Allocation("relay-1", 42, 7, KEYS, 1_700_000_000.5)
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
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Allocated",
        "False",
        "NoRelayAvailable",
    )
    assert RFC3339.match(condition["lastTransitionTime"])


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
