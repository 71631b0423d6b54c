"""The README's "On Kubernetes: a local fleet", done as a new user does it, end to end.

``scripts/local-fleet up``, ``export KUBECONFIG``, ``kubectl apply`` the
example (with keys whose private halves the test holds, as the example's
comment says to), two clients bind where the status says, and the status
shows what the README promises: phase Bound and both clients. The fleet is a
private one (``--home``), so a fleet the user left running is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from tests.relay_operator.e2e_support import bind_and_relay, new_keys
from tests.support.controlplane import kubectl_executable
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SCRIPT = ROOT / "scripts" / "local-fleet"
EXAMPLE = ROOT / "examples" / "relayendpoint.yaml"


def local_fleet(home, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def fleet_home(tmp_path):
    """Where ``scripts/local-fleet --home`` keeps this test's fleet; brought down at the end."""
    home = tmp_path / "fleet"
    yield home
    down = local_fleet(home, "down", "--purge", timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr


async def test_the_readme_flow_ends_bound_with_both_clients_in_the_status(fleet_home, tmp_path):
    up = local_fleet(fleet_home, "up", timeout=1800)
    assert up.returncode == 0, up.stdout + up.stderr
    kubeconfig = fleet_home / "kubeconfig"
    assert f"export KUBECONFIG={kubeconfig}" in up.stdout
    # the README's `export KUBECONFIG=...`: kubectl finds the cluster as a user's would
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def kubectl(*args: str) -> str:
        result = subprocess.run(
            [kubectl_executable(), f"--cache-dir={tmp_path / 'kubectl-cache'}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    example = yaml.safe_load(EXAMPLE.read_text())
    keys = new_keys()
    example["spec"]["discoKeys"] = [str(k.public) for k in keys]
    applied = tmp_path / "relayendpoint.yaml"
    applied.write_text(yaml.safe_dump(example))
    kubectl("apply", "-f", str(applied))
    name = example["metadata"]["name"]
    logs = fleet_home / "logs"

    def phase(wanted: str, with_clients: bool = False):
        def check():
            status = json.loads(kubectl("get", "rep", name, "-o", "json")).get("status", {})
            clients = status.get("clients", [])
            bound = len(clients) == 2 and all(c.get("handshake") == "Bound" for c in clients)
            return status.get("phase") == wanted and (bound or not with_clients) and status

        return check

    placed = await wait_until(phase("Allocated"), "phase Allocated", log=logs / "operator.log")
    await bind_and_relay(placed, keys)
    relay_log = logs / f"{placed['relay']}.log"
    status = await wait_until(
        phase("Bound", with_clients=True), "phase Bound with both clients", log=relay_log
    )
    assert {c["discoKey"] for c in status["clients"]} == {str(k.public) for k in keys}
    assert all(c["packets"] > 0 and c["addr"].startswith("127.0.0.1:") for c in status["clients"])
    listing = kubectl("get", "rep").splitlines()
    assert listing[0].split()[:5] == ["NAME", "PHASE", "RELAY", "VNI", "LAMPORT"]
    assert listing[1].split()[:4] == [name, "Bound", placed["relay"], str(placed["vni"])]
