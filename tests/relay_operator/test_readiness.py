"""Readiness as tools read it, with the real kubectl on a real kube-apiserver.

`kubectl wait --for=condition=Ready` (and kstatus, Flux, Argo CD) read the
Ready condition and its observedGeneration; `kubectl get rep -o wide` reads the
priority-1 printer columns of crds/relayendpoint.yaml.
"""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from relay.store.redis import RedisStore
from tests.relay_operator.e2e_support import (
    bind_and_relay,
    endpoint_yaml,
    get,
    new_keys,
    phase_is,
    start_relay,
)
from tests.support.waiting import wait_until


def conditions(resource: dict) -> dict[str, dict]:
    return {c["type"]: c for c in resource.get("status", {}).get("conditions", [])}


async def kubectl_wait_ready(crd, namespace: str, name: str, timeout: str):
    """`kubectl wait --for=condition=Ready`, in a thread: the test's relays keep running."""
    return await asyncio.to_thread(
        crd.kubectl,
        "-n", namespace, "wait", "--for=condition=Ready", f"rep/{name}", f"--timeout={timeout}",
        check=False, timeout=90,
    )  # fmt: skip


def wide(crd, namespace: str, name: str) -> dict[str, str]:
    """`kubectl get rep NAME -o wide`, as {column: value} (cut where each heading starts: an
    empty cell is blank)."""
    output = crd.kubectl("-n", namespace, "get", "rep", name, "-o", "wide").stdout
    header, row = output.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {
        header[start:end].strip(): row[start:end].strip()
        for start, end in zip(starts, ends, strict=True)
    }


async def test_kubectl_wait_returns_once_allocated_and_wide_shows_the_endpoint(
    crd, kube_namespace, operator, relay_1
):
    ns = kube_namespace
    keys = new_keys()
    crd.kubectl(
        "-n", ns, "apply", "-f", "-", input=endpoint_yaml("ready", [str(k.public) for k in keys])
    )
    waited = await kubectl_wait_ready(crd, ns, "ready", "60s")
    assert waited.returncode == 0, waited.stderr
    assert "condition met" in waited.stdout
    resource = get(crd, ns, "ready")
    status = resource["status"]
    assert status["phase"] == "Allocated"
    ready = conditions(resource)["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Allocated")
    assert f"on relay relay-1 at {status['addrPorts'][0]}" in ready["message"]
    generation = resource["metadata"]["generation"]
    assert {c["observedGeneration"] for c in status["conditions"]} == {generation}
    assert status["observedGeneration"] == generation

    short = status["serverDisco"].removeprefix("discokey:")[:12]
    columns = wide(crd, ns, "ready")
    assert columns.pop("AGE")
    assert columns == {
        "NAME": "ready",
        "PHASE": "Allocated",
        "RELAY": "relay-1",
        "VNI": str(status["vni"]),
        "LAMPORT": str(status["lamportID"]),
        "READY": "True",
        "REASON": "Allocated",
        "SERVERDISCO": short,
        "ADDRESS": f"127.0.0.1:{relay_1.ready['udp_port']}",
        "CLIENTS": "0/2",
    }
    # the default columns are as they were
    default = crd.kubectl("-n", ns, "get", "rep", "ready").stdout.splitlines()[0].split()
    assert default == ["NAME", "PHASE", "RELAY", "VNI", "LAMPORT", "AGE"]

    await bind_and_relay(status, keys)

    def both_bound():
        resource = get(crd, ns, "ready")
        return resource.get("status", {}).get("clientsBound") == "2/2" and resource

    bound = await wait_until(both_bound, "clientsBound 2/2", log=operator.log)
    assert bound["status"]["phase"] == "Bound"
    after = conditions(bound)["Ready"]
    # the relay's reporter moved Allocated to Bound: Ready stays True, from the same time
    assert (after["status"], after["reason"]) == ("True", "Bound")
    assert after["lastTransitionTime"] == ready["lastTransitionTime"]
    columns = wide(crd, ns, "ready")
    assert (columns["PHASE"], columns["READY"], columns["CLIENTS"]) == ("Bound", "True", "2/2")
    assert (await kubectl_wait_ready(crd, ns, "ready", "5s")).returncode == 0


