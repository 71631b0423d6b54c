"""The Relay objects' write rules (relay_operator/relay_objects.py), as pure decisions."""

from __future__ import annotations

import dataclasses

from relay.protocol.keys import DiscoPrivateKey
from relay.resource.relay_status import relay_status
from relay.store import RelayRecord
from relay_operator.relay_objects import Written, object_name, plan

KEY = DiscoPrivateKey.generate().public
REFRESH = 60.0


def record(**changes) -> RelayRecord:
    base = RelayRecord("relay-a", KEY, ("192.0.2.1:7000",), 3, 100, "1.0", heartbeat_at=1000.0)
    return dataclasses.replace(base, **changes)


def written(rec: RelayRecord, at: float) -> Written:
    return Written(relay_status(rec, None, generation=1, now=at), at, "uid-1")


def test_a_new_relay_is_created_with_its_status_and_a_registered_event():
    write = plan(record(), None, now=1000.0, refresh=REFRESH)
    assert write is not None and write.create
    assert write.status["state"] == "Alive"
    assert write.status["endpoints"] == 3 and write.status["capacity"] == 100
    assert write.status["serverDiscoShort"] == str(KEY).removeprefix("discokey:")[:12]
    assert [c["status"] for c in write.status["conditions"]] == ["True"]
    assert write.event is not None and write.event[:2] == ("Normal", "Registered")


def test_only_load_and_heartbeat_changed_waits_for_the_refresh_interval():
    last = written(record(), at=1000.0)
    busier = record(load=7, heartbeat_at=1030.0)
    assert plan(busier, last, now=1030.0, refresh=REFRESH) is None
    write = plan(busier, last, now=1060.0, refresh=REFRESH)
    assert write is not None and not write.create and write.event is None
    assert write.status["endpoints"] == 7


def test_nothing_changed_writes_nothing_even_after_the_refresh_interval():
    last = written(record(), at=1000.0)
    assert plan(record(), last, now=5000.0, refresh=REFRESH) is None


def test_a_relay_that_dies_is_written_at_once_with_a_warning():
    last = written(record(), at=1000.0)
    write = plan(record(alive=False), last, now=1001.0, refresh=REFRESH)
    assert write is not None and write.status["state"] == "Dead"
    ready = write.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "HeartbeatStopped")
    assert write.event is not None and write.event[:2] == ("Warning", "Stopped")


def test_a_dead_relay_is_not_refreshed():
    last = written(record(alive=False), at=1000.0)
    assert plan(record(alive=False, load=0), last, now=9000.0, refresh=REFRESH) is None


def test_a_relay_back_or_rekeyed_is_written_at_once_with_its_event():
    dead = written(record(alive=False), at=1000.0)
    back = plan(record(heartbeat_at=1010.0), dead, now=1010.0, refresh=REFRESH)
    assert back is not None and back.event is not None and back.event[1] == "CameBack"
    alive = written(record(), at=1000.0)
    other_key = DiscoPrivateKey.generate().public
    rekeyed = plan(record(server_disco=other_key), alive, now=1001.0, refresh=REFRESH)
    assert rekeyed is not None and rekeyed.event is not None and rekeyed.event[1] == "Rekeyed"
    moved = plan(record(addr_ports=("192.0.2.9:7000",)), alive, now=1001.0, refresh=REFRESH)
    assert moved is not None and moved.event is None


def test_the_ready_condition_keeps_its_transition_time_while_it_holds():
    first = relay_status(record(), None, generation=1, now=1000.0)
    later = relay_status(record(load=9), first, generation=1, now=2000.0)
    assert (
        later["conditions"][0]["lastTransitionTime"] == first["conditions"][0]["lastTransitionTime"]
    )


def test_an_idle_fleet_of_100_relays_writes_at_most_once_per_relay_per_refresh():
    """Ten minutes of passes every 5 s, every relay's load changing at every pass."""
    known: dict[str, Written] = {}
    writes = 0
    for step in range(0, 600, 5):
        now = 1000.0 + step
        for i in range(100):
            rec = record(name=f"relay-{i}", load=step % 7, heartbeat_at=now)
            write = plan(rec, known.get(rec.name), now=now, refresh=REFRESH)
            if write is not None:
                writes += 1
                known[rec.name] = Written(write.status, now, "uid")
    assert writes <= 100 * (600 / REFRESH + 1)


def test_relay_names_that_kubernetes_refuses_get_no_object():
    assert object_name("relay-0") == "relay-0"
    assert object_name("relay.eu-1") == "relay.eu-1"
    assert object_name("Relay_A") is None
    assert object_name("-relay") is None
