"""Two operator replicas at once: kopf peering lets exactly one act, and the other takes over."""

from __future__ import annotations

import json
from pathlib import Path

from tests.relay_operator.e2e_support import allocated, apply_endpoints
from tests.support.waiting import wait_until


def peers(control_plane, namespace: str) -> dict:
    result = control_plane.kubectl(
        "-n", namespace, "get", "kopfpeering", "relayfleet", "-o", "json", check=False
    )  # fmt: skip
    return json.loads(result.stdout).get("status") or {} if result.returncode == 0 else {}


def allocations_logged(log: Path) -> int:
    return log.read_text().count("Handler 'allocate' succeeded")


async def test_one_replica_acts_and_the_other_takes_over_when_it_dies(
    peering_crds, kube_namespace, start_operator, relay_1, store
):
    cp = peering_crds
    lifetime = ("--peering-lifetime", "3s")
    active = start_operator("active", "--priority", "100", *lifetime)
    standby = start_operator("standby", "--priority", "50", *lifetime)
    # Replicas starting at the same instant may both act until they see each other (the
    # store's rules keep that safe); the claim here is about replicas that have met.
    await wait_until(lambda: len(peers(cp, kube_namespace)) == 2, "both replicas in the peering")
    apply_endpoints(cp, kube_namespace, [f"first-{i}" for i in range(10)])
    await wait_until(
        lambda: len(allocated(cp, kube_namespace)) == 10, "10 allocated", log=active.log
    )
    assert allocations_logged(active.log) == 10
    assert allocations_logged(standby.log) == 0

    active.process.kill()
    active.stop()
    apply_endpoints(cp, kube_namespace, [f"later-{i}" for i in range(5)])
    await wait_until(
        lambda: len(allocated(cp, kube_namespace)) == 15,
        "15 allocated after the failover",
        timeout=60,
        log=standby.log,
    )
    # the new five at least; it may also resume the first ten, finding them allocated
    assert allocations_logged(standby.log) >= 5
    placements = {(r["status"]["relay"], r["status"]["vni"]) for r in allocated(cp, kube_namespace)}
    assert len(placements) == 15
    assert sorted((a.relay, a.vni) for a in await store.allocations("relay-1")) == sorted(
        placements
    )
