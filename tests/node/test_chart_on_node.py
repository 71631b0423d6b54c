"""The Helm chart's own pods on a real node, used as the README says.

One release for the module, with the chart's defaults and only the values
file scripts/local-cluster writes (the images it built). The tests run in
file order, as a user's day would: install, allocate and relay, lose a relay
pod, the active operator and Redis, upgrade, switch the relays to the host's
network, read the logs, uninstall. Each checks what it needs and leaves the
release working for the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from relay.protocol.keys import DiscoPrivateKey
from relay_operator.fleet_watch import MetricsReader
from tests.node.fleet import HelmFleet, relay_both_ways
from tests.support.local_cluster import LocalCluster
from tests.support.node import NODE_IP
from tests.support.waiting import wait_until_sync

NAMESPACE = "relayfleet-node"
RELAYFLEET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "relayfleet"
POD_READY_TIMEOUT = 180


def new_keys() -> list[DiscoPrivateKey]:
    return [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster):
    fleet = HelmFleet(cluster, NAMESPACE)
    fleet.claim()
    yield fleet
    fleet.remove()


def redis_keys(fleet: HelmFleet) -> dict[str, str]:
    """Every key of the bundled Redis with its type, read inside the Redis pod."""
    pod = f"{fleet.fullname}-redis-0"
    keys = fleet.exec(pod, "redis-cli", "--scan", "--pattern", "relayfleet:*").stdout.split()
    return {k: fleet.exec(pod, "redis-cli", "type", k).stdout.strip() for k in keys}


def operator_peers(fleet: HelmFleet) -> dict[str, int]:
    """Operator pods of the release in kopf's peering object, with their priorities."""
    peering = fleet.cluster.kubectl("get", "clusterkopfpeering", "relayfleet", "-o", "json",
                                    check=False)  # fmt: skip
    if peering.returncode != 0:
        return {}
    peers = json.loads(peering.stdout).get("status") or {}
    pods = {p["metadata"]["name"] for p in fleet.pods("operator")}
    return {name: peer["priority"] for name, peer in peers.items() if name in pods}


def test_helm_install_brings_every_pod_ready(fleet: HelmFleet, figures):
    fleet.installed_at = time.monotonic()
    installed = fleet.install()
    figures["helm install to every pod Ready"] = time.monotonic() - fleet.installed_at
    assert "STATUS: deployed" in installed.stdout

    assert len(fleet.ready_pods("operator")) == 2
    assert len(fleet.ready_pods("relay")) == 2
    assert len(fleet.ready_pods("redis")) == 1

    # The two operator replicas meet in the peering object, where the one of highest
    # priority acts and the other waits.
    wait_until_sync(lambda: len(operator_peers(fleet)) == 2, "two operator peers", timeout=60)

    # Each relay mounts its own key from the keys Secret.
    secret = fleet.get("secret", f"{fleet.fullname}-relay-keys")["data"]
    assert set(secret) == {f"{fleet.fullname}-relay-{i}.key" for i in range(2)}
    assert len(set(secret.values())) == 2

    # Redis keeps its AOF on a volume the local-path StorageClass provisioned.
    claim = fleet.get("pvc", f"data-{fleet.fullname}-redis-0")
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-path"
    redis_pod = f"{fleet.fullname}-redis-0"
    appendonly = fleet.exec(redis_pod, "redis-cli", "config", "get", "appendonly").stdout.split()
    assert appendonly == ["appendonly", "yes"]


