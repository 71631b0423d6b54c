"""Graceful shutdown on a real control plane: SIGTERM leaves the final state in the status.

A relay reports at most once per --report-interval; one stopped between two
reports must still leave its endpoints' last state in their RelayEndpoints
(and in Redis), and exit 0 within --shutdown-timeout.
"""

from __future__ import annotations

import signal
import time

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPublicKey
from relay.shells.peer import UdpPeer
from tests.relay_operator.e2e_support import (
    endpoint_yaml,
    get,
    new_keys,
    phase_is,
    start_relay,
)
from tests.support.waiting import wait_until

SHUTDOWN_TIMEOUT = 15.0


async def test_sigterm_reports_the_final_state_and_exits_0(
    crd, kube_namespace, operator, redis_server, store
):
    relay = await start_relay(
        crd, redis_server, "leaving",
        "--report-interval", "1h", "--shutdown-timeout", f"{SHUTDOWN_TIMEOUT:g}s",
    )  # fmt: skip
    keys = new_keys()
    peers = [await UdpPeer.open(), await UdpPeer.open()]
    try:
        yaml = endpoint_yaml("leaving", [str(k.public) for k in keys], relay="leaving")
        crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=yaml)
        allocated = await wait_until(
            phase_is(crd, kube_namespace, "leaving", "Allocated"), "Allocated", log=operator.log
        )
        status = allocated["status"]
        server = DiscoPublicKey.parse(status["serverDisco"])
        clients = [RelayClient(k, server, status["vni"], protocol=0) for k in keys]
        host, port = status["addrPorts"][0].rsplit(":", 1)
        address = (host, int(port))
        for client, peer in zip(clients, peers, strict=True):
            peer.send(client.bind(), address)
            peer.send(client.answer(await peer.receive()), address)
        peers[0].send(clients[0].data(b"last words"), address)
        assert clients[1].read_data(await peers[1].receive()) == b"last words"
        peers[1].send(clients[1].data(b"goodbye"), address)
        assert clients[0].read_data(await peers[0].receive()) == b"goodbye"

        before = get(crd, kube_namespace, "leaving")["status"]
        assert before["phase"] == "Allocated", "the relay reported before its interval"
        assert {c["handshake"] for c in before["clients"]} == {"Init"}
        operator.stop()  # so that nothing re-places the endpoint once the relay is gone

        started = time.monotonic()
        code, log = await relay.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
    finally:
        for peer in peers:
            peer.close()
        if relay.process.returncode is None:
            await relay.stop(signal.SIGKILL)
    assert code == 0, log
    assert elapsed < SHUTDOWN_TIMEOUT, log
    assert "final status report" not in log  # no warning: it was written

    after = get(crd, kube_namespace, "leaving")["status"]
    assert after["phase"] == "Bound"
    assert [c["handshake"] for c in after["clients"]] == ["Bound", "Bound"]
    assert all(c["packets"] == 1 and c["addr"].startswith("127.0.0.1:") for c in after["clients"])
    conditions = {c["type"]: c["status"] for c in after["conditions"]}
    assert conditions == {"Allocated": "True", "Bound": "True", "Ready": "True"}
    allocation = await store.allocation("leaving", status["vni"])
    assert allocation is not None and allocation.bound
