"""The status reporter's view on a real kube-apiserver: one list, then a watch.

Issue 19 item 7: a reporter that listed every RelayEndpoint of its relay every
interval cost the API server in proportion to what exists. It now lists once
and watches from the list's resourceVersion, so that while nothing happens it
makes no list at all. These tests count the lists and watches that reach the
API server (a counting RelayEndpointsApi, and kube-apiserver's own
apiserver_request_total) while the reporter reports resources created after
it started, idles, sees its watch expire (410 Gone), is refused the watch
verb, and outlives an API server that stops and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.aio import stop_tasks
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPrivateKey, raw_pair
from relay.reporter import StatusReporter
from relay.resource.client import Listing, RelayEndpointsApi
from relay.resource.definition import GROUP, PLURAL, RELAY_LABEL, VERSION
from relay.store import Allocation
from tests.support import controlplane
from tests.support.controlplane import ControlPlane
from tests.support.waiting import wait_until, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "relayendpoint.yaml"
NO_WATCH_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: relay-without-watch}
rules:
  - apiGroups: [relayfleet.io]
    resources: [relayendpoints]
    verbs: [list]
  - apiGroups: [relayfleet.io]
    resources: [relayendpoints/status]
    verbs: [get, patch]
"""


def install_crd(plane: ControlPlane) -> None:
    """The CRD, established and served (a new resource's storage answers 429 at first)."""
    plane.kubectl("apply", "-f", str(CRD))
    plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=30s"
    )  # fmt: skip

    def served() -> bool:
        status, _ = plane.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}?limit=1")
        return status == 200

    wait_until_sync(served, "RelayEndpoints served", timeout=30, interval=0.1)


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    install_crd(control_plane)
    return control_plane


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace, its RelayEndpoints deleted at the end (other tests in the session
    read every RelayEndpoint; the namespace stays: nothing here finalizes namespaces)."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    plane.kubectl("create", "namespace", name)
    yield name
    plane.kubectl("-n", name, "delete", f"{PLURAL}.{GROUP}", "--all", "--wait=false")


