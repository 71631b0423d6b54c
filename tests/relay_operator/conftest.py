"""Fixtures of the operator's end-to-end tests: the CRD applied, Redis, the operator, a relay.

Each runs a real process (redis-server, `relayfleet operator`, `relayfleet
relay`) against the session's real kube-apiserver (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import Operator

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "relayendpoint.yaml"
RELAY_CRD = ROOT / "crds" / "relay.yaml"


@pytest.fixture(scope="module")
def crd(control_plane):
    """The fleet's own CRDs applied: RelayEndpoint, and Relay (kept by the operator)."""
    control_plane.kubectl("apply", "-f", str(CRD), "-f", str(RELAY_CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/relayendpoints.relayfleet.io",
        "crd/relays.relayfleet.io", "--timeout=30s",
    )  # fmt: skip
    return control_plane


@pytest.fixture
def start_operator(crd, redis_server, kube_namespace, tmp_path):
    """``start_operator(name, *peering_flags, kubeconfig=None)``: an operator process for this
    test's namespace, stopped at the end of the test whatever happens."""
    started = []

    def start(name: str, *peering: str, kubeconfig=None) -> Operator:
        log = tmp_path / f"{name}.log"
        running = Operator(
            crd, redis_server.url(), kube_namespace, log, *peering, kubeconfig=kubeconfig
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def operator(start_operator):
    return start_operator("operator")


@pytest.fixture
async def relay_1(crd, redis_server, tmp_path):
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "relay-1",
        "--key-file", str(tmp_path / "relay-1.key"), "--addr", "127.0.0.1",
        "--heartbeat-interval", "500ms", "--kubeconfig", str(crd.kubeconfig),
        "--report-interval", "200ms",
    )  # fmt: skip
    yield relay
    await relay.stop()


RBAC = ROOT / "deploy" / "rbac.yaml"
SYSTEM_NAMESPACE = "relayfleet-system"


@pytest.fixture(scope="module")
def identities(crd, tmp_path_factory):
    """Kubeconfigs of the operator's and the relays' service accounts, bound to deploy/rbac.yaml."""
    crd.kubectl("apply", "-f", str(RBAC))
    crd.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
    kubeconfigs = {}
    for part in ("operator", "relay"):
        account = f"relayfleet-{part}"
        crd.kubectl("-n", SYSTEM_NAMESPACE, "create", "serviceaccount", account, check=False)
        crd.kubectl(
            "create", "clusterrolebinding", account, f"--clusterrole={account}",
            f"--serviceaccount={SYSTEM_NAMESPACE}:{account}", check=False,
        )  # fmt: skip
        kubeconfigs[part] = crd.kubeconfig_for_service_account(SYSTEM_NAMESPACE, account)
    return kubeconfigs


PEERING_CRDS = ROOT / "crds" / "kopf-peering.yaml"


@pytest.fixture(scope="module")
def peering_crds(crd):
    crd.kubectl("apply", "-f", str(PEERING_CRDS))
    for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        crd.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
    return crd
