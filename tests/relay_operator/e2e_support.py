"""Helpers of the operator's end-to-end tests: the operator process, resources, keys."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.shells.peer import UdpPeer
from tests.relay.relay_process import RelayProcess
from tests.support.paths import RELAYFLEET
from tests.support.ports import free_port

# The operator's tests call wait_until by its old name here; new code imports it from waiting.


class Operator:
    """A `relayfleet operator` process serving one namespace (tests share the API server)."""

    def __init__(
        self,
        control_plane,
        redis_url: str,
        namespace: str,
        log: Path,
        *peering: str,
        kubeconfig: Path | None = None,
    ) -> None:
        """Standalone unless ``peering`` flags are given (e.g. ``--priority 10``); admin unless
        ``kubeconfig`` names another identity."""
        self._log = log.open("w")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or control_plane.kubeconfig)}
        metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.process = subprocess.Popen(
            [
                RELAYFLEET, "operator", "--store", redis_url,
                "--namespace", namespace, "--relay-check-interval", "1s", "--log-level", "debug",
                "--metrics-listen", f"127.0.0.1:{metrics_port}",
                *(peering or ["--standalone"]),
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.log = log

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def endpoint_yaml(name: str, keys: list[str], relay: str | None = None) -> str:
    spec = {"discoKeys": keys}
    if relay:
        spec["relay"] = relay
    return json.dumps(
        {
            "apiVersion": "relayfleet.io/v1alpha1",
            "kind": "RelayEndpoint",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def apply_endpoints(control_plane, namespace: str, names: list[str], timeout: float = 60.0) -> None:
    """RelayEndpoints of these names, each with fresh keys, applied in one kubectl call."""
    items = [json.loads(endpoint_yaml(name, [str(k.public) for k in new_keys()])) for name in names]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=listing, timeout=timeout)


def allocated(control_plane, namespace: str) -> list[dict]:
    """The RelayEndpoints of ``namespace`` whose phase is Allocated."""
    listing = json.loads(control_plane.kubectl("-n", namespace, "get", "rep", "-o", "json").stdout)
    return [r for r in listing["items"] if r.get("status", {}).get("phase") == "Allocated"]


RESUMED = "Resuming is processed"
"""What kopf logs (at info) for each resource whose resume handler has run."""


def get(control_plane, namespace: str, name: str) -> dict:
    result = control_plane.kubectl("-n", namespace, "get", "rep", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def events(
    control_plane,
    namespace: str,
    *,
    reason: str | None = None,
    about: str | None = None,
    kind: str | None = None,
) -> list[dict]:
    """The Events in ``namespace``, of ``reason`` and about the object named ``about``, of
    ``kind``, where given (a field selector: kube-apiserver filters them)."""
    given = {"reason": reason, "involvedObject.name": about, "involvedObject.kind": kind}
    fields = [f"{field}={value}" for field, value in given.items() if value]
    selector = ["--field-selector", ",".join(fields)] if fields else []
    result = control_plane.kubectl("-n", namespace, "get", "events", *selector, "-o", "json")
    return json.loads(result.stdout)["items"]


def new_keys() -> list[DiscoPrivateKey]:
    return [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]


async def start_relay(control_plane, redis_server, name: str, *extra: str) -> RelayProcess:
    return await RelayProcess.start(
        "--store", redis_server.url(), "--name", name, "--addr", "127.0.0.1",
        "--heartbeat-interval", "300ms", "--kubeconfig", str(control_plane.kubeconfig),
        "--report-interval", "200ms", *extra,
    )  # fmt: skip


def phase_is(control_plane, namespace: str, name: str, phase: str):
    def check():
        resource = get(control_plane, namespace, name)
        return resource.get("status", {}).get("phase") == phase and resource

    return check


async def bind_and_relay(status: dict, keys: list[DiscoPrivateKey]) -> None:
    """Two clients (version 1) bind where the status says, as its readers would, and relay a
    datagram each way; TimeoutError when the relay does not answer them."""
    server = DiscoPublicKey.parse(status["serverDisco"])
    clients = [
        RelayClient(keys[i], server, status["vni"], remote_key=keys[1 - i].public) for i in (0, 1)
    ]
    host, port = status["addrPorts"][0].rsplit(":", 1)
    relay = (host, int(port))
    peers = [await UdpPeer.open(), await UdpPeer.open()]
    try:
        for client, peer in zip(clients, peers, strict=True):
            peer.send(client.bind(), relay)
            peer.send(client.answer(await peer.receive()), relay)
        for sender in (0, 1):
            peers[sender].send(clients[sender].data(b"through the fleet"), relay)
            received = await peers[1 - sender].receive()
            assert clients[1 - sender].read_data(received) == b"through the fleet"
    finally:
        for peer in peers:
            peer.close()


def reported_bound(control_plane, namespace: str, name: str):
    """A condition: the relay reported the resource Bound, both clients bound with packets."""

    def check():
        status = get(control_plane, namespace, name).get("status", {})
        clients = status.get("clients", [])
        both = len(clients) == 2 and all(
            c.get("handshake") == "Bound" and c.get("packets", 0) > 0 for c in clients
        )
        return status.get("phase") == "Bound" and both and status

    return check
