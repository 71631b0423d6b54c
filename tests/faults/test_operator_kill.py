"""Fault: the operator is killed (SIGKILL) during 500 concurrent RelayEndpoint creations.

Issue 8's first fault. The operator records its relay choice (annotation
``relayfleet.io/placing``) before it allocates, so that a crash between the
store's allocation and the status patch makes the next operator ask the same
relay for the same pair and get the same allocation back. This module puts
that to the test on real processes: 500 resources created concurrently
through the API server onto two relays, the operator killed once 20 more
allocations are made, a new one started. A crash only matters if it lands
while some resource is halfway through the writing of its allocation (kopf
writes metadata and status in two requests), so the kill is repeated on the
new operator, up to three times, until one leaves such a resource behind.
Then every resource must be Allocated with exactly one allocation, each
LamportID issued once and in order, and a bound endpoint on each relay must
have relayed all along.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.faults.support import (
    ChangeLog,
    Checks,
    Endpoints,
    Peers,
    check_invariants,
    check_no_outage,
    settled,
    start_probes,
    start_relay,
    stop_relays,
    store_count,
)
from tests.relay.relay_process import RelayProcess
from tests.support.waiting import wait_until

COUNT = 500
KILL_AFTER = 20
MAX_KILLS = 3
RELAYS = ("opkill-a", "opkill-b")
RELAY_LABEL = "relayfleet.io/relay"


def stranded(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Resources between the operator's two writes of an allocation.

    kopf applies a handler's patch as two requests: metadata first (the relay
    label, the handler marked done), then the status. These have the first and
    not the second.
    """
    return sorted(
        name
        for name, r in resources.items()
        if RELAY_LABEL in r["metadata"].get("labels", {}) and not r.get("status", {}).get("relay")
    )


@pytest.mark.timeout(300)
async def test_operator_killed_during_500_concurrent_creations(
    crd, kube_namespace, redis_server, store, operator_process, fault_table, tmp_path
):
    row = fault_table("operator killed (SIGKILL) during 500 concurrent creations")
    checks = Checks(row.checked)
    endpoints = Endpoints(crd, kube_namespace)
    changes = ChangeLog(redis_server.url()).start()
    url = redis_server.url()
    relays: dict[str, RelayProcess] = {}
    probes = []
    creating: asyncio.Task[float] | None = None
    try:
        for name in RELAYS:
            relays[name] = await start_relay(crd, url, name, tmp_path, report="2s")
        operator = operator_process("operator-1", "60s")
        probe_peers = await start_probes(endpoints, RELAYS, probes, operator.log)

        burst = [Peers.fresh(f"burst-{i:03}") for i in range(COUNT)]
        creating = asyncio.create_task(endpoints.create(burst))
        kills: list[str] = []
        killed_at: list[float] = []
        for round_ in range(1, MAX_KILLS + 1):
            target = await store_count(store, RELAYS) + KILL_AFTER

            async def allocated_more(target: int = target) -> bool:
                return await store_count(store, RELAYS) >= target

            await wait_until(allocated_more, f"{KILL_AFTER} more allocations", timeout=90)
            killed_at.append(time.monotonic())
            operator.process.kill()
            operator.process.wait(10)
            at_kill = await store_count(store, RELAYS) - len(probe_peers)
            in_flight = not creating.done()
            left = stranded(await endpoints.list())
            kills.append(
                f"#{round_} after {at_kill} allocations (creations "
                f"{'in flight' if in_flight else 'done'}, {len(left)} left half-written)"
            )
            operator = operator_process(f"operator-{round_ + 1}", "60s")
            if left:
                break
        created_in = await creating
        row.injected = (
            f"{COUNT} created 50 at a time in {created_in:.1f} s; SIGKILL to the operator "
            f"{'; '.join(kills)}; a new operator started after each"
        )

        expected = {p.name: "Allocated" for p in burst} | {p.name: "Bound" for p in probe_peers}
        resources = await settled(endpoints, expected, timeout=200, log=operator.log)
        fault_start, fault_end = killed_at[0], time.monotonic()
        row.checked(f"settled {fault_end - fault_start:.1f} s after the first kill")
        reports = [probe.finish(after=fault_end) for probe in probes]
        probes = []

        await check_invariants(
            checks, resources, [*burst, *probe_peers], expected, store, changes, relays
        )
        with checks.check("each pair allocated once, nothing freed") as outcome:
            issued = [c for c in changes.changes if c[1] == "alloc"]
            freed = [c for c in changes.changes if c[1] == "free"]
            assert (len(issued), len(freed)) == (len(expected), 0), (
                f"{len(issued)} allocations issued and {len(freed)} freed "
                f"for {len(expected)} resources"
            )
            outcome.detail = f"{len(issued)} issued"
        check_no_outage(checks, reports, fault_start, fault_end)
        checks.assert_all()
    finally:
        if creating is not None:
            creating.cancel()
        for probe in probes:
            probe.finish()
        await stop_relays(relays, tmp_path)
        changes.stop()