def test_the_image_runs_as_65532_on_a_read_only_root(fleet: HelmFleet):
    pod = f"{fleet.fullname}-relay-0"
    assert fleet.exec(pod, "id", "-u").stdout.strip() == "65532"
    assert fleet.exec(pod, "id", "-g").stdout.strip() == "65532"
    write = fleet.exec(pod, "python3", "-c", "open('/probe', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert fleet.exec(pod, "relayfleet", "--version").stdout.startswith("relayfleet ")


async def test_an_endpoint_is_allocated_in_cluster_and_relays_from_the_host(
    fleet: HelmFleet, figures
):
    began = time.monotonic()
    keys = new_keys()
    fleet.apply_endpoint("alice-bob", keys)
    status = fleet.wait_phase("alice-bob", "Allocated")
    relay_index = status["relay"].rsplit("-", 1)[1]
    # The relay's NodePort Service, on the node's address.
    assert status["addrPorts"] == [f"{NODE_IP}:3070{relay_index}"]
    await relay_both_ways(status, keys)
    status = fleet.wait_bound_with_packets("alice-bob")
    figures["RelayEndpoint applied to Bound"] = time.monotonic() - began
    figures["helm install to the first Bound endpoint"] = time.monotonic() - fleet.installed_at
    # Only the relay pods report clients: their service account wrote this.
    assert {c["handshake"] for c in status["clients"]} == {"Bound"}
    assert all(c["addr"].startswith(f"{NODE_IP}:") for c in status["clients"])

    # The other relay has a key of its own.
    other = f"{fleet.fullname}-relay-{1 - int(relay_index)}"
    fleet.apply_endpoint("carol-dave", new_keys(), relay=other)
    assert fleet.wait_phase("carol-dave", "Allocated")["serverDisco"] != status["serverDisco"]


async def test_the_fleet_reads_from_a_kubeconfig_alone(fleet: HelmFleet):
    """Relay objects kept by the operator; `relayfleet status` without the fleet's Redis; the
    live view's counters read through the API server's pod proxy."""
    names = {f"{fleet.fullname}-relay-{i}" for i in (0, 1)}

    def both_alive() -> list[dict] | None:
        items = fleet.get("relays").get("items", [])
        alive = [r for r in items if r.get("status", {}).get("state") == "Alive"]
        return alive if {r["metadata"]["name"] for r in alive} >= names else None

    relays = wait_until_sync(both_alive, "both Relay objects Alive", timeout=60)
    for relay in relays:
        assert relay["status"]["pod"] == f"{fleet.namespace}/{relay['metadata']['name']}"
    env = {**os.environ, "KUBECONFIG": str(fleet.kubeconfig)}
    env.pop("RELAYFLEET_STORE", None)
    done = subprocess.run(
        [str(RELAYFLEET), "status", "-o", "json"], env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    fleet_view = json.loads(done.stdout)
    assert fleet_view["relaysFrom"] == "kubernetes"
    assert {r["name"] for r in fleet_view["relays"] if r["alive"]} >= names
    reader = MetricsReader(str(fleet.kubeconfig))
    counters = [await reader.read(r) for r in fleet_view["relays"] if r["name"] in names]
    assert sum(c["packets"] for c in counters) > 0  # alice-bob's, relayed above


def test_relay_metrics_are_scraped_through_the_metrics_service(fleet: HelmFleet):
    service = fleet.get("service", f"{fleet.fullname}-relay-metrics")
    ip = service["spec"]["clusterIP"]
    port = service["spec"]["ports"][0]["port"]

    def scraped() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return None

    text = wait_until_sync(scraped, "the relay metrics Service", timeout=60)
    assert "relayfleet_" in text


async def test_a_deleted_relay_pod_comes_back_with_its_key(fleet: HelmFleet):
    status = fleet.status("alice-bob")
    relay = status["relay"]
    old_uid = fleet.get("pod", relay)["metadata"]["uid"]
    fleet.kubectl("delete", "pod", relay, "--wait=false")

    def replaced() -> bool:
        pod = fleet.get("pod", relay)
        return bool(pod) and pod["metadata"]["uid"] != old_uid and _ready(pod)

    wait_until_sync(replaced, f"{relay} replaced and Ready", timeout=POD_READY_TIMEOUT)
    keys = new_keys()
    fleet.apply_endpoint("after-restart", keys, relay=relay)
    after = fleet.wait_phase("after-restart", "Allocated")
    assert after["serverDisco"] == status["serverDisco"]
    await relay_both_ways(after, keys)


def test_the_standby_operator_takes_over(fleet: HelmFleet):
    def two_peers() -> dict[str, int] | None:
        peers = operator_peers(fleet)
        return peers if len(peers) == 2 else None

    peers = wait_until_sync(two_peers, "two operator peers", timeout=60)
    active = max(peers, key=peers.__getitem__)
    fleet.kubectl("delete", "pod", active, "--wait=false")
    fleet.apply_endpoint("after-failover", new_keys())
    fleet.wait_phase("after-failover", "Allocated", timeout=120)


async def test_redis_comes_back_from_its_aof(fleet: HelmFleet):
    pod = f"{fleet.fullname}-redis-0"
    before = redis_keys(fleet)
    assert before, "the fleet has state in Redis"
    old_uid = fleet.get("pod", pod)["metadata"]["uid"]
    fleet.kubectl("delete", "pod", pod, "--wait=false")

    def replaced() -> bool:
        new = fleet.get("pod", pod)
        return bool(new) and new["metadata"]["uid"] != old_uid and _ready(new)

    wait_until_sync(replaced, "Redis replaced and Ready", timeout=POD_READY_TIMEOUT)
    after = redis_keys(fleet)
    lost = {k for k in before if k not in after and "heartbeat" not in k}
    assert not lost
    keys = new_keys()
    fleet.apply_endpoint("after-redis", keys)
    await relay_both_ways(fleet.wait_phase("after-redis", "Allocated"), keys)


async def test_helm_upgrade_rolls_the_pods_and_keeps_allocations_and_keys(fleet: HelmFleet):
    secrets = {
        name: fleet.get("secret", f"{fleet.fullname}-{name}")["data"]
        for name in ("relay-keys", "redis")
    }
    endpoints = {
        item["metadata"]["name"]: item["status"]
        for item in fleet.get("rep")["items"]
        if item.get("status", {}).get("vni")
    }
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in fleet.pods("relay")}
    fleet.upgrade("--set", "relays.reportInterval=3s")
    rolled = {p["metadata"]["name"]: p["metadata"]["uid"] for p in fleet.pods("relay")}
    assert set(rolled) == set(uids) and all(rolled[n] != uids[n] for n in uids)
    for name, data in secrets.items():
        assert fleet.get("secret", f"{fleet.fullname}-{name}")["data"] == data
    for name, status in endpoints.items():
        now = fleet.status(name)
        assert (now.get("vni"), now.get("lamportID"), now.get("serverDisco")) == (
            status["vni"], status["lamportID"], status["serverDisco"],
        )  # fmt: skip
    keys = new_keys()
    fleet.apply_endpoint("after-upgrade", keys)
    await relay_both_ways(fleet.wait_phase("after-upgrade", "Allocated"), keys)


async def test_relays_on_the_host_network(fleet: HelmFleet):
    # One node: one relay can have the node's port.
    fleet.upgrade("--set", "relays.hostNetwork=true", "--set", "relays.replicas=1")
    keys = new_keys()
    fleet.apply_endpoint("host-network", keys, relay=f"{fleet.fullname}-relay-0")

    def allocated_on_the_host_port() -> dict | None:
        status = fleet.status("host-network")
        return status if status.get("addrPorts") == [f"{NODE_IP}:7000"] else None

    status = wait_until_sync(allocated_on_the_host_port, "an allocation on the host's port",
                             timeout=120)  # fmt: skip
    await relay_both_ways(status, keys)
    fleet.wait_bound_with_packets("host-network")


def test_no_pod_logged_a_traceback(fleet: HelmFleet):
    pods = [p["metadata"]["name"] for p in fleet.get("pods")["items"]]
    assert pods
    for pod in pods:
        logs = fleet.kubectl("logs", pod, "--all-containers").stdout
        assert "Traceback" not in logs, f"{pod}:\n{logs[-3000:]}"


def test_helm_uninstall_leaves_the_crds_and_relay_endpoints(fleet: HelmFleet):
    fleet.helm("uninstall", fleet.release, "--wait")
    label = f"app.kubernetes.io/instance={fleet.release}"
    for kinds in ("deployments,statefulsets,services,secrets,configmaps,serviceaccounts",):
        assert fleet.get(kinds, None, "-l", label)["items"] == []
    cluster_rbac = fleet.cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", label, "-o", "json"
    )
    assert json.loads(cluster_rbac.stdout)["items"] == []
    fleet.cluster.kubectl("get", "crd", "relayendpoints.relayfleet.io")
    assert "alice-bob" in {item["metadata"]["name"] for item in fleet.get("rep")["items"]}


def _ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
