"""Least privilege: the operator and a relay do their whole job as the service accounts of
deploy/rbac.yaml, and every verb beyond it is refused by the real API server."""

from __future__ import annotations

import json

import pytest

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPublicKey
from relay.shells.peer import UdpPeer
from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import endpoint_yaml, events, get, new_keys
from tests.support.waiting import wait_until


async def test_the_whole_flow_runs_as_the_least_privileged_accounts(
    peering_crds, identities, kube_namespace, redis_server, start_operator
):
    cp = peering_crds
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "relay-1", "--addr", "127.0.0.1",
        "--heartbeat-interval", "300ms", "--kubeconfig", str(identities["relay"]),
        "--report-interval", "200ms",
    )  # fmt: skip
    operator = start_operator("operator", "--priority", "10", kubeconfig=identities["operator"])
    keys = new_keys()
    peers = [await UdpPeer.open(), await UdpPeer.open()]
    try:
        yaml = endpoint_yaml("least", [str(k.public) for k in keys])
        cp.kubectl("-n", kube_namespace, "apply", "-f", "-", input=yaml)
        status = await wait_until(
            lambda: (
                (s := get(cp, kube_namespace, "least").get("status", {})).get("phase")
                == "Allocated"
                and s
            ),
            "Allocated by the operator's account",
            log=operator.log,
        )
        server = DiscoPublicKey.parse(status["serverDisco"])
        clients = [RelayClient(k, server, status["vni"], protocol=0) for k in keys]
        host, port = status["addrPorts"][0].rsplit(":", 1)
        for client, peer in zip(clients, peers, strict=True):
            peer.send(client.bind(), (host, int(port)))
            peer.send(client.answer(await peer.receive()), (host, int(port)))
        peers[0].send(clients[0].data(b"least privilege"), (host, int(port)))
        assert clients[1].read_data(await peers[1].receive()) == b"least privilege"
        await wait_until(
            lambda: get(cp, kube_namespace, "least").get("status", {}).get("phase") == "Bound",
            "Bound reported by the relay's account",
        )
        await wait_until(
            lambda: events(cp, kube_namespace, reason="Allocated"),
            "the Allocated Event, posted by the operator's account",
        )
        await wait_until(
            lambda: (
                json.loads(
                    cp.kubectl("get", "relay", "relay-1", "-o", "json", check=False).stdout or "{}"
                )
                .get("status", {})
                .get("serverDisco")
                == status["serverDisco"]
            ),
            "the Relay object written by the operator's account",
            log=operator.log,
        )
    finally:
        for peer in peers:
            peer.close()
        operator.stop()
        await relay.stop()
    assert "Forbidden" not in operator.log.read_text()


@pytest.mark.parametrize(
    ("part", "command"),
    [
        ("relay", ["delete", "rep", "target"]),
        ("relay", ["patch", "rep", "target", "--type=merge", "-p", '{"spec":{"relay":"x"}}']),
        ("relay", ["label", "rep", "target", "stolen=yes"]),
        ("relay", ["get", "secrets"]),
        ("relay", ["get", "rep", "target"]),
        ("operator", ["delete", "rep", "target"]),
        ("operator", ["get", "secrets"]),
        ("operator", ["create", "configmap", "x", "--from-literal=a=b"]),
        ("operator", ["get", "pods"]),
    ],
)
def test_verbs_beyond_each_role_are_forbidden(crd, identities, kube_namespace, part, command):
    keys = [str(k.public) for k in new_keys()]
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("target", keys))
    result = crd.kubectl(
        "-n", kube_namespace, *command, kubeconfig=identities[part], check=False
    )  # fmt: skip
    assert result.returncode != 0
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr
