"""bench/operator_scale.py's pure helpers: reading /metrics, spreading the request mix, the
ceiling's requests per resource, and telling when things have gone quiet. No cluster."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from bench.allocations import endpoint_body
from bench.operator_scale import (
    STEP_ANNOTATION,
    BareOperator,
    Ceiling,
    CpuWindow,
    Figures,
    OperatorRun,
    Quiet,
    Templates,
    allocated,
    bare_ratios,
    by_verb_resource,
    counts,
    cpu_list,
    delta,
    event_body,
    field_managers,
    list_bytes,
    median_ratios,
    parse_metrics,
    resource_plan,
    spread,
    watchers_of,
    with_keys,
    writes,
)
from bench.processes import affinity
from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import RELAY_LABEL
from relay.store import MemoryStore, RelayRecord
from relay_operator.allocating import Allocator


def sample(name: str, value: str, **labels: str) -> str:
    """One line of Prometheus text, with kube-apiserver's labels for RelayEndpoints."""
    labels = {
        "component": "apiserver",
        "group": "relayfleet.io",
        "resource": "relayendpoints",
        "scope": "resource",
        "subresource": "",
        "version": "v1alpha1",
        **labels,
    }
    text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{text}}} {value}"


REQUESTS = "apiserver_request_total"
METRICS = "\n".join(
    [
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
        "# TYPE apiserver_request_total counter",
        sample(REQUESTS, "1000", code="201", verb="POST"),
        sample(REQUESTS, "2000", code="200", verb="PATCH"),
        sample(REQUESTS, "3", code="409", verb="PATCH"),
        sample(REQUESTS, "1000", code="200", verb="PATCH", subresource="status"),
        sample(REQUESTS, "4", code="200", verb="LIST", scope="cluster"),
        sample("apiserver_longrunning_requests", "3", verb="WATCH", scope="cluster"),
        sample("apiserver_longrunning_requests", "1", verb="WATCH", resource="events", group=""),
        sample("apiserver_response_sizes_sum", "1.5e+06", verb="LIST", scope="cluster"),
        sample("apiserver_response_sizes_sum", "999", verb="GET"),
        'etcd_request_duration_seconds_sum{operation="get",type="x"} 2',
    ]
)
NAMES = [
    "apiserver_request_total",
    "apiserver_longrunning_requests",
    "apiserver_response_sizes_sum",
]


def test_metrics_are_read_by_verb_and_resource_with_subresources_apart():
    samples = parse_metrics(METRICS, NAMES)
    assert not any(name.startswith("etcd") for name, _ in samples)
    requests = by_verb_resource(samples, "apiserver_request_total")
    assert requests == Counter(
        {
            ("POST", "relayendpoints"): 1000,
            ("PATCH", "relayendpoints"): 2003,
            ("PATCH", "relayendpoints/status"): 1000,
            ("LIST", "relayendpoints"): 4,
        }
    )
    assert watchers_of(samples) == 3
    assert list_bytes(samples) == 1.5e6


def test_deltas_keep_what_grew_and_writes_are_the_writing_verbs():
    before = Counter({("PATCH", "relayendpoints"): 10, ("LIST", "relayendpoints"): 2})
    after = Counter(
        {("PATCH", "relayendpoints"): 13, ("LIST", "relayendpoints"): 2, ("POST", "events"): 1}
    )
    grown = delta(after, before)
    assert grown == Counter({("PATCH", "relayendpoints"): 3, ("POST", "events"): 1})
    assert writes(grown + Counter({("GET", "relayendpoints"): 5})) == grown


