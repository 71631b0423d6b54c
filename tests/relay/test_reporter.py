"""The status reporter: what it writes where, its last report on shutdown within a bound, and
a silent API server never holding up a relay's exit. (The full story on a real control plane:
tests/relay_operator/test_graceful_shutdown.py.)"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

from relay.protocol.core import Endpoint, Handshake, RelayCore
from relay.protocol.keys import DiscoPrivateKey, raw_pair
from relay.reporter import StatusReporter
from relay.resource.client import Listing
from relay.store import Allocation
from tests.relay.relay_process import RelayProcess


def new_core() -> RelayCore:
    return RelayCore(DiscoPrivateKey.generate(), bytes(32))


def allocation(vni: int = 1, lamport_id: int = 1) -> Allocation:
    keys = sorted(DiscoPrivateKey.generate().public for _ in range(2))
    return Allocation("relay-x", vni, lamport_id, raw_pair((keys[0], keys[1])), time.time())


def resource(name: str, vni: int, lamport_id: int, relay: str = "relay-x") -> dict:
    return {
        "metadata": {"namespace": "ns", "name": name, "generation": 1},
        "status": {"phase": "Allocated", "relay": relay, "vni": vni, "lamportID": lamport_id},
    }


class SilentApiServer:
    async def listing(self, relay: str, timeout: float) -> Listing:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class RecordingApiServer:
    def __init__(self, resources: list[dict], failures: int = 0) -> None:
        self.resources = resources
        self.failures = failures
        self.patches: list[tuple[str, dict]] = []
        self.timeouts: list[float] = []

    async def listing(self, relay: str, timeout: float) -> Listing:
        self.timeouts.append(timeout)
        return Listing(self.resources, "1")

    async def patch_status(self, namespace: str, name: str, status: dict, timeout: float) -> None:
        self.timeouts.append(timeout)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("apiserver away")
        self.patches.append((name, status))


async def test_an_endpoint_relabelled_from_another_relay_gets_no_report():
    """A tenant who may patch labels moves its RelayEndpoint (VNI 1, LamportID 1 on relay-y)
    to relay-x, whose own VNI 1 has LamportID 1 too: relay-x must not write its clients'
    addresses and counts into the stranger's status."""
    core = new_core()
    core.install(allocation(vni=1, lamport_id=1)).touch()[0].packets = 1
    api = RecordingApiServer([resource("mine", 1, 1), resource("stranger", 1, 1, "relay-y")])
    reporter = StatusReporter(core, "relay-x", api, interval=3600)
    await reporter.report_once()
    assert [name for name, _ in api.patches] == ["mine"]


async def test_an_untouched_endpoint_is_not_reported_over_the_operators_write():
    core = new_core()
    core.install(allocation(vni=1, lamport_id=1))
    api = RecordingApiServer([resource("fresh", 1, 1)])
    reporter = StatusReporter(core, "relay-x", api, interval=3600)
    await reporter.report_once()
    assert api.patches == []
    core.endpoint(1).touch()[0].packets = 1
    await reporter.report_once()
    assert [name for name, _ in api.patches] == ["fresh"]


async def test_the_relay_binding_an_endpoint_keeps_the_operators_ready_and_its_time():
    """The reporter writes Ready from the phase as the operator does: Allocated -> Bound keeps
    Ready True and its lastTransitionTime; only the reason follows the phase."""
    core = new_core()
    endpoint = core.install(allocation(vni=1, lamport_id=1))
    for client in endpoint.touch():
        client.handshake = Handshake.BOUND
    endpoint.bound = True
    written = resource("binding", 1, 1)
    written["status"]["conditions"] = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Allocated",
            "message": "m",
            "observedGeneration": 1,
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        }
    ]
    api = RecordingApiServer([written])
    await StatusReporter(core, "relay-x", api, interval=3600).report_once()
    ((_, status),) = api.patches
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (status["phase"], status["clientsBound"]) == ("Bound", "2/2")
    assert (ready["status"], ready["reason"]) == ("True", "Bound")
    assert ready["lastTransitionTime"] == "2020-01-01T00:00:00Z"


async def test_the_last_report_gives_up_at_its_timeout():
    reporter = StatusReporter(new_core(), "relay-x", SilentApiServer(), interval=3600)
    started = time.monotonic()
    assert await reporter.close(0.2) is False
    assert time.monotonic() - started < 1.0


async def test_the_last_report_writes_live_and_expired_endpoints_within_the_deadline():
    core = new_core()
    live = allocation(vni=1)
    core.install(live).touch()[0].packets = 1
    expired = Endpoint(allocation(vni=2))
    api = RecordingApiServer([resource("live", 1, 1), resource("gone", 2, 1)])
    reporter = StatusReporter(core, "relay-x", api, interval=3600)
    reporter.note_expired([expired])
    assert await reporter.close(5.0) is True
    assert {name: status["phase"] for name, status in api.patches} == {
        "live": "Allocated",
        "gone": "Expired",
    }
    assert all(0 < timeout <= 5.0 for timeout in api.timeouts)


async def test_an_expiry_whose_patch_failed_is_reported_at_the_next_pass():
    api = RecordingApiServer([resource("gone", 2, 1)], failures=1)
    reporter = StatusReporter(new_core(), "relay-x", api, interval=3600)
    reporter.note_expired([Endpoint(allocation(vni=2))])
    assert await reporter.close(5.0) is False
    assert api.patches == []
    assert await reporter.close(5.0) is True
    assert [(name, status["phase"]) for name, status in api.patches] == [("gone", "Expired")]


def silent_kubeconfig(tmp_path, port: int):
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
  - name: silent
    cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}
users:
  - name: nobody
    user: {{token: not-a-real-token}}
contexts:
  - name: silent
    context: {{cluster: silent, user: nobody}}
current-context: silent
"""
    )
    return path


async def test_a_silent_api_server_does_not_hold_up_the_exit(tmp_path):
    """The API server accepts connections and never answers: the relay still exits, with 0,
    within --shutdown-timeout plus --report-timeout for a call it had in flight."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        kubeconfig = silent_kubeconfig(tmp_path, silent.getsockname()[1])
        relay = await RelayProcess.start(
            "--report-status",
            "on",
            "--kubeconfig",
            str(kubeconfig),
            "--shutdown-timeout",
            "1s",
            "--report-timeout",
            "1s",
        )
        started = time.monotonic()
        code, log = await relay.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
    assert code == 0, log
    assert elapsed < 1.0 + 1.0 + 4.0, log
    assert re.search(r"final status report not done in [01]\.\ds", log), log
