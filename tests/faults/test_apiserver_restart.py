"""Fault: the Kubernetes control plane restarts (kube-apiserver killed) during allocations.

Issue 8's fourth fault. The operator and the relays' status reporters talk to
the API server; when it goes away, their watches and patches fail, and when
it is back on the same etcd data they must pick up where they were: every
resource allocated exactly once, statuses written, bound endpoints relaying
all along (the data path never touches Kubernetes). The restart would break
every other test sharing the session's control plane, so this module runs
one of its own: kube-apiserver is killed (SIGKILL) and etcd stopped while the
operator allocates 100 endpoints over two relays, then both start again on
the same data directory and ports.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import (
    ChangeLog,
    Checks,
    Endpoints,
    Peers,
    check_invariants,
    check_no_outage,
    issued_total,
    operator_flags,
    settled,
    start_probes,
    start_relay,
    stop_relays,
    store_count,
)
from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import Operator
from tests.support import controlplane
from tests.support.controlplane import ControlPlane
from tests.support.waiting import wait_until, wait_until_sync

COUNT = 100
RESTART_AFTER = 30
RELAYS = ("ar-a", "ar-b")
NAMESPACE = "faults"
CRD = Path(__file__).resolve().parents[2] / "crds" / "relayendpoint.yaml"


@pytest.fixture(scope="module")
def private_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver for this module alone, with the CRD and a namespace."""
    controlplane.build()
    directory = tmp_path_factory.mktemp("private-plane")
    plane = ControlPlane(directory, durable=False)
    plane.start()
    try:
        plane.kubectl("apply", "-f", str(CRD))
        plane.kubectl(
            "wait", "--for=condition=Established", "crd/relayendpoints.relayfleet.io",
            "--timeout=30s",
        )  # fmt: skip
        plane.kubectl("create", "namespace", NAMESPACE)
        yield plane
    finally:
        plane.close()
        shutil.rmtree(directory / "etcd", ignore_errors=True)


def restart(plane: ControlPlane, timeout: float = 90.0) -> float:
    """SIGKILL kube-apiserver, stop etcd, start both on the same data and ports; seconds down.

    ``ControlPlane.start`` would pick new ports if the old ones linger in
    TIME_WAIT, and every client holds a kubeconfig naming the old one, so
    the processes are started here with the same command lines.
    """
    began = time.monotonic()
    pid = plane.apiserver.pid()
    assert pid is not None, "kube-apiserver is not running"
    os.kill(pid, signal.SIGKILL)
    plane.apiserver.stop()
    plane.etcd.stop()
    plane.etcd.start(plane.etcd_argv())
    plane.apiserver.start(plane.apiserver_argv())

    def ready() -> bool:
        for process in (plane.etcd, plane.apiserver):
            code = process.exited()
            assert code is None, f"{process.name} exited ({code}):\n{process.log_tail()}"
        try:
            return plane.request("GET", "/readyz", timeout=5) == (200, b"ok")
        except OSError:
            return False

    wait_until_sync(ready, "kube-apiserver ready again", timeout=timeout, interval=0.1)
    return time.monotonic() - began


@pytest.mark.timeout(240)
async def test_a_control_plane_restart_during_allocations_loses_nothing(
    private_plane, redis_server, store, fault_table, tmp_path
):
    row = fault_table("kube-apiserver killed (SIGKILL), etcd restarted")
    checks = Checks(row.checked)
    plane = private_plane
    endpoints = Endpoints(plane, NAMESPACE)
    changes = ChangeLog(redis_server.url()).start()
    url = redis_server.url()
    relays: dict[str, RelayProcess] = {}
    operator = Operator(plane, url, NAMESPACE, tmp_path / "operator.log", *operator_flags("10s"))
    probes = []
    creating: asyncio.Task[float] | None = None
    try:
        for name in RELAYS:
            relays[name] = await start_relay(plane, url, name, tmp_path)
        probe_peers = await start_probes(endpoints, RELAYS, probes, operator.log)

        burst = [Peers.fresh(f"burst-{i:03}") for i in range(COUNT)]
        creating = asyncio.create_task(endpoints.create(burst))

        async def allocations_under_way() -> bool:
            return await store_count(store, RELAYS) >= len(probe_peers) + RESTART_AFTER

        await wait_until(allocations_under_way, "allocations under way", timeout=60)
        at_restart = await store_count(store, RELAYS)
        in_flight = not creating.done()
        fault_start = time.monotonic()
        downtime = await asyncio.to_thread(restart, plane)
        row.injected = (
            f"SIGKILL to kube-apiserver after {at_restart} of {COUNT + len(probe_peers)} "
            f"allocations, etcd stopped, both started again on the same data and ports "
            f"({downtime:.1f} s down)"
        )
        created_in = await creating
        row.checked(
            f"all {COUNT} created in {created_in:.1f} s"
            + (", retrying through the restart" if in_flight else ", before the restart")
        )
        expected = {p.name: "Allocated" for p in burst} | {p.name: "Bound" for p in probe_peers}
        resources = await settled(endpoints, expected, timeout=90, log=operator.log)
        fault_end = time.monotonic()
        row.checked(f"settled {fault_end - fault_start:.1f} s after the kill")
        reports = [probe.finish(after=fault_end) for probe in probes]
        probes = []

        await check_invariants(
            checks, resources, [*burst, *probe_peers], expected, store, changes, relays
        )
        with checks.check("each resource allocated once") as outcome:
            issued = await issued_total(store, RELAYS)
            assert issued == len(expected), f"{issued} issued for {len(expected)} resources"
            outcome.detail = f"{issued} LamportIDs issued in all"
        check_no_outage(checks, reports, fault_start, fault_end)
        checks.assert_all()
    finally:
        if creating is not None:
            creating.cancel()
        for probe in probes:
            probe.finish()
        operator.process.kill()
        operator.stop()
        await stop_relays(relays, tmp_path)
        changes.stop()