class CountingApi(RelayEndpointsApi):
    """The real client, counting the lists and watches it is asked for; ``expire_next``
    makes the next watch start from a resourceVersion the API server no longer has."""

    def __init__(self, kubeconfig: str | None) -> None:
        super().__init__(kubeconfig)
        self.lists = 0
        self.watches = 0
        self.expire_next = False

    async def listing(self, relay: str, timeout: float) -> Listing:
        self.lists += 1
        return await super().listing(relay, timeout)

    async def watch(
        self, relay: str, resource_version: str, *, timeout_seconds: int, read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.watches += 1
        if self.expire_next:
            self.expire_next = False
            resource_version = "1"
        events = super().watch(
            relay, resource_version, timeout_seconds=timeout_seconds, read_timeout=read_timeout
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event


def new_core() -> RelayCore:
    return RelayCore(DiscoPrivateKey.generate(), bytes(32))


def install(core: RelayCore, relay: str, vni: int, packets: int = 1) -> None:
    keys = sorted(DiscoPrivateKey.generate().public for _ in range(2))
    endpoint = core.install(Allocation(relay, vni, 1, raw_pair((keys[0], keys[1])), time.time()))
    endpoint.touch()[0].packets = packets


PREFIX = "reporter-watch-"
"""Of every resource's name here: other tests in the session list RelayEndpoints by name
across namespaces."""


def create(plane: ControlPlane, namespace: str, name: str, relay: str, vni: int) -> None:
    """A RelayEndpoint as the operator leaves it: labelled for ``relay``, status Allocated."""
    name = PREFIX + name
    keys = [str(DiscoPrivateKey.generate().public) for _ in range(2)]
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RelayEndpoint",
        "metadata": {"name": name, "labels": {RELAY_LABEL: relay}},
        "spec": {"discoKeys": keys},
    }
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    status, text = plane.request("POST", path, body)
    assert status == 201, text
    status_body = {
        "status": {
            "phase": "Allocated",
            "relay": relay,
            "vni": vni,
            "lamportID": 1,
            "clients": [{"discoKey": key, "handshake": "Init"} for key in keys],
        }
    }
    plane.kubectl(
        "-n", namespace, "patch", f"{PLURAL}.{GROUP}", name, "--subresource=status",
        "--type=merge", "-p", json.dumps(status_body),
    )  # fmt: skip


def packets(plane: ControlPlane, namespace: str, name: str) -> int | None:
    """The first client's packet count in the resource's status, if reported."""
    name = PREFIX + name
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    status, body = plane.request("GET", path)
    if status != 200:
        return None
    clients = json.loads(body).get("status", {}).get("clients") or [{}]
    return clients[0].get("packets")


def list_requests(plane: ControlPlane) -> int:
    """kube-apiserver's count of LIST requests for RelayEndpoints, from every client."""
    status, body = plane.request("GET", "/metrics")
    assert status == 200
    total = 0
    for line in body.decode().splitlines():
        if line.startswith("apiserver_request_total{") and all(
            label in line for label in ('verb="LIST"', f'resource="{PLURAL}"', 'subresource=""')
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@contextlib.asynccontextmanager
async def running(reporter: StatusReporter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(reporter.run())
    try:
        yield task
    finally:
        await stop_tasks(task)


def reporter_for(plane: ControlPlane, core: RelayCore, relay: str, **options: Any):
    api = CountingApi(str(options.pop("kubeconfig", plane.kubeconfig)))
    options.setdefault("interval", 0.1)
    options.setdefault("request_timeout", 5.0)
    options.setdefault("watch_timeout_seconds", 1)
    return api, StatusReporter(core, relay, api, **options)


def relay_name() -> str:
    return f"relay-{uuid.uuid4().hex[:8]}"


async def test_a_resource_created_later_is_reported_from_the_watch_and_idling_lists_nothing(
    plane, namespace
):
    relay = relay_name()
    core = new_core()
    install(core, relay, vni=1)
    install(core, relay, vni=2)
    create(plane, namespace, "before", relay, vni=1)
    api, reporter = reporter_for(plane, core, relay)
    async with running(reporter):
        await wait_until(lambda: packets(plane, namespace, "before") == 1, "'before' reported")
        assert api.lists == 1

        create(plane, namespace, "after", relay, vni=2)
        await wait_until(lambda: packets(plane, namespace, "after") == 1, "'after' reported")
        assert api.lists == 1, "a resource created later came from the watch, not a list"

        # Idle: nothing changes. Passes go on and each watch ends (after 1 s) and resumes.
        lists_seen_by_server = list_requests(plane)
        passes, watches, patches = reporter.passes, api.watches, reporter.patches
        await wait_until(
            lambda: reporter.passes >= passes + 20 and api.watches >= watches + 3,
            "20 idle passes and 3 watches",
        )
        assert api.lists == 1
        assert list_requests(plane) == lists_seen_by_server
        assert reporter.patches == patches, "nothing changed, nothing patched"

        core.endpoint(2).clients[0].packets = 5  # a change is still reported
        await wait_until(lambda: packets(plane, namespace, "after") == 5, "the change reported")
        assert api.lists == 1


async def test_a_resource_relabelled_away_or_deleted_leaves_the_view(plane, namespace):
    relay = relay_name()
    core = new_core()
    install(core, relay, vni=1)
    install(core, relay, vni=2)
    create(plane, namespace, "moved", relay, vni=1)
    create(plane, namespace, "deleted", relay, vni=2)
    api, reporter = reporter_for(plane, core, relay)
    async with running(reporter):
        await wait_until(lambda: len(reporter._view) == 2, "both in the view")
        resources = f"{PLURAL}.{GROUP}"
        plane.kubectl("-n", namespace, "label", resources, f"{PREFIX}moved", f"{RELAY_LABEL}-")
        plane.kubectl("-n", namespace, "delete", resources, f"{PREFIX}deleted")
        await wait_until(lambda: not reporter._view, "both gone from the view")
        passes = reporter.passes
        await wait_until(lambda: reporter.passes > passes, "a pass after they left")
    assert api.lists == 1


async def test_an_expired_watch_lists_once_again_and_reporting_goes_on(plane, namespace, caplog):
    caplog.set_level(logging.INFO, logger="relay.reporter")
    relay = relay_name()
    core = new_core()
    install(core, relay, vni=1)
    install(core, relay, vni=2)
    create(plane, namespace, "first", relay, vni=1)
    api, reporter = reporter_for(plane, core, relay)
    async with running(reporter):
        await wait_until(lambda: packets(plane, namespace, "first") == 1, "'first' reported")
        assert api.lists == 1
        api.expire_next = True  # the next watch (within 1 s) asks for resourceVersion 1: 410
        await wait_until(lambda: api.lists == 2, "a list after the 410")
        assert "RelayEndpoints watch expired" in caplog.text
        create(plane, namespace, "second", relay, vni=2)
        await wait_until(lambda: packets(plane, namespace, "second") == 1, "'second' reported")
        watches = api.watches
        await wait_until(lambda: api.watches >= watches + 2, "two more watches")
        assert api.lists == 2


async def test_without_the_watch_verb_it_lists_every_interval_and_still_reports(
    plane, namespace, caplog
):
    """Relays of a release whose role predates watching (list only) keep reporting."""
    plane.kubectl("apply", "-f", "-", input=NO_WATCH_ROLE)
    user = f"relay-no-watch-{uuid.uuid4().hex[:6]}"
    plane.kubectl(
        "create", "clusterrolebinding", user, "--clusterrole=relay-without-watch", f"--user={user}"
    )  # fmt: skip
    kubeconfig = plane.kubeconfig_for_user(user)
    caplog.set_level(logging.INFO, logger="relay.reporter")
    relay = relay_name()
    core = new_core()
    install(core, relay, vni=1)
    api, reporter = reporter_for(plane, core, relay, kubeconfig=kubeconfig)
    async with running(reporter):
        await wait_until(lambda: "may not watch RelayEndpoints" in caplog.text, "the warning")
        create(plane, namespace, "polled", relay, vni=1)
        await wait_until(lambda: packets(plane, namespace, "polled") == 1, "'polled' reported")
        lists = api.lists
        await wait_until(lambda: api.lists >= lists + 3, "a list every interval")
    assert api.watches == 1, "not asked again before WATCH_AGAIN_AFTER_FORBIDDEN"


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "relayendpoints-watch"]


async def test_stopping_the_reporter_ends_a_watch_blocked_in_a_read(plane, namespace):
    """A watch asked to last a minute is read by a thread blocked in recv once it has passed
    on an event: stopping the reporter shuts its socket, so the thread ends at once, not
    when the minute is up (nor after the 90 s read timeout)."""
    relay = relay_name()
    api, reporter = reporter_for(
        plane, new_core(), relay, request_timeout=90.0, watch_timeout_seconds=60
    )
    async with running(reporter):
        await wait_until(lambda: api.watches == 1, "a watch under way")
        create(plane, namespace, "seen", relay, vni=1)
        await wait_until(lambda: reporter._view, "the event read by the watch's thread")
        assert watch_threads()
    await wait_until(lambda: not watch_threads(), "the watch's thread ended", timeout=10)
    assert api.watches == 1


@pytest.fixture
def private_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver of this test alone: it stops the API server."""
    controlplane.build()
    directory = tmp_path_factory.mktemp("reporter-plane")
    plane = ControlPlane(directory, durable=False)
    plane.start()
    try:
        install_crd(plane)
        yield plane
    finally:
        plane.close()
        shutil.rmtree(directory / "etcd", ignore_errors=True)


def apiserver_ready(plane: ControlPlane) -> bool:
    code = plane.apiserver.exited()
    assert code is None, f"kube-apiserver exited ({code}):\n{plane.apiserver.log_tail()}"
    try:
        status, _ = plane.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}?limit=1", timeout=5)
    except OSError:
        return False
    return status == 200


@pytest.mark.timeout(240)
async def test_an_api_server_that_stops_and_comes_back_is_reported_to_again(private_plane, caplog):
    caplog.set_level(logging.INFO, logger="relay.reporter")
    plane = private_plane
    plane.kubectl("create", "namespace", "restart")
    relay = relay_name()
    core = new_core()
    install(core, relay, vni=1)
    install(core, relay, vni=2)
    create(plane, "restart", "before", relay, vni=1)
    _, reporter = reporter_for(plane, core, relay, request_timeout=2.0)
    async with running(reporter):
        await wait_until(lambda: packets(plane, "restart", "before") == 1, "'before' reported")
        os.kill(plane.apiserver.pid(), signal.SIGKILL)
        await asyncio.to_thread(plane.apiserver.stop)
        await wait_until(
            lambda: "watching RelayEndpoints failed" in caplog.text, "a warning", timeout=30
        )
        core.endpoint(1).clients[0].packets = 7  # changed while the API server was away
        await asyncio.to_thread(plane.apiserver.start, plane.apiserver_argv())
        await asyncio.to_thread(
            wait_until_sync, lambda: apiserver_ready(plane), "kube-apiserver back", timeout=120
        )
        await wait_until(lambda: packets(plane, "restart", "before") == 7, "the change reported")
        create(plane, "restart", "after", relay, vni=2)
        await wait_until(lambda: packets(plane, "restart", "after") == 1, "'after' reported")
        await wait_until(lambda: "watching RelayEndpoints again" in caplog.text, "recovery said")
