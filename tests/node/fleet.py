"""A release of the chart on the real node, and clients on the host that use it.

What a user does after ``helm install``: apply RelayEndpoints, read their
status, and point two clients at the address in it. The clients are this
project's own (relay.protocol.client) over real UDP sockets on the host,
reaching the relay pods through the node's address as any client outside the
cluster would.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.shells.peer import UdpPeer
from tests.charts.helm import CHART, helm
from tests.support.local_cluster import VALUES, LocalCluster
from tests.support.node import NODE_IP
from tests.support.waiting import wait_until_sync

INSTALL_TIMEOUT = "300s"
BIND_ATTEMPTS = 10


@dataclass
class HelmFleet:
    """Release ``release`` of charts/relay-fleet in ``namespace`` of the local cluster."""

    cluster: LocalCluster
    namespace: str
    release: str = "fleet"
    installed_at: float = 0.0
    """When ``helm install`` began (time.monotonic), for the figures the tests print."""

    @property
    def fullname(self) -> str:
        return f"{self.release}-relay-fleet"

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.control_plane.kubeconfig

    def helm(
        self, *args: str, check: bool = True, timeout: float = 360
    ) -> subprocess.CompletedProcess[str]:
        return helm(
            *args, "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace,
            check=check, timeout=timeout,
        )  # fmt: skip

    def releases(self) -> list[dict]:
        """Every release of this chart in the cluster."""
        out = helm("list", "--all-namespaces", "--all", "-o", "json",
                   "--kubeconfig", str(self.kubeconfig)).stdout  # fmt: skip
        return [r for r in json.loads(out) if r.get("chart", "").startswith("relay-fleet-")]

    def claim(self) -> None:
        """Make the cluster this release's alone: no other release of the chart (its operator
        would serve our RelayEndpoints too), nothing left by an interrupted earlier run."""
        others = [r for r in self.releases() if r["namespace"] != self.namespace]
        if others:
            pytest.fail(f"uninstall the other relay-fleet releases first: {others}", pytrace=False)
        self.remove()

    def remove(self) -> None:
        """Uninstall the release and delete its namespace, RelayEndpoints included."""
        self.helm("uninstall", self.release, "--wait", check=False)
        # The operator that would remove their finalizers is gone with the release.
        for item in self.get("rep").get("items", []):
            self.kubectl(
                "patch", "rep", item["metadata"]["name"], "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
        self.cluster.kubectl("delete", "namespace", self.namespace, "--ignore-not-found",
                             "--timeout=120s")  # fmt: skip

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.helm(
            "install", self.release, str(CHART), "--create-namespace", "-f", str(VALUES),
            "--wait", "--timeout", INSTALL_TIMEOUT, *extra,
        )  # fmt: skip

    def upgrade(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.helm(
            "upgrade", self.release, str(CHART), "--reuse-values", "--wait",
            "--timeout", INSTALL_TIMEOUT, *extra,
        )  # fmt: skip

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return self.cluster.control_plane.kubectl(
            "-n", self.namespace, *args, check=check, timeout=timeout, input=input
        )

    def get(self, kind: str, name: str | None = None, *selector: str) -> dict:
        args = ["get", kind, *([name] if name else []), *selector, "-o", "json"]
        result = self.kubectl(*args, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def pods(self, component: str) -> list[dict]:
        label = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}"
        items = self.get("pods", None, "-l", label).get("items", [])
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, component: str) -> list[dict]:
        return [p for p in self.pods(component) if _pod_ready(p)]

    def exec(self, pod: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("exec", pod, "--", *command, check=check)

    # -- RelayEndpoints ----------------------------------------------------------

    def apply_endpoint(self, name: str, keys: list[DiscoPrivateKey],
                       relay: str | None = None) -> None:  # fmt: skip
        spec: dict = {"discoKeys": [str(k.public) for k in keys]}
        if relay:
            spec["relay"] = relay
        resource = {
            "apiVersion": "relayfleet.io/v1alpha1",
            "kind": "RelayEndpoint",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(resource))

    def status(self, name: str) -> dict:
        return self.get("rep", name).get("status", {})

    def wait_phase(self, name: str, phase: str, timeout: float = 120) -> dict:
        def reached() -> dict | None:
            status = self.status(name)
            return status if status.get("phase") == phase else None

        return wait_until_sync(reached, f"RelayEndpoint {name} {phase}", timeout=timeout)

    def wait_bound_with_packets(self, name: str, timeout: float = 120) -> dict:
        def bound() -> dict | None:
            status = self.status(name)
            clients = status.get("clients", [])
            relayed = len(clients) == 2 and all(c.get("packets", 0) > 0 for c in clients)
            return status if status.get("phase") == "Bound" and relayed else None

        return wait_until_sync(bound, f"RelayEndpoint {name} Bound with packets", timeout=timeout)


def _pod_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def _handshake(peer: UdpPeer, client: RelayClient, address: tuple[str, int]) -> None:
    """Bind, resending a lost bind or answer, as a real client does."""
    for _ in range(BIND_ATTEMPTS):
        peer.send(client.bind(), address)
        try:
            challenge = await peer.receive(timeout=1.0)
        except TimeoutError:
            continue
        peer.send(client.answer(challenge), address)
        return
    raise TimeoutError(f"no challenge from {address} after {BIND_ATTEMPTS} binds")


async def relay_both_ways(status: dict, keys: list[DiscoPrivateKey]) -> None:
    """Two clients on the host bind to the status's first address and relay both ways."""
    server = DiscoPublicKey.parse(status["serverDisco"])
    host, port = status["addrPorts"][0].rsplit(":", 1)
    address = (host, int(port))
    clients = [
        RelayClient(keys[0], server, status["vni"], remote_key=keys[1].public),
        RelayClient(keys[1], server, status["vni"], remote_key=keys[0].public),
    ]
    # Bound to the node's address, as a client elsewhere would be to its own.
    peers = [await UdpPeer.open(NODE_IP), await UdpPeer.open(NODE_IP)]
    try:
        for client, peer in zip(clients, peers, strict=True):
            await _handshake(peer, client, address)
        # The second answer may still be on its way when the first data leaves: resend
        # until the relay forwards, as a client's keepalives would.
        deadline = time.monotonic() + 30
        while True:
            peers[0].send(clients[0].data(b"from the host"), address)
            try:
                assert clients[1].read_data(await peers[1].receive(timeout=1.0)) == b"from the host"
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        peers[1].send(clients[1].data(b"and back"), address)
        assert clients[0].read_data(await peers[0].receive(timeout=5.0)) == b"and back"
    finally:
        for peer in peers:
            peer.close()
