"""The Relay objects over a real API server: kept by the operator, read with kubectl and
``relayfleet status`` with a kubeconfig alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import endpoint_yaml, events, new_keys, phase_is
from tests.support.controlplane import kubectl_executable
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

RELAYFLEET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "relayfleet"
KUBECTL = kubectl_executable()
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
VIEWERS = "relayfleet-viewers"
FAST = ("--standalone", "--relay-object-refresh", "1s")


def relay_object(cp, name: str) -> dict:
    done = cp.kubectl("get", "relay", name, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def state_is(cp, name: str, state: str):
    return lambda: (o := relay_object(cp, name)).get("status", {}).get("state") == state and o


async def start_relay(cp, redis_server, key_file: Path, name: str) -> RelayProcess:
    return await RelayProcess.start(
        "--store", redis_server.url(), "--name", name,
        "--key-file", str(key_file), "--addr", "127.0.0.1",
        "--heartbeat-interval", "300ms", "--kubeconfig", str(cp.kubeconfig),
        "--report-interval", "200ms",
    )  # fmt: skip


async def test_a_relay_is_a_kubernetes_object_that_follows_its_liveness(
    crd, redis_server, start_operator, kube_namespace, tmp_path
):
    cp = crd
    operator = start_operator("operator", *FAST)
    relay = await start_relay(cp, redis_server, tmp_path / "relay.key", "relay-obj")
    try:
        found = await wait_until(
            state_is(cp, "relay-obj", "Alive"), "Relay Alive", log=operator.log
        )
        status = found["status"]
        assert status["capacity"] > 0
        assert status["addrPorts"] == [f"127.0.0.1:{relay.ready['udp_port']}"]
        assert status["serverDisco"].startswith("discokey:")
        ready = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"
        cp.kubectl("wait", "--for=condition=Ready", "relay/relay-obj", "--timeout=30s")
        # posted after the status it follows
        await wait_until(
            lambda: events(cp, "default", reason="Registered", about="relay-obj", kind="Relay"),
            "Registered Event",
        )

        table = cp.kubectl("get", "relays").stdout.splitlines()
        assert table[0].split() == [
            "NAME", "STATUS", "ENDPOINTS", "CAPACITY", "ADDRESS", "VERSION", "HEARTBEAT", "AGE",
        ]  # fmt: skip
        row = next(line.split() for line in table if line.startswith("relay-obj "))
        assert row[1:3] == ["Alive", "0"] and row[4] == f"127.0.0.1:{relay.ready['udp_port']}"
        wide = cp.kubectl("get", "relays", "-o", "wide").stdout
        assert status["serverDiscoShort"] in wide

        # Load is written at the next refresh (1 s here).
        keys = new_keys()
        yaml = endpoint_yaml("obj-1", [str(k.public) for k in keys], relay="relay-obj")
        cp.kubectl("-n", kube_namespace, "apply", "-f", "-", input=yaml)
        await wait_until(phase_is(cp, kube_namespace, "obj-1", "Allocated"), "allocated")
        await wait_until(
            lambda: relay_object(cp, "relay-obj").get("status", {}).get("endpoints") == 1,
            "the Relay's endpoints refreshed",
            log=operator.log,
        )

        # Dead: written at the next check, Ready False, a warning Event.
        await relay.stop()
        dead = await wait_until(state_is(cp, "relay-obj", "Dead"), "Relay Dead", log=operator.log)
        ready = next(c for c in dead["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "HeartbeatStopped")
        stopped = await wait_until(
            lambda: events(cp, "default", reason="Stopped", about="relay-obj", kind="Relay"),
            "Stopped Event",
        )
        assert stopped[0]["type"] == "Warning"
        described = cp.kubectl("describe", "relay", "relay-obj").stdout
        assert "Stopped" in described

        # Back under the same key: Alive, and an Event saying so.
        relay = await start_relay(cp, redis_server, tmp_path / "relay.key", "relay-obj")
        await wait_until(state_is(cp, "relay-obj", "Alive"), "Relay Alive again")
        await wait_until(
            lambda: events(cp, "default", reason="CameBack", about="relay-obj", kind="Relay"),
            "CameBack Event",
        )
    finally:
        await relay.stop()


async def test_a_restarted_operator_writes_no_relay_object_that_is_current(
    crd, redis_server, start_operator, tmp_path
):
    cp = crd
    relay = await start_relay(cp, redis_server, tmp_path / "relay.key", "relay-obj-restart")
    try:
        first = start_operator("first", "--standalone")
        key = relay.ready["server_disco"]
        before = await wait_until(
            lambda: (
                (o := relay_object(cp, "relay-obj-restart")).get("status", {}).get("serverDisco")
                == key
                and o
            ),
            "this relay's object",
            log=first.log,
        )
        first.stop()
        second = start_operator("second", "--standalone")
        line = await wait_until(
            lambda: re.search(
                r"keeping \d+ Relay objects: (\d+) found, (\d+) writes", second.log.read_text()
            ),
            "the second operator's first pass",
            log=second.log,
        )
        assert line.group(2) == "0"
        after = relay_object(cp, "relay-obj-restart")
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    finally:
        await relay.stop()


async def test_status_reads_the_fleet_with_a_kubeconfig_alone_also_as_a_kubectl_plugin(
    crd, redis_server, start_operator, tmp_path
):
    cp = crd
    operator = start_operator("operator", *FAST)
    relay = await start_relay(cp, redis_server, tmp_path / "relay.key", "relay-obj-status")
    try:
        await wait_until(state_is(cp, "relay-obj-status", "Alive"), "Relay Alive", log=operator.log)
        env = {
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            "PATH": f"{RELAYFLEET.parent}:{os.environ['PATH']}",
        }
        env.pop("RELAYFLEET_STORE", None)
        done = subprocess.run(
            [str(RELAYFLEET), "status", "-o", "json"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        fleet = json.loads(done.stdout)
        assert fleet["relaysFrom"] == "kubernetes"
        mine = [r for r in fleet["relays"] if r["name"] == "relay-obj-status"]
        assert (
            mine
            and mine[0]["alive"]
            and mine[0]["addrPorts"] == [f"127.0.0.1:{relay.ready['udp_port']}"]
        )
        assert "error" not in fleet["endpoints"]

        plugins = subprocess.run(
            [KUBECTL, "plugin", "list"], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert "kubectl-relayfleet" in plugins.stdout
        text = subprocess.run(
            [KUBECTL, "relayfleet", "status"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        row = next(
            line.split() for line in text.splitlines() if line.startswith("relay-obj-status ")
        )
        assert row[1] == "alive"
        usage = subprocess.run(
            [KUBECTL, "relayfleet", "--help"], env=env, capture_output=True, text=True,
            timeout=60,
        ).stdout  # fmt: skip
        assert usage.startswith("usage: kubectl relayfleet")

        # The viewer role of deploy/rbac.yaml is enough, and lets its holder change nothing.
        cp.kubectl("apply", "-f", str(RBAC))
        cp.kubectl("create", "namespace", VIEWERS, check=False)
        cp.kubectl("-n", VIEWERS, "create", "serviceaccount", "viewer", check=False)
        cp.kubectl(
            "create", "clusterrolebinding", "relayfleet-test-viewer",
            "--clusterrole=relayfleet-viewer", f"--serviceaccount={VIEWERS}:viewer", check=False,
        )  # fmt: skip
        viewer = {**env, "KUBECONFIG": str(cp.kubeconfig_for_service_account(VIEWERS, "viewer"))}
        done = subprocess.run(
            [str(RELAYFLEET), "status", "-o", "json"],
            env=viewer, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert any(r["name"] == "relay-obj-status" for r in json.loads(done.stdout)["relays"])
        denied = subprocess.run(
            [KUBECTL, "delete", "relay", "relay-obj-status"],
            env=viewer, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert denied.returncode != 0 and "forbidden" in denied.stderr
    finally:
        await relay.stop()


def test_status_says_what_is_missing_when_there_is_no_cluster(tmp_path):
    missing = tmp_path / "no-such-kubeconfig"
    env = {**os.environ, "KUBECONFIG": str(missing)}
    env.pop("RELAYFLEET_STORE", None)
    done = subprocess.run(
        [str(RELAYFLEET), "status", "--kubeconfig", str(missing)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot read the Relay objects" in done.stderr
    assert "Traceback" not in done.stderr