@pytest.mark.parametrize("total, count", [(0, 5), (3, 5), (5, 5), (2003, 1000), (7, 3)])
def test_spread_adds_up_and_is_even(total, count):
    shares = [spread(total, count, i) for i in range(count)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


KEYS = ["discokey:" + "aa" * 32, "discokey:" + "bb" * 32]
NEW_KEYS = ["discokey:" + "cc" * 32, "discokey:" + "dd" * 32]
TEMPLATES = Templates(
    finalizers=["relayfleet.io/free-allocation"],
    labels={"relayfleet.io/relay": "relay-1"},
    annotations={
        "kopf.relayfleet.io/last-handled-configuration": f'{{"spec":{{"k":"{"aa" * 32}"}}}}'
    },
    status={"phase": "Allocated", "vni": 7, "clients": [{"discoKey": k} for k in KEYS]},
    events=[
        {"reason": "Allocated", "message": "VNI 7", "involvedObject": {"kind": "RelayEndpoint"}}
    ],
    keys=KEYS,
)


def test_keys_are_replaced_wherever_they_appear():
    replaced = with_keys(TEMPLATES.status, KEYS, NEW_KEYS)
    assert [c["discoKey"] for c in replaced["clients"]] == NEW_KEYS
    annotation = with_keys(TEMPLATES.annotations, KEYS, NEW_KEYS)
    assert "cc" * 32 in next(iter(annotation.values()))
    assert TEMPLATES.status["clients"][0]["discoKey"] == KEYS[0]  # the template is untouched


def test_a_resource_gets_the_operator_requests_in_its_order():
    mix = Counter(
        {
            ("PATCH", "relayendpoints"): 3,
            ("PATCH", "relayendpoints/status"): 2,
            ("POST", "events"): 2,
            ("LIST", "relayendpoints"): 9,
        }
    )
    first = resource_plan(0, 2, mix, TEMPLATES, NEW_KEYS, "17")
    second = resource_plan(1, 2, mix, TEMPLATES, NEW_KEYS, "18")
    assert [(verb, kind) for verb, kind, _ in first] == [
        ("PATCH", "relayendpoints"),
        ("PATCH", "relayendpoints"),
        ("PATCH", "relayendpoints/status"),
        ("POST", "events"),
    ]
    assert len(second) == 3  # the odd PATCH went to the first resource
    assert first[0][2] == [  # as kopf adds its finalizer: only to the resource as created
        {"op": "test", "path": "/metadata/resourceVersion", "value": "17"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["relayfleet.io/free-allocation"]},
    ]
    assert first[1][2]["metadata"]["labels"] == TEMPLATES.labels
    assert first[2][2]["status"]["clients"][1]["discoKey"] == NEW_KEYS[1]
    three = Counter({("PATCH", "relayendpoints"): 3})
    third_patch = resource_plan(0, 1, three, TEMPLATES, KEYS, "17")
    assert third_patch[2][2] == {"metadata": {"annotations": {STEP_ANNOTATION: "2"}}}


def test_an_event_is_about_the_resource_and_named_by_the_server():
    resource = {"metadata": {"name": "ep-00001", "uid": "u-1", "resourceVersion": "42"}}
    template = {**TEMPLATES.events[0], "firstTimestamp": "x", "lastTimestamp": "x"}
    body = event_body(template, "bench", resource)
    assert body["metadata"] == {"namespace": "bench", "generateName": "bench-event-"}
    assert body["involvedObject"] == {
        "kind": "RelayEndpoint",
        "namespace": "bench",
        "name": "ep-00001",
        "uid": "u-1",
        "resourceVersion": "42",
    }
    assert body["firstTimestamp"] != "x" and body["reason"] == "Allocated"
    assert "involvedObject" in template and template["firstTimestamp"] == "x"


def test_quiet_once_nothing_changed_for_long_enough():
    quiet = Quiet(10.0, now=0.0, value=(0, 0))
    assert not quiet.feed((1, 0), busy=False, now=5.0)
    assert not quiet.feed((1, 0), busy=False, now=14.0)
    assert not quiet.feed((1, 0), busy=True, now=15.0)  # CPU in use counts as a change
    assert quiet.feed((1, 0), busy=False, now=25.0)
    assert quiet.last_change == 15.0


def test_cpu_is_busy_over_a_second_not_in_one_sample():
    window = CpuWindow(now=0.0, cpu=0.0)
    cpu, busy = 0.0, []
    for tick in range(1, 81):  # 20 s sampled every 0.25 s: a check of 40 ms every 5 s
        cpu += 0.04 if tick % 20 == 0 else 0.0
        busy.append(window.feed(tick * 0.25, cpu))
    assert not any(busy)
    for tick in range(81, 85):  # then a second at half a core
        cpu += 0.125
        assert window.feed(tick * 0.25, cpu)
    quiet_again = [window.feed(tick * 0.25, cpu) for tick in range(85, 91)]
    assert quiet_again == [True] * 3 + [False] * 3  # idle once that second has passed


def test_counts_are_checked():
    assert counts("1000,10_000") == [1000, 10000]
    for bad in ("", "0", "200000", "1,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            counts(bad)


MINE = sorted(os.sched_getaffinity(0))
several_cpus = pytest.mark.skipif(len(MINE) < 2, reason="runs on one CPU")


@several_cpus
def test_control_plane_cpus_are_some_of_ours():
    assert cpu_list(str(MINE[0])) == {MINE[0]}
    for bad in ("", "x", "0;1", ",".join(map(str, MINE)), str(max(MINE) + 1)):
        with pytest.raises(argparse.ArgumentTypeError):
            cpu_list(bad)


@several_cpus
def test_a_process_started_within_an_affinity_runs_there_and_ours_is_put_back():
    def child_cpus() -> str:
        code = "import os; print(sorted(os.sched_getaffinity(0)))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout

    with affinity(frozenset({MINE[-1]})):
        assert child_cpus().strip() == f"[{MINE[-1]}]"
    assert sorted(os.sched_getaffinity(0)) == MINE
    with affinity(None):
        assert child_cpus().strip() == str(MINE)


def figures(count: int, operator_seconds: float, ceiling_seconds: float | None) -> Figures:
    run = OperatorRun(count, 1.0, count, operator_seconds, 1.0, Counter(), {}, 0, 0, 0, 0, 0)
    ceiling = (
        None
        if ceiling_seconds is None
        else Ceiling(count, ceiling_seconds, count, Counter(), {}, 0.0)
    )
    return Figures(count, 2, run, ceiling=ceiling)


def test_the_median_ratio_is_given_for_counts_measured_more_than_once():
    runs = [
        figures(1000, 10.0, 9.0),  # 0.90
        figures(10000, 100.0, 60.0),
        figures(1000, 10.0, 8.0),  # 0.80
        figures(1000, 10.0, 9.5),  # 0.95
        figures(1000, 10.0, None),  # no ceiling: not counted
    ]
    [(count, (median, lowest, highest, n))] = median_ratios(runs).items()
    assert (count, n) == (1000, 3)
    assert (median, lowest, highest) == pytest.approx((0.90, 0.80, 0.95))


def test_the_bare_operator_is_set_beside_the_ceiling_and_the_operator_beside_it():
    measured = figures(1000, 10.0, 9.0)  # operator 100/s, ceiling 111.1/s
    assert bare_ratios(measured) is None
    measured.bare = BareOperator(1000, 8.0, 1000, {}, 0.0)  # 125/s
    assert bare_ratios(measured) == pytest.approx((125 / (1000 / 9.0), 100 / 125))


async def test_the_allocating_bare_operator_writes_each_resource_its_own_allocation():
    store = MemoryStore()
    relay = RelayRecord("relay-2", DiscoPrivateKey.generate().public, ("127.0.0.1:7000",), 0, 100,
                        "0", time.time())  # fmt: skip
    await store.register(relay, 15.0)
    allocator = Allocator(store)
    template = Templates([], {RELAY_LABEL: "relay-1", "x": "y"}, {}, {"phase": "Allocated"}, [],
                         ["discokey:" + "a" * 64, "discokey:" + "b" * 64])  # fmt: skip
    resources = [endpoint_body(f"ep-{i:05d}") for i in range(2)]
    written = [await allocated(allocator, template, r) for r in resources]
    for resource, templates in zip(resources, written, strict=True):
        assert templates.labels == {RELAY_LABEL: "relay-2", "x": "y"}
        status = templates.status
        assert (status["phase"], status["relay"]) == ("Allocated", "relay-2")
        clients = sorted(c["discoKey"] for c in status["clients"])
        assert clients == sorted(resource["spec"]["discoKeys"])
    assert written[0].status["vni"] != written[1].status["vni"]
    again = await allocated(allocator, template, resources[0])
    assert again.status["vni"] == written[0].status["vni"]  # the pair's allocation, not a new one


def test_field_managers_name_each_entry_of_managed_fields():
    resource = {
        "metadata": {
            "managedFields": [
                {"manager": "kopf", "operation": "Update", "subresource": "status"},
                {"manager": "Python", "operation": "Update"},
                {"manager": "kopf", "operation": "Update"},
            ]
        }
    }
    assert field_managers(resource) == ["Python Update", "kopf Update", "kopf Update status"]
    assert field_managers({"metadata": {}}) == []
