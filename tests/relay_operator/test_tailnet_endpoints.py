"""An allocation a tailnet peer asks for shows up as a RelayEndpoint of its own.

The relay runs in this process (Redis store, reporting to the session's real
kube-apiserver) so that the test can make the call its tailnet door makes for
an admitted 0x08 (``RelayServer.allocate_for_tailnet``; the door itself, over
a real DERP server, is tests/conformance_v1/test_peer_relay.py, and the whole
way with tailscaled clients tests/tailnet/test_our_relay.py). A real operator
process serves the namespace: it must leave such a resource to the relay,
count it as holding its pair, and free its allocation when it is deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.config import RelayConfig
from relay.resource.definition import (
    FINALIZER,
    ORIGIN_LABEL,
    RELAY_DEAD_ANNOTATION,
    RELAY_LABEL,
    TAILNET_ORIGIN,
)
from relay.resource.tailnet_endpoint import tailnet_endpoint_name
from relay.server import RelayServer
from relay.shells.keyfile import RelaySecrets
from relay.store import open_store
from tests.relay_operator.e2e_support import bind_and_relay, endpoint_yaml, events, get, new_keys
from tests.support.waiting import wait_until

RELAY = "tailnet-relay"


async def relay_for_tailnet(
    crd, redis_server, namespace: str, secrets: RelaySecrets | None = None, **config: object
) -> RelayServer:
    settings = {
        "name": RELAY, "listen": "127.0.0.1", "port": 0, "api_listen": ("127.0.0.1", 0),
        "addrs": ("127.0.0.1",), "store": redis_server.url(), "report_status": "on",
        "kubeconfig": str(crd.kubeconfig), "report_interval": 0.2, "heartbeat_interval": 0.3,
        "workers": 1, "fast_path": "off", "tailnet_namespace": namespace,
    } | config  # fmt: skip
    relay_config = RelayConfig(**settings)
    store = open_store(relay_config.store, max_vni=relay_config.max_endpoints)
    server = RelayServer(relay_config, store, secrets or RelaySecrets.generate())
    await server.start()
    return server


@pytest.fixture
async def relay(crd, redis_server, kube_namespace, operator) -> AsyncIterator[RelayServer]:
    server = await relay_for_tailnet(crd, redis_server, kube_namespace)
    yield server
    await server.close()
    await server.store.close()


def resource_condition(crd, namespace: str, name: str, check):
    """An async condition on the resource (kubectl runs off the relay's event loop)."""

    async def condition():
        resource = await asyncio.to_thread(get, crd, namespace, name)
        return resource if resource and check(resource) else None

    return condition


async def test_a_tailnet_allocation_is_a_relayendpoint_of_the_relay_freed_when_deleted(
    crd, kube_namespace, relay
):
    keys = new_keys()
    endpoint = await relay.allocate_for_tailnet(keys[0].public, keys[1].public)
    name = tailnet_endpoint_name(RELAY, (keys[1].public, keys[0].public))

    def allocated(resource):
        status = resource.get("status", {})
        return status.get("phase") == "Allocated" and FINALIZER in resource["metadata"].get(
            "finalizers", ()
        )

    resource = await wait_until(
        resource_condition(crd, kube_namespace, name, allocated),
        "the relay made the RelayEndpoint and the operator put its finalizer on it",
    )
    labels = resource["metadata"]["labels"]
    assert labels[ORIGIN_LABEL] == TAILNET_ORIGIN and labels[RELAY_LABEL] == RELAY
    assert sorted(resource["spec"]["discoKeys"]) == sorted(str(k.public) for k in keys)
    status = resource["status"]
    assert (status["relay"], status["vni"], status["lamportID"]) == (
        RELAY,
        endpoint.vni,
        endpoint.lamport_id,
    )
    assert status["serverDisco"] == str(relay.core.server_key)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    await bind_and_relay(status, keys)
    await wait_until(
        resource_condition(
            crd, kube_namespace, name, lambda r: r.get("status", {}).get("phase") == "Bound"
        ),
        "the relay reported the tailnet endpoint Bound",
    )
    assert not events(crd, kube_namespace, reason="Allocated", about=name), (
        "the operator allocated a resource the relay made"
    )

    # A RelayEndpoint someone applies for the same pair waits: the relay's holds it.
    crd.kubectl(
        "-n", kube_namespace, "apply", "-f", "-",
        input=endpoint_yaml("same-pair", [str(k.public) for k in keys]),
    )  # fmt: skip

    def pair_in_use(resource):
        conditions = resource.get("status", {}).get("conditions", ())
        return any(c["type"] == "Ready" and c["reason"] == "PairInUse" for c in conditions)

    await wait_until(
        resource_condition(crd, kube_namespace, "same-pair", pair_in_use),
        "the applied resource waits PairInUse",
    )
    crd.kubectl("-n", kube_namespace, "delete", "rep", "same-pair", "--wait=false")

    # Bound, the pair asks again: a fresh allocation, shown by the same resource.
    again = await relay.allocate_for_tailnet(keys[0].public, keys[1].public)
    assert again.lamport_id > endpoint.lamport_id

    def moved(resource):
        status = resource.get("status", {})
        return status.get("lamportID") == again.lamport_id and status.get("phase") == "Allocated"

    await wait_until(
        resource_condition(crd, kube_namespace, name, moved),
        "the resource shows the fresh allocation",
    )

    await asyncio.to_thread(crd.kubectl, "-n", kube_namespace, "delete", "rep", name)
    await wait_until(
        lambda: relay.core.endpoint(again.vni) is None,
        "deleting the resource freed the allocation on the relay",
    )
    assert await relay.store.allocation(RELAY, again.vni) is None


async def test_an_expired_tailnet_allocation_takes_its_relayendpoint_with_it(
    crd, redis_server, kube_namespace, operator
):
    relay = await relay_for_tailnet(crd, redis_server, kube_namespace, bind_lifetime=1.0)
    try:
        keys = new_keys()
        endpoint = await relay.allocate_for_tailnet(keys[0].public, keys[1].public)
        name = tailnet_endpoint_name(RELAY, (keys[0].public, keys[1].public))
        await wait_until(
            resource_condition(crd, kube_namespace, name, lambda r: bool(r.get("status"))),
            "the relay made the RelayEndpoint",
        )
        gone = await wait_until(
            lambda: asyncio.to_thread(lambda: not get(crd, kube_namespace, name)),
            "nobody bound in time: the endpoint expired and its RelayEndpoint was deleted",
        )
        assert gone
        assert relay.reporter.deleted == 1
        assert await relay.store.allocation(RELAY, endpoint.vni) is None
    finally:
        await relay.close()
        await relay.store.close()


async def test_a_tailnet_relayendpoint_waits_for_its_relay_rather_than_moving(
    crd, redis_server, kube_namespace, operator
):
    """Its peers asked that relay: the operator re-places resources of a dead relay, but only
    says why for this one, and the relay, back with its key, serves and reports it again."""
    secrets = RelaySecrets.generate()
    relay = await relay_for_tailnet(crd, redis_server, kube_namespace, secrets)
    keys = new_keys()
    try:
        endpoint = await relay.allocate_for_tailnet(keys[0].public, keys[1].public)
        name = tailnet_endpoint_name(RELAY, (keys[0].public, keys[1].public))
        crd.kubectl(
            "-n", kube_namespace, "apply", "-f", "-",
            input=endpoint_yaml("applied", [str(k.public) for k in new_keys()], relay=RELAY),
        )  # fmt: skip
        for resource in (name, "applied"):
            await wait_until(
                resource_condition(crd, kube_namespace, resource, has_phase("Allocated")),
                f"{resource} allocated on the relay",
            )
    finally:
        await relay.close()

    def ready_reason(reason):
        def check(resource):
            conditions = resource.get("status", {}).get("conditions", ())
            return any(c["type"] == "Ready" and c["reason"] == reason for c in conditions)

        return check

    await wait_until(
        resource_condition(crd, kube_namespace, "applied", ready_reason("RelayDead")),
        "the operator found the relay dead",
        timeout=60,
    )
    waiting = await wait_until(
        resource_condition(crd, kube_namespace, name, ready_reason("RelayDead")),
        "the tailnet resource says its relay is dead",
    )
    assert waiting["status"]["phase"] == "Pending"
    assert (waiting["status"]["relay"], waiting["status"]["vni"]) == (RELAY, endpoint.vni)
    assert RELAY_DEAD_ANNOTATION not in waiting["metadata"].get("annotations", {})

    back = await relay_for_tailnet(crd, redis_server, kube_namespace, secrets)
    try:
        await wait_until(
            resource_condition(crd, kube_namespace, name, has_phase("Allocated")),
            "the relay, back with its key, reported the endpoint it still serves",
        )
        assert back.core.endpoint(endpoint.vni) is not None
    finally:
        await back.close()
        await back.store.close()
        await relay.store.close()


def has_phase(phase: str):
    return lambda resource: resource.get("status", {}).get("phase") == phase
