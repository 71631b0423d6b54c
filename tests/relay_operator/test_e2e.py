"""The operator end to end on a real kube-apiserver, real Redis, real relay processes.

`kubectl apply` a RelayEndpoint; the operator (a `relayfleet operator`
process) places it on a relay (a `relayfleet relay` process registered in
Redis, as a pod would be), and the status it writes is what two real clients
need to bind and relay through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPublicKey
from relay.resource.definition import RELAY_DEAD_ANNOTATION, TAKE_UP_ANNOTATION
from relay.shells.peer import UdpPeer
from relay.shells.reuseport import worker_for_vni
from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import (
    RELAYFLEET,
    RESUMED,
    allocated,
    apply_endpoints,
    bind_and_relay,
    endpoint_yaml,
    events,
    get,
    new_keys,
    phase_is,
    reported_bound,
    start_relay,
)
from tests.support.waiting import wait_until


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["discokey:" + "0" * 63, "discokey:" + "1" * 64], "spec.discoKeys[0]"),
        (["discokey:" + "1" * 64, "discokey:" + "1" * 64], "the two disco keys must differ"),
        (
            ["discokey:" + "1" * 64, "discokey:" + "2" * 64, "discokey:" + "3" * 64],
            "spec.discoKeys",
        ),
        (["discokey:" + "1" * 64], "spec.discoKeys"),
    ],
    ids=["bad-key", "equal-keys", "three-keys", "one-key"],
)
def test_malformed_resources_are_refused_by_the_api_server(crd, kube_namespace, keys, message):
    result = crd.kubectl(
        "-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("bad", keys), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_kubectl_explain_reads_well(crd):
    spec = crd.kubectl("explain", "rep.spec").stdout
    assert "discoKeys" in spec and "disco public keys of the two peers" in spec
    status = crd.kubectl("explain", "rep.status").stdout
    assert "lamportID" in status and "phase" in status


async def test_apply_allocates_and_two_clients_relay_with_the_status(
    crd, kube_namespace, operator, relay_1, store
):
    keys = new_keys()
    crd.kubectl(
        "-n", kube_namespace, "apply", "-f", "-",
        input=endpoint_yaml("alice-bob", [str(k.public) for k in keys]),
    )  # fmt: skip
    resource = await wait_until(
        lambda: (
            (r := get(crd, kube_namespace, "alice-bob")).get("status", {}).get("phase")
            == "Allocated"
            and r
        ),
        "phase Allocated",
        log=operator.log,
    )
    status = resource["status"]
    assert status["relay"] == "relay-1"
    assert status["serverDisco"] == relay_1.ready["server_disco"]
    assert status["addrPorts"] == [f"127.0.0.1:{relay_1.ready['udp_port']}"]
    assert (status["bindLifetime"], status["steadyStateLifetime"]) == ("30s", "5m0s")
    assert resource["metadata"]["labels"]["relayfleet.io/relay"] == "relay-1"
    allocation = await store.allocation("relay-1", status["vni"])
    assert allocation is not None and allocation.lamport_id == status["lamportID"]
    assert {str(k) for k in allocation.disco_keys} == {str(k.public) for k in keys}
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Allocated": "True", "Bound": "False", "Ready": "True"}
    # kopf posts Events from a task of its own: the status may land first
    await wait_until(
        lambda: (
            "Allocated" in crd.kubectl("-n", kube_namespace, "get", "events", "-o", "json").stdout
        ),
        "the Allocated Event",
        log=operator.log,
    )
    samples = scrape(operator.metrics_url)
    assert samples[("relayfleet_operator_allocations_total", (("result", "created"),))] == 1
    assert samples[("relayfleet_operator_allocation_seconds_count", ())] == 1
    assert samples[("relayfleet_operator_relays", (("state", "alive"),))] == 1

    server = DiscoPublicKey.parse(status["serverDisco"])
    # one client of each protocol version: the status says which bound how
    clients = [
        RelayClient(keys[0], server, status["vni"], protocol=0),
        RelayClient(keys[1], server, status["vni"], remote_key=keys[0].public, protocol=1),
    ]
    peers = [await UdpPeer.open(), await UdpPeer.open()]
    host, port = status["addrPorts"][0].rsplit(":", 1)
    try:
        for client, peer in zip(clients, peers, strict=True):
            peer.send(client.bind(), (host, int(port)))
            peer.send(client.answer(await peer.receive()), (host, int(port)))
        peers[0].send(clients[0].data(b"through the fleet"), (host, int(port)))
        assert clients[1].read_data(await peers[1].receive()) == b"through the fleet"
        peers[1].send(clients[1].data(b"and back"), (host, int(port)))
        assert clients[0].read_data(await peers[0].receive()) == b"and back"

        def reported_bound():
            status = get(crd, kube_namespace, "alice-bob").get("status", {})
            clients = status.get("clients", [])
            relayed = len(clients) == 2 and all(c.get("packets", 0) > 0 for c in clients)
            return status.get("phase") == "Bound" and relayed and status

        status = await wait_until(reported_bound, "phase Bound with packets", log=operator.log)
        assert {c["handshake"] for c in status["clients"]} == {"Bound"}
        by_key = {c["discoKey"]: c for c in status["clients"]}
        v0, v1 = by_key[str(keys[0].public)], by_key[str(keys[1].public)]
        assert (v0["protocolVersion"], v0.get("generation")) == (0, None)
        assert (v1["protocolVersion"], v1["generation"]) == (1, clients[1].generation)
        assert all(c["addr"].startswith("127.0.0.1:") and c["lastSeen"] for c in status["clients"])
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {"Allocated": "True", "Bound": "True", "Ready": "True"}
    finally:
        for peer in peers:
            peer.close()


async def test_a_relay_of_two_workers_reports_the_endpoints_of_both(
    crd, kube_namespace, operator, redis_server, tmp_path
):
    """One status reporter, in the parent, for the endpoints every worker serves."""
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "two-workers", "--addr", "127.0.0.1",
        "--heartbeat-interval", "300ms", "--kubeconfig", str(crd.kubeconfig),
        "--report-interval", "200ms", "--workers", "2", log=tmp_path / "relay.log",
    )  # fmt: skip
    try:
        names = [f"w-{i}" for i in range(4)]
        keys = {name: new_keys() for name in names}
        for name in names:
            yaml = endpoint_yaml(name, [str(k.public) for k in keys[name]], relay="two-workers")
            crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=yaml)
        allocated = [
            await wait_until(phase_is(crd, kube_namespace, name, "Allocated"), name)
            for name in names
        ]
        vnis = {name: r["status"]["vni"] for name, r in zip(names, allocated, strict=True)}
        assert {worker_for_vni(vni, 2) for vni in vnis.values()} == {0, 1}
        for name, resource in zip(names, allocated, strict=True):
            await bind_and_relay(resource["status"], keys[name])
        for name in names:
            bound = await wait_until(
                phase_is(crd, kube_namespace, name, "Bound"), f"{name} Bound", log=relay.log
            )
            assert {c["handshake"] for c in bound["status"]["clients"]} == {"Bound"}
    finally:
        await relay.stop()


async def test_no_relay_means_pending_until_one_registers(
    crd, kube_namespace, operator, redis_server, tmp_path
):
    keys = [str(k.public) for k in new_keys()]
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("waiting", keys))
    resource = await wait_until(
        lambda: (
            (r := get(crd, kube_namespace, "waiting")).get("status", {}).get("phase") == "Pending"
            and r
        ),
        "phase Pending",
        log=operator.log,
    )
    reasons = {c["type"]: c["reason"] for c in resource["status"]["conditions"]}
    assert reasons == {"Allocated": "NoRelayAvailable", "Ready": "NoRelayAvailable"}
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "late-relay", "--addr", "127.0.0.1",
        "--heartbeat-interval", "500ms",
    )  # fmt: skip
    try:
        await wait_until(
            lambda: (
                get(crd, kube_namespace, "waiting").get("status", {}).get("relay") == "late-relay"
            ),
            "allocated on the late relay",
            log=operator.log,
        )
    finally:
        await relay.stop()


async def test_delete_frees_the_vni_before_the_resource_goes(
    crd, kube_namespace, operator, relay_1, store
):
    keys = [str(k.public) for k in new_keys()]
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("short-lived", keys))
    status = await wait_until(
        lambda: (
            (s := get(crd, kube_namespace, "short-lived").get("status", {})).get("phase")
            == "Allocated"
            and s
        ),
        "phase Allocated",
        log=operator.log,
    )
    assert await store.allocation("relay-1", status["vni"]) is not None
    crd.kubectl(
        "-n", kube_namespace, "delete", "rep", "short-lived", "--wait=true", "--timeout=30s"
    )
    assert get(crd, kube_namespace, "short-lived") == {}
    assert await store.allocation("relay-1", status["vni"]) is None


async def test_a_resource_whose_status_writes_were_lost_is_taken_up_again(
    crd, kube_namespace, start_operator, relay_1, store
):
    """What a handler's writes lost while kube-apiserver was away leave behind: a resource
    without a phase, and no further event for it. Removing its status by hand leaves the same."""
    operator = start_operator("operator", "--standalone", "--take-up-after", "1s")
    keys = [str(k.public) for k in new_keys()]
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("stranded", keys))
    first = await wait_until(
        phase_is(crd, kube_namespace, "stranded", "Allocated"), "Allocated", log=operator.log
    )
    crd.kubectl(
        "-n", kube_namespace, "patch", "rep", "stranded", "--subresource=status",
        "--type=json", "-p", '[{"op": "remove", "path": "/status"}]',
    )  # fmt: skip
    allocated = phase_is(crd, kube_namespace, "stranded", "Allocated")
    again = await wait_until(
        lambda: (
            (found := allocated())
            and TAKE_UP_ANNOTATION not in found["metadata"].get("annotations", {})
            and found
        ),
        "taken up, and the take-up annotation removed",
        log=operator.log,
    )
    assert (again["status"]["relay"], again["status"]["vni"], again["status"]["lamportID"]) == (
        first["status"]["relay"], first["status"]["vni"], first["status"]["lamportID"],
    )  # fmt: skip
    # The take-up handler may finish before the loop's own PATCH has answered it.
    await wait_until(
        lambda: (
            "taking up 1 RelayEndpoints" in operator.log.read_text()
            and scrape(operator.metrics_url)[("relayfleet_operator_taken_up_total", ())] == 1
        ),
        "the loop to log and count its one take-up",
        log=operator.log,
    )


async def test_expiry_shows_expired_and_the_annotation_allocates_afresh(
    crd, kube_namespace, operator, redis_server, store
):
    relay = await start_relay(crd, redis_server, "brief", "--bind-lifetime", "1s")
    try:
        keys = [str(k.public) for k in new_keys()]
        crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("brief", keys))
        first = await wait_until(phase_is(crd, kube_namespace, "brief", "Allocated"), "Allocated")
        expired = await wait_until(
            phase_is(crd, kube_namespace, "brief", "Expired"), "Expired", log=operator.log
        )
        reasons = {c["type"]: c["reason"] for c in expired["status"]["conditions"]}
        assert reasons == {"Allocated": "Expired", "Bound": "Expired", "Ready": "Expired"}
        assert await store.allocation("brief", first["status"]["vni"]) is None

        crd.kubectl(
            "-n", kube_namespace, "annotate", "rep", "brief", "relayfleet.io/reallocate=1"
        )  # fmt: skip

        def reallocated():
            status = get(crd, kube_namespace, "brief").get("status", {})
            newer = status.get("lamportID", 0) > first["status"]["lamportID"]
            return status.get("phase") == "Allocated" and newer and status

        await wait_until(reallocated, "a fresh allocation", log=operator.log)
    finally:
        await relay.stop()


async def test_a_dead_relays_endpoints_are_placed_again_with_an_event(
    crd, kube_namespace, operator, redis_server, tmp_path
):
    relays = {
        name: await start_relay(crd, redis_server, name, "--key-file", str(tmp_path / name))
        for name in ("north", "south")
    }
    try:
        keys = [str(k.public) for k in new_keys()]
        crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("moving", keys))
        placed = await wait_until(phase_is(crd, kube_namespace, "moving", "Allocated"), "Allocated")
        first = placed["status"]
        await relays[first["relay"]].stop(signal.SIGKILL)
        survivor = next(r for r in relays if r != first["relay"])

        def moved():
            status = get(crd, kube_namespace, "moving").get("status", {})
            return status.get("relay") == survivor and status.get("phase") == "Allocated" and status

        status = await wait_until(moved, f"re-placed on {survivor}", log=operator.log)
        assert status["serverDisco"] == relays[survivor].ready["server_disco"]
        assert status["serverDisco"] != first["serverDisco"]
        await wait_until(
            lambda: any(
                first["relay"] in e["message"]
                for e in events(crd, kube_namespace, reason="RelayDead")
            ),
            "a RelayDead Event naming the dead relay",
            log=operator.log,
        )

        def unmarked():
            annotations = get(crd, kube_namespace, "moving")["metadata"].get("annotations", {})
            return RELAY_DEAD_ANNOTATION not in annotations

        await wait_until(unmarked, "the relay-dead mark removed once placed", log=operator.log)
    finally:
        for relay in relays.values():
            if relay.process.returncode is None:
                await relay.stop()


async def test_a_relay_back_under_a_new_key_has_its_endpoints_placed_again_and_bound(
    crd, kube_namespace, operator, redis_server, store
):
    """Without --key-file a relay restarts under a new disco key, alive all along (5 s
    heartbeats): it frees what it held under the old key, and the operator places each
    RelayEndpoint again, with the new serverDisco, on which clients bind."""
    ns = kube_namespace
    relay = await start_relay(crd, redis_server, "phoenix", "--heartbeat-interval", "5s")
    keys = {name: new_keys() for name in ("first", "second")}
    try:
        old = {}
        for name, pair in keys.items():
            yaml = endpoint_yaml(name, [str(k.public) for k in pair])
            crd.kubectl("-n", ns, "apply", "-f", "-", input=yaml)
            placed = await wait_until(phase_is(crd, ns, name, "Allocated"), name, log=operator.log)
            old[name] = placed["status"]
        assert {s["serverDisco"] for s in old.values()} == {relay.ready["server_disco"]}
        await relay.stop()
        relay = await start_relay(crd, redis_server, "phoenix", "--heartbeat-interval", "5s")
        new_key = relay.ready["server_disco"]
        assert new_key != old["first"]["serverDisco"]

        def placed_again(name):
            def check():
                status = get(crd, ns, name).get("status", {})
                fresh = status.get("serverDisco") == new_key and status.get("phase") == "Allocated"
                return fresh and status

            return check

        now = {
            name: await wait_until(placed_again(name), f"{name} placed again", log=operator.log)
            for name in keys
        }
        for status in now.values():
            assert status["relay"] == "phoenix"
            assert status["lamportID"] > max(s["lamportID"] for s in old.values())
        in_store = await store.allocations("phoenix")
        assert sorted((a.vni, a.lamport_id) for a in in_store) == sorted(
            (s["vni"], s["lamportID"]) for s in now.values()
        )

        await wait_until(
            lambda: (
                {e["involvedObject"]["name"] for e in events(crd, ns, reason="RelayRekeyed")}
                == set(keys)
            ),
            "a RelayRekeyed Event for each",
            log=operator.log,
        )

        await bind_and_relay(now["first"], keys["first"])
        await wait_until(reported_bound(crd, ns, "first"), "first Bound", log=operator.log)
    finally:
        await relay.stop()


async def test_an_operator_resuming_after_a_relay_came_back_under_a_new_key_places_again(
    crd, kube_namespace, start_operator, redis_server, store
):
    """No operator watched while the relay came back under a new key and freed the allocation:
    the one that resumes places the RelayEndpoint again rather than calling it Expired."""
    ns = kube_namespace
    first = start_operator("first")
    relay = await start_relay(crd, redis_server, "phoenix", "--heartbeat-interval", "5s")
    keys = new_keys()
    try:
        crd.kubectl(
            "-n",
            ns,
            "apply",
            "-f",
            "-",
            input=endpoint_yaml("resumed", [str(k.public) for k in keys]),
        )
        old = (
            await wait_until(phase_is(crd, ns, "resumed", "Allocated"), "Allocated", log=first.log)
        )["status"]
        first.stop()
        await relay.stop()
        relay = await start_relay(crd, redis_server, "phoenix", "--heartbeat-interval", "5s")
        new_key = relay.ready["server_disco"]

        async def registered_anew():
            record = {r.name: r for r in await store.relays()}["phoenix"]
            return str(record.server_disco) == new_key

        await wait_until(registered_anew, "the new key registered")
        assert await store.allocations("phoenix") == []
        second = start_operator("second")

        def placed_again():
            status = get(crd, ns, "resumed").get("status", {})
            return (
                status.get("serverDisco") == new_key
                and status.get("phase") == "Allocated"
                and status
            )

        status = await wait_until(placed_again, "placed again on resume", log=second.log)
        assert status["lamportID"] > old["lamportID"]
        await bind_and_relay(status, keys)
    finally:
        await relay.stop()


async def test_a_restarted_operator_writes_nothing_to_resources_already_allocated(
    crd, kube_namespace, start_operator, redis_server
):
    """Issue 19 item 8 in small (bench/operator_scale.py counts it at 10 000): an operator
    started over RelayEndpoints that are all allocated resumes each one and writes to none.

    The relay reports no status, so the operators are the only writers, and the versions
    are read once the first has exited. kopf writes a resumed resource's patch right after
    it logs "Resuming is processed"; a resource created after every such line, and
    allocated, marks the point by which any of those writes would have been made."""
    ns, count = kube_namespace, 20
    relay = await start_relay(crd, redis_server, "steady", "--report-status", "off")
    try:
        first = start_operator("first")
        apply_endpoints(crd, ns, [f"resumed-{i}" for i in range(count)])

        def versions() -> dict[str, str]:
            return {
                r["metadata"]["name"]: r["metadata"]["resourceVersion"]
                for r in allocated(crd, ns)
                if r["metadata"]["name"].startswith("resumed-")
            }

        await wait_until(lambda: len(versions()) == count, f"all {count} allocated", log=first.log)
        first.stop()
        before = versions()
        second = start_operator("second")
        await wait_until(
            lambda: second.log.read_text().count(RESUMED) >= count,
            f"all {count} resumed",
            log=second.log,
        )
        crd.kubectl(
            "-n", ns, "apply", "-f", "-",
            input=endpoint_yaml("after-resuming", [str(k.public) for k in new_keys()]),
        )  # fmt: skip
        await wait_until(
            phase_is(crd, ns, "after-resuming", "Allocated"), "a new one allocated", log=second.log
        )
        assert versions() == before
    finally:
        await relay.stop()


async def test_a_relay_with_only_kubeconfig_in_its_environment_reports_status(
    crd, kube_namespace, operator, redis_server
):
    """--report-status auto honours KUBECONFIG, as kubectl reads it: no --kubeconfig needed."""
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "relay-env", "--addr", "127.0.0.1",
        "--heartbeat-interval", "300ms", "--report-interval", "200ms",
        env={"KUBECONFIG": str(crd.kubeconfig)},
    )  # fmt: skip
    try:
        keys = new_keys()
        yaml = endpoint_yaml("by-env", [str(k.public) for k in keys])
        crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=yaml)
        placed = await wait_until(
            phase_is(crd, kube_namespace, "by-env", "Allocated"), "Allocated", log=operator.log
        )
        await bind_and_relay(placed["status"], keys)
        status = await wait_until(
            reported_bound(crd, kube_namespace, "by-env"), "Bound with clients", log=operator.log
        )
        assert status["relay"] == "relay-env"
    finally:
        await relay.stop()


# 200 resources through two operators: minutes when the machine's 2 cores are busy.
@pytest.mark.timeout(360)
async def test_operator_killed_mid_burst_allocates_each_endpoint_exactly_once(
    crd, kube_namespace, start_operator, relay_1, store
):
    count = 200
    first = start_operator("first")
    apply_endpoints(crd, kube_namespace, [f"burst-{i}" for i in range(count)], timeout=120)
    await wait_until(
        lambda: len(allocated(crd, kube_namespace)) >= count // 4,
        "a quarter allocated",
        log=first.log,
    )
    first.process.kill()
    first.stop()
    second = start_operator("second")
    done = await wait_until(
        lambda: (items := allocated(crd, kube_namespace)) and len(items) == count and items,
        f"all {count} allocated",
        timeout=120,
        log=second.log,
    )
    placements = [(r["status"]["relay"], r["status"]["vni"]) for r in done]
    assert len(set(placements)) == count
    in_store = await store.allocations("relay-1")
    assert sorted((a.relay, a.vni) for a in in_store) == sorted(placements)
    assert len({a.lamport_id for a in in_store}) == count


async def test_the_status_command_shows_relays_and_endpoints(
    crd, kube_namespace, operator, relay_1, redis_server
):
    keys = [str(k.public) for k in new_keys()]
    crd.kubectl("-n", kube_namespace, "apply", "-f", "-", input=endpoint_yaml("seen", keys))
    await wait_until(phase_is(crd, kube_namespace, "seen", "Allocated"), "Allocated")
    env = {**os.environ, "KUBECONFIG": str(crd.kubeconfig)}
    command = [RELAYFLEET, "status", "--store", redis_server.url()]

    def status_once() -> dict:
        result = subprocess.run([*command, "-o", "json"], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # the load is the relay's own count, as of its last heartbeat
    fleet = await wait_until(lambda: (f := status_once())["relays"][0]["load"] == 1 and f, "load 1")
    (relay,) = fleet["relays"]
    assert (relay["name"], relay["alive"]) == ("relay-1", True)
    assert fleet["endpoints"]["byRelay"]["relay-1"]["Allocated"] >= 1
    text = subprocess.run(command, capture_output=True, text=True, env=env).stdout
    assert "relay-1" in text and "alive" in text and "Allocated" in text
    listed = subprocess.run(
        [*command, "--endpoints", "-o", "json"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout)["endpoints"]["items"] if r["name"] == "seen"]
    assert (row["namespace"], row["phase"], row["relay"]) == (
        kube_namespace,
        "Allocated",
        "relay-1",
    )
    assert [c["handshake"] for c in row["clients"]] == ["Init", "Init"]
