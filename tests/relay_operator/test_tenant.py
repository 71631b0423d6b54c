"""What a tenant with RBAC on RelayEndpoints can and cannot do (docs/security.md).

A tenant is a user bound, in its own namespace, to every verb on
RelayEndpoints but none on their status: it may ask for endpoints, never
forge what the operator or the relays write.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.relay_operator.e2e_support import endpoint_yaml, get, new_keys, phase_is
from tests.support.waiting import wait_until

TENANT_VERBS = "get,list,watch,create,update,patch,delete"


@pytest.fixture
def tenant(crd, kube_namespace):
    """A kubeconfig of a user with every verb on RelayEndpoints in the test's namespace only."""
    user = f"tenant-{uuid.uuid4().hex[:6]}"
    kubeconfig = crd.kubeconfig_for_user(user)
    crd.kubectl(
        "create", "role", "tenant", "-n", kube_namespace,
        f"--verb={TENANT_VERBS}", "--resource=relayendpoints.relayfleet.io",
    )  # fmt: skip
    crd.kubectl(
        "create", "rolebinding", "tenant", "-n", kube_namespace, "--role=tenant", f"--user={user}"
    )
    deadline = time.monotonic() + 20
    while crd.kubectl(
        "-n", kube_namespace, "auth", "can-i", "create", "relayendpoints.relayfleet.io",
        kubeconfig=kubeconfig, check=False,
    ).stdout.strip() != "yes":  # fmt: skip
        assert time.monotonic() < deadline, "the tenant's RoleBinding never took effect"
        time.sleep(0.1)
    return kubeconfig


def test_a_tenant_cannot_change_keys_forge_status_or_reach_beyond_its_endpoints(
    crd, kube_namespace, tenant
):
    keys = [str(k.public) for k in new_keys()]
    as_tenant = {"kubeconfig": tenant, "check": False}
    created = crd.kubectl(
        "-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("mine", keys), **as_tenant
    )
    assert created.returncode == 0, created.stderr

    other = [str(k.public) for k in new_keys()]
    rekey = crd.kubectl(
        "-n", kube_namespace, "patch", "rep", "mine", "--type=merge",
        "-p", json.dumps({"spec": {"discoKeys": other}}), **as_tenant,
    )  # fmt: skip
    assert rekey.returncode != 0 and "discoKeys is immutable" in rekey.stderr

    forged = {"status": {"phase": "Bound", "serverDisco": other[0], "vni": 7}}
    forge = crd.kubectl(
        "-n", kube_namespace, "patch", "rep", "mine", "--subresource=status", "--type=merge",
        "-p", json.dumps(forged), **as_tenant,
    )  # fmt: skip
    assert forge.returncode != 0 and "forbidden" in forge.stderr.lower()
    assert get(crd, kube_namespace, "mine").get("status", {}).get("serverDisco") is None

    elsewhere = crd.kubectl("-n", "default", "get", "rep", **as_tenant)
    assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr.lower()
    keys_secret = crd.kubectl("-n", kube_namespace, "get", "secrets", **as_tenant)
    assert keys_secret.returncode != 0 and "forbidden" in keys_secret.stderr.lower()


async def test_a_second_endpoint_for_the_same_pair_cannot_free_the_first(
    crd, kube_namespace, operator, relay_1, store
):
    keys = [str(k.public) for k in new_keys()]
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("victim", keys))
    victim = await wait_until(
        phase_is(crd, kube_namespace, "victim", "Allocated"), "victim", log=operator.log
    )
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("intruder", keys))
    intruder = await wait_until(
        phase_is(crd, kube_namespace, "intruder", "Pending"),
        "the operator's answer to the intruder",
        log=operator.log,
    )
    conditions = {c["type"]: (c["status"], c["reason"]) for c in intruder["status"]["conditions"]}
    assert conditions == {"Allocated": ("False", "PairInUse"), "Ready": ("False", "PairInUse")}
    assert "vni" not in intruder["status"]
    crd.kubectl("-n", kube_namespace, "delete", "rep", "intruder", "--wait=true", "--timeout=30s")
    assert await store.allocation("relay-1", victim["status"]["vni"]) is not None
    assert get(crd, kube_namespace, "victim")["status"]["vni"] == victim["status"]["vni"]
