"""Fault: redis-server, with AOF on, is killed (SIGKILL) and restarted during allocations.

Issue 8's third fault. Redis holds everything that must outlive a process
(allocations, LamportID counters, the registry); with AOF on, a restart must
lose none of it, the operator must finish what it was doing once Redis is
back, and bound endpoints must keep relaying through the outage, since the
data path never touches Redis. This module restarts Redis while the
operator allocates 100 endpoints over two relays, and checks that what was
allocated before the restart is still there, that the counters never went
back, and the invariants every fault must keep.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from relay.store.redis import RedisStore
from tests.faults.support import (
    ChangeLog,
    Checks,
    Endpoints,
    Peers,
    check_invariants,
    check_no_outage,
    issued_total,
    settled,
    start_probes,
    start_relay,
    stop_relays,
    store_count,
)
from tests.relay.relay_process import RelayProcess
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

COUNT = 100
RESTART_AFTER = 30
RELAYS = ("rr-a", "rr-b")
AOF = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


async def identities(store: RedisStore, relay: str) -> set[tuple[int, int, frozenset[str]]]:
    """Each allocation of a relay as (VNI, LamportID, keys): what must survive a restart."""
    return {
        (a.vni, a.lamport_id, frozenset(str(k) for k in a.disco_keys))
        for a in await store.allocations(relay)
    }


@pytest.fixture
def redis_server(tmp_path):
    """Overrides the operator tests' Redis: this one persists every write to its AOF."""
    with RedisServer(tmp_path, args=AOF) as server:
        yield server


@pytest.mark.timeout(180)
async def test_redis_restarted_during_allocations_loses_nothing(
    crd, kube_namespace, redis_server, store, operator_process, fault_table, tmp_path
):
    row = fault_table("redis-server killed (SIGKILL) and restarted, AOF on")
    checks = Checks(row.checked)
    endpoints = Endpoints(crd, kube_namespace)
    changes = ChangeLog(redis_server.url()).start()
    url = redis_server.url()
    relays: dict[str, RelayProcess] = {}
    probes = []
    creating: asyncio.Task[float] | None = None
    try:
        for name in RELAYS:
            relays[name] = await start_relay(crd, url, name, tmp_path, heartbeat="1s")
        operator = operator_process("operator", "2s")
        probe_peers = await start_probes(endpoints, RELAYS, probes, operator.log)

        burst = [Peers.fresh(f"burst-{i:03}") for i in range(COUNT)]
        creating = asyncio.create_task(endpoints.create(burst))

        async def allocations_under_way() -> bool:
            return await store_count(store, RELAYS) >= len(probe_peers) + RESTART_AFTER

        await wait_until(allocations_under_way, "allocations under way", timeout=60)
        before = {relay: await identities(store, relay) for relay in RELAYS}
        counters = await issued_total(store, RELAYS)
        fault_start = time.monotonic()
        await asyncio.to_thread(redis_server.restart, signal.SIGKILL)
        downtime = time.monotonic() - fault_start
        after = {relay: await identities(store, relay) for relay in RELAYS}
        row.injected = (
            f"SIGKILL to redis-server after {sum(map(len, before.values()))} of "
            f"{COUNT + len(probe_peers)} allocations, restarted on its AOF "
            f"({downtime:.1f} s down)"
        )
        with checks.check("every allocation made before the restart is still there") as outcome:
            lost = {relay: before[relay] - after[relay] for relay in RELAYS}
            assert not any(lost.values()), f"lost: {lost}"
            restored = await issued_total(store, RELAYS)
            assert restored >= counters, f"LamportID counters went back: {counters} -> {restored}"
            kept = sum(map(len, before.values()))
            outcome.detail = f"{kept} kept, LamportID counters {counters} -> {restored}"

        await creating
        expected = {p.name: "Allocated" for p in burst} | {p.name: "Bound" for p in probe_peers}
        resources = await settled(endpoints, expected, timeout=90, log=operator.log)
        fault_end = time.monotonic()
        row.checked(f"settled {fault_end - fault_start:.1f} s after the restart")
        reports = [probe.finish(after=fault_end) for probe in probes]
        probes = []

        await check_invariants(
            checks,
            resources,
            [*burst, *probe_peers],
            expected,
            store,
            changes,
            relays,
            complete_log=False,
        )
        with checks.check("each resource allocated once") as outcome:
            issued = await issued_total(store, RELAYS)
            assert issued == len(expected), f"{issued} issued for {len(expected)} resources"
            outcome.detail = f"{issued} LamportIDs issued in all"
        check_no_outage(checks, reports, fault_start, fault_end)
        checks.assert_all()
    finally:
        if creating is not None:
            creating.cancel()
        for probe in probes:
            probe.finish()
        await stop_relays(relays, tmp_path)
        changes.stop()