@pytest.mark.parametrize("case", ["no-relay", "pinned-to-a-missing-relay"])
async def test_kubectl_wait_times_out_on_an_endpoint_that_cannot_be_placed(
    crd, kube_namespace, start_operator, redis_server, tmp_path, case
):
    ns = kube_namespace
    operator = start_operator("operator")
    relay = None
    pin = None
    if case == "pinned-to-a-missing-relay":
        relay = await start_relay(crd, redis_server, "elsewhere")
        pin = "nowhere"
    try:
        keys = [str(k.public) for k in new_keys()]
        crd.kubectl("-n", ns, "apply", "-f", "-", input=endpoint_yaml("stuck", keys, relay=pin))
        resource = await wait_until(
            phase_is(crd, ns, "stuck", "Pending"), "the operator's answer", log=operator.log
        )
        waited = await kubectl_wait_ready(crd, ns, "stuck", "5s")
        assert waited.returncode != 0
        assert "timed out" in waited.stderr
        ready = conditions(get(crd, ns, "stuck"))["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "NoRelayAvailable")
        if pin:
            assert "relay 'nowhere' is not registered, not alive, or full" in ready["message"]
        else:
            assert "no live relay with a free VNI (0 alive of 0)" in ready["message"]
        assert ready["observedGeneration"] == resource["metadata"]["generation"]
        columns = wide(crd, ns, "stuck")
        assert (columns["PHASE"], columns["READY"], columns["REASON"]) == (
            "Pending",
            "False",
            "NoRelayAvailable",
        )
        assert columns["SERVERDISCO"] == columns["ADDRESS"] == columns["CLIENTS"] == ""
    finally:
        if relay is not None:
            await relay.stop()


async def test_an_endpoint_whose_relay_died_with_no_other_is_not_ready_because_relay_dead(
    crd, kube_namespace, operator, redis_server
):
    ns = kube_namespace
    relay = await start_relay(crd, redis_server, "lonely")
    try:
        keys = [str(k.public) for k in new_keys()]
        crd.kubectl("-n", ns, "apply", "-f", "-", input=endpoint_yaml("orphan", keys))
        assert (await kubectl_wait_ready(crd, ns, "orphan", "60s")).returncode == 0
        before = conditions(get(crd, ns, "orphan"))["Ready"]
        await relay.stop(signal.SIGKILL)

        def not_ready():
            resource = get(crd, ns, "orphan")
            ready = conditions(resource).get("Ready", {})
            return ready.get("status") == "False" and resource

        resource = await wait_until(not_ready, "Ready False", log=operator.log)
        ready = conditions(resource)["Ready"]
        assert ready["reason"] == "RelayDead"
        assert "relay lonely stopped heart-beating, and no relay can take it" in ready["message"]
        assert ready["lastTransitionTime"] >= before["lastTransitionTime"]
        assert resource["status"]["phase"] == "Pending"
        assert conditions(resource)["Allocated"]["reason"] == "NoRelayAvailable"
        assert (await kubectl_wait_ready(crd, ns, "orphan", "5s")).returncode != 0
    finally:
        if relay.process.returncode is None:
            await relay.stop()


async def test_editing_spec_relay_moves_the_endpoint_and_ready_observes_the_generation(
    crd, kube_namespace, operator, redis_server
):
    ns = kube_namespace
    relays = [await start_relay(crd, redis_server, name) for name in ("pin-a", "pin-b")]
    try:
        keys = [str(k.public) for k in new_keys()]
        crd.kubectl("-n", ns, "apply", "-f", "-", input=endpoint_yaml("pinned", keys, "pin-a"))
        first = await wait_until(phase_is(crd, ns, "pinned", "Allocated"), "on pin-a")
        assert first["status"]["relay"] == "pin-a"

        crd.kubectl("-n", ns, "patch", "rep", "pinned", "--type=merge",
                    "-p", '{"spec": {"relay": "pin-b"}}')  # fmt: skip

        def moved_and_observed():
            resource = get(crd, ns, "pinned")
            ready = conditions(resource).get("Ready", {})
            generation = resource["metadata"]["generation"]
            return (
                resource["status"].get("relay") == "pin-b"
                and ready.get("observedGeneration") == generation
                and resource
            )

        moved = await wait_until(moved_and_observed, "moved to pin-b", log=operator.log)
        assert moved["metadata"]["generation"] == first["metadata"]["generation"] + 1
        assert conditions(moved)["Ready"]["status"] == "True"
        assert moved["status"]["serverDisco"] != first["status"]["serverDisco"]
        assert (await kubectl_wait_ready(crd, ns, "pinned", "30s")).returncode == 0
        store = RedisStore.from_url(redis_server.url())
        try:
            assert await store.allocations("pin-a") == []  # freed where it was
        finally:
            await store.close()

        # Unpinned: it stays where it is, and Ready observes the new generation.
        crd.kubectl("-n", ns, "patch", "rep", "pinned", "--type=json",
                    "-p", '[{"op": "remove", "path": "/spec/relay"}]')  # fmt: skip

        def observed():
            resource = get(crd, ns, "pinned")
            ready = conditions(resource).get("Ready", {})
            return ready.get("observedGeneration") == resource["metadata"]["generation"] and (
                resource
            )

        unpinned = await wait_until(observed, "Ready observing the unpinned spec")
        assert unpinned["status"]["relay"] == "pin-b"
        assert unpinned["status"]["vni"] == moved["status"]["vni"]
    finally:
        for relay in relays:
            await relay.stop()
