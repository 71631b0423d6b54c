"""The reference's own Go client binds and relays through an endpoint the operator allocated.

`kubectl apply` a RelayEndpoint for two fresh keys; once the operator has
written phase Allocated, `refclient bind` (built from the tailscale.com
v1.84.0 disco, net/packet and types/key packages) gets nothing but the
status (serverDisco, addrPorts[0], vni) and the two private keys, runs both
bind handshakes and relays packets both ways. The relay agent then reports
the endpoint Bound, with every packet of both clients counted, in the status.
"""

from __future__ import annotations

import asyncio
import json

from tests.conformance.servers import REFCLIENT, ensure_go_helpers
from tests.relay_operator.e2e_support import endpoint_yaml, get, new_keys, phase_is
from tests.support.waiting import wait_until

PACKETS = 10
REFCLIENT_TIMEOUT = 60


async def test_reference_client_binds_with_the_status_and_relays_both_ways(
    crd, kube_namespace, operator, relay_1
):
    # Builds refclient when missing or older than its sources (a stale
    # binary may predate the bind mode); a quick no-op when up to date.
    ensure_go_helpers()
    keys = new_keys()
    crd.kubectl(
        "-n", kube_namespace, "apply", "-f", "-",
        input=endpoint_yaml("reference", [str(k.public) for k in keys]),
    )  # fmt: skip
    resource = await wait_until(
        phase_is(crd, kube_namespace, "reference", "Allocated"), "phase Allocated", log=operator.log
    )
    status = resource["status"]

    process = await asyncio.create_subprocess_exec(
        str(REFCLIENT), "bind",
        "--server-disco", status["serverDisco"],
        "--relay-addr", status["addrPorts"][0],
        "--vni", str(status["vni"]),
        "--key", keys[0].text(),
        "--key", keys[1].text(),
        "--packets", str(PACKETS),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), REFCLIENT_TIMEOUT)
    checks = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    failed = [c for c in checks if not c["ok"]]
    assert failed == [], f"{failed}\n{stderr.decode()}"
    assert process.returncode == 0, stderr.decode()
    assert [c["check"] for c in checks] == [
        "bind_handshake_a",
        "bind_handshake_b",
        "relay_a_to_b",
        "relay_b_to_a",
    ]

    def reported_bound():
        status = get(crd, kube_namespace, "reference").get("status", {})
        clients = status.get("clients", [])
        relayed = len(clients) == 2 and all(
            c.get("handshake") == "Bound" and c.get("packets", 0) == PACKETS for c in clients
        )
        return status.get("phase") == "Bound" and relayed and status

    # Every packet the client sent was relayed (refclient checked each one
    # arrived), so the counts the agent reports settle at exactly PACKETS.
    status = await wait_until(
        reported_bound, f"phase Bound with {PACKETS} packets from each client", log=operator.log
    )
    clients = {c["discoKey"]: c for c in status["clients"]}
    assert set(clients) == {str(k.public) for k in keys}
    assert all(c["addr"].startswith("127.0.0.1:") and c["bytes"] > 0 for c in clients.values())
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Allocated": "True", "Bound": "True", "Ready": "True"}
