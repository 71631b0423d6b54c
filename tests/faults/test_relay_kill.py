"""Fault: a relay process is killed (SIGKILL) while both relays carry traffic.

Issue 8's second fault. When a relay stops heart-beating, the operator's
fleet-wide relay check (relay_operator/relay_check.py) has its endpoints
placed on a live relay with new allocations, and nothing on the surviving
relay may notice: its bound endpoints keep
relaying without a lost packet and keep their allocations. This module
kills one of two relays while a bound endpoint on each makes round trips,
waits for the re-placement, binds the moved endpoint's clients again on the
survivor, and then checks the invariants every fault must keep.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.support import (
    LIST_INTERVAL,
    ChangeLog,
    Checks,
    Endpoints,
    Peers,
    TrafficProbe,
    assert_no_outage,
    bound_probe,
    check_invariants,
    phase,
    settled,
    start_relay,
    stop_relays,
)
from tests.relay.relay_process import RelayProcess
from tests.support.waiting import wait_until

COUNT = 15
VICTIM, SURVIVOR = "rk-north", "rk-south"


@pytest.mark.timeout(180)
async def test_a_killed_relays_endpoints_move_and_the_other_relay_keeps_relaying(
    crd, kube_namespace, redis_server, store, operator_process, fault_table, tmp_path
):
    row = fault_table("relay killed (SIGKILL) under traffic")
    checks = Checks(row.checked)
    endpoints = Endpoints(crd, kube_namespace)
    changes = ChangeLog(redis_server.url()).start()
    url = redis_server.url()
    relays: dict[str, RelayProcess] = {}
    probes: dict[str, TrafficProbe] = {}
    try:
        relays[VICTIM] = await start_relay(crd, url, VICTIM, tmp_path, heartbeat="300ms")
        operator = operator_process("operator", "1s")
        # Unpinned, so that they may move, and placed while the victim is the only relay.
        on_victim = Peers.fresh("probe-victim")
        victims = [Peers.fresh(f"victim-{i:02}") for i in range(COUNT)]
        await endpoints.create([on_victim, *victims])
        probes[VICTIM] = await bound_probe(endpoints, on_victim, log=operator.log)
        relays[SURVIVOR] = await start_relay(crd, url, SURVIVOR, tmp_path, heartbeat="300ms")
        on_survivor = Peers.fresh("probe-survivor", relay=SURVIVOR)
        survivors = [Peers.fresh(f"survivor-{i:02}", relay=SURVIVOR) for i in range(COUNT)]
        await endpoints.create([on_survivor, *survivors])
        probes[SURVIVOR] = await bound_probe(endpoints, on_survivor, log=operator.log)
        everyone = [on_victim, *victims, on_survivor, *survivors]
        expected = {p.name: "Allocated" for p in everyone}
        expected |= {on_victim.name: "Bound", on_survivor.name: "Bound"}
        before = await settled(endpoints, expected, timeout=60, log=operator.log)
        placed = {name: r["status"] for name, r in before.items()}
        moving = sorted(n for n, s in placed.items() if s["relay"] == VICTIM)
        staying = sorted(n for n, s in placed.items() if s["relay"] == SURVIVOR)
        assert (len(moving), len(staying)) == (COUNT + 1, COUNT + 1), placed
        for probe in probes.values():
            await probe.start().warmed_up()

        fault_start = time.monotonic()
        await relays[VICTIM].kill_as_a_container()
        row.injected = (
            f"SIGKILL to relay {VICTIM} and its workers, holding {len(moving)} endpoints "
            "(1 bound, relaying), "
            f"while {SURVIVOR} held {len(staying)} (1 bound, relaying)"
        )

        async def moved() -> dict[str, dict[str, Any]] | None:
            resources = await endpoints.list()
            statuses = {n: r.get("status", {}) for n, r in resources.items()}
            done = all(
                statuses[n].get("relay") == SURVIVOR and phase(resources[n]) == "Allocated"
                for n in moving
            )
            return resources if done else None

        after = await wait_until(
            moved,
            f"{len(moving)} endpoints moved to {SURVIVOR}",
            timeout=60,
            interval=LIST_INTERVAL,
        )
        fault_end = time.monotonic()
        row.checked(f"re-placed {fault_end - fault_start:.1f} s after the kill")
        reports = {
            VICTIM: probes[VICTIM].finish(),
            SURVIVOR: probes[SURVIVOR].finish(after=fault_end),
        }
        probes.clear()

        with checks.check(f"the endpoints on {SURVIVOR} kept their allocation") as outcome:
            for name in staying:
                now, then = after[name]["status"], placed[name]
                assert (now["relay"], now["vni"], now["lamportID"]) == (
                    then["relay"],
                    then["vni"],
                    then["lamportID"],
                ), f"{name} changed: {then} -> {now}"
            outcome.detail = f"{len(staying)} unchanged"
        with checks.check("moved endpoints got later LamportIDs on the survivor") as outcome:
            highest = max(placed[n]["lamportID"] for n in staying)
            new = {n: after[n]["status"]["lamportID"] for n in moving}
            assert all(lamport > highest for lamport in new.values()), (highest, new)
            servers = {after[n]["status"]["serverDisco"] for n in moving}
            assert servers == {relays[SURVIVOR].ready["server_disco"]}
            outcome.detail = f"{len(moving)} moved, all above {highest}"
        with checks.check(f"round trips through {VICTIM} stopped at the kill") as outcome:
            victim = reports[VICTIM]
            assert victim.lost and victim.last_ok is not None and victim.last_ok < fault_start
            outcome.detail = f"{len(victim.lost)} lost after it"
        with checks.check(f"no outage on {SURVIVOR}") as outcome:
            outcome.detail = assert_no_outage(reports[SURVIVOR], fault_start, fault_end)

        with checks.check("the moved bound endpoint binds again and relays") as outcome:
            again = TrafficProbe(on_victim, after[on_victim.name]["status"])
            again.bind()
            failed = [again.round_trip() for _ in range(50)]
            again.finish()
            assert failed == [None] * 50, failed
            outcome.detail = f"50 round trips through {SURVIVOR}"
        resources = await settled(endpoints, expected, timeout=30, log=operator.log)
        await check_invariants(
            checks,
            resources,
            everyone,
            expected,
            store,
            changes,
            {SURVIVOR: relays[SURVIVOR]},
            dead_relays=[VICTIM],
        )
        checks.assert_all()
    finally:
        for probe in probes.values():
            probe.finish()
        await stop_relays(relays, tmp_path)
        changes.stop()
