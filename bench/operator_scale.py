"""The operator at 10 000 RelayEndpoints: rate beside the API server's, memory, restart, reporters.

    .venv/bin/python -m bench.operator_scale [--counts 1000,10000] [--relays 2]
                                             [--connections 32] [--timeout 900] [--quiet 10]
                                             [--profile DIR] [--logs DIR] [--repeat 1]
                                             [--bare-operator [requests|allocating]]
                                             [--control-plane-cpus LIST]

Why: issue 19 item 8. On two cores, kube-apiserver alone costs about 15 ms per
RelayEndpoint, so an absolute target (p99 created->Allocated < 1 s at 1 000 at
once) says more about the machine than about the operator. This bench
measures the API server's own ceiling for the work one allocation takes, and
reports the operator's rate as a ratio to it (target >= 0.9x); it also
measures the operator's memory, a restarted operator settling, and a relay's
reporter starting, each at N RelayEndpoints.

For each N of --counts, in a fresh temporary directory:

A. The fleet (bench/allocations.py's Fleet): etcd and kube-apiserver
   (tests/support/controlplane.py), both CRDs, a redis-server
   (tests/support/redis_server.py), --relays `relayfleet relay` processes on
   that store reporting status with the admin kubeconfig (--bind-lifetime 6h:
   nobody binds, and an endpoint must not expire while N are made), and one
   `relayfleet operator --standalone` at its default log level (info). One
   RelayEndpoint in another namespace is allocated first, to prove the chain.
   Two watches stay open throughout (RelayEndpoints and Events, every
   namespace): they stamp each resource's first Allocated event and tell
   when the fleet has gone quiet.
   1. Operator run: N RelayEndpoints created at once (REST POSTs from
      --connections aiohttp connections as admin). Rate = N / (first create
      sent -> last resource seen Allocated). Then wait until quiet: no watch
      event, no operator log line and the operator under 10% of a core (over
      each second: its fleet-wide checks every 5 s are not activity) for
      --quiet seconds. Every request the API server served in that window is
      counted (apiserver_request_total from its /metrics, by verb and
      resource): that is the request mix of one allocation.
   2. Memory: the operator's VmRSS and VmHWM (/proc/<pid>/status) before the
      creates and once quiet; per resource = growth / N. Also the most
      sockets it had open (kopf's connection pool has no limit).
   3. Restart: SIGTERM the operator, start a new one, and time until it is
      quiet again (the same rule; a restart not quiet within --timeout is
      reported so), and until kopf logged its first "Resuming is processed",
      counting every write it caused (apiserver_request_total deltas): the
      target is no PATCH of a RelayEndpoint, and no other write for resources
      that need none. Its memory once quiet, having listed N at start.
   4. Reporter start-up: SIGTERM relay-1, start it again (same name, key and
      store: a relay pod restarting) while N / relays resources are labelled
      for it. Measured: its ready line on stdout; the list served
      (apiserver_request_total LIST relayendpoints +1); its watch opened
      (apiserver_longrunning_requests WATCH relayendpoints above what it was
      with relay-1 down), right after which its first report pass runs; the
      LIST requests and response bytes (apiserver_response_sizes_sum), and
      status PATCHes (none expected: nothing happened to the endpoints).
      /metrics is read every 0.25 s in this step only.
B. The ceiling, on a fresh control plane with the same CRDs, no operator, no
   relay: the same two watches, and a bare client (aiohttp, --connections
   connections, admin client certificate) that makes per resource the
   requests counted in A.1, in the operator's order: create, PATCH of the
   metadata (the finalizer first, as kopf adds it: a JSON patch testing that the
   resourceVersion is the one created; then labels and kopf's annotations, as
   the operator left them), PATCH of the status (the operator's, with this
   resource's keys), POST of the Events kopf posted, these writes with the
   operator's User-Agent: kube-apiserver tracks them as another field manager
   than the creator, as it does the operator's (each object's managedFields are
   printed for both runs). Totals match A.1's, spread over the resources.
   Rate = N / (first create -> last Allocated seen), as in A.1. Ratio =
   operator rate / ceiling rate.
C. With --bare-operator: A's fleet again, fresh, with no operator. In its
   place the bench watches the RelayEndpoints and, for each one created,
   makes B's requests from --connections connections of its own: the least
   any operator does (it must watch what it allocates and make these
   writes), without a store, a decision or a framework. Its rate over B's is
   the most an operator could reach on this machine, with the relays'
   reporters watching as in A. With --bare-operator allocating, it also
   places and allocates each resource as the operator places a new one
   (relay_operator/allocating.py's Allocator on the fleet's Redis: the relay
   already holding the pair, else the one chosen; then the allocation), and
   writes that allocation's status and relay label: the operator's own work
   without kopf.

--control-plane-cpus LIST (such as 0) starts etcd and kube-apiserver on those
CPUs and everything else on the others (the operator, relays, Redis and this
bench's clients, which also run in B and C), in A, B and C alike. Sharing every
CPU, an operator's own CPU is taken from the API server's, so the ratio says
both what the operator costs and how near the API server's ceiling it drives
it; with the split the API server has the same CPUs in every run, as where the
operator runs on a worker node and kube-apiserver on the control plane, and
the ratio says the second alone.

--profile DIR runs both operators under cProfile (DIR/operator-N.prof, written
when it is stopped for step 3, and DIR/operator-restarted-N.prof) and prints
their busiest functions (cProfile sees the main thread: kopf's and the
handlers' work, not the kubernetes client's threads). cProfile about doubles
the operator's CPU, so a profiled run's rates are not the operator's.
--repeat R measures every count R times (all counts, then all again) and
gives each count's median ratio: at 1 000 one run's ratio swings by up to
0.1 from the next's.
Progress goes to stderr. Bounded: --timeout per wait for Allocated or quiet;
every process and the temporary directories go at the end, also on errors.
Never run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import importlib.metadata
import json
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kopf

from bench.allocations import (
    CRD,
    GROUP_VERSION,
    NAMESPACE,
    WARMUP_NAMESPACE,
    Api,
    Fleet,
    endpoint_body,
    is_allocated,
    wait_allocated,
)
from bench.processes import affinity, cpu_seconds, stop_on_sigterm
from bench.report import table
from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPublicKey
from relay.resource.definition import GROUP, PLURAL
from relay.store import open_store
from relay_operator.allocating import Allocator
from relay_operator.handlers import write_allocated
from tests.relay_operator.e2e_support import RESUMED
from tests.support.controlplane import ControlPlane, Process
from tests.support.paths import RELAYFLEET, ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync

RELAY_CRD = ROOT / "crds" / "relay.yaml"
MAX_COUNT = 100_000
QUIET_CPU = 0.10
"""A process using less than this share of a core, over each :data:`CPU_WINDOW`, counts as
idle."""
CPU_WINDOW = 1.0
"""Seconds over which a process's CPU is averaged to tell whether it is busy. An idle
operator still checks the fleet every --relay-check-interval (5 s), 40 ms of CPU at 10 000
RelayEndpoints: over one 0.25 s sample that is busy, over a second it is not."""
SAMPLE = 0.25
BIND_LIFETIME = "6h"
"""Nobody binds: endpoints must not expire (30 s by default) while the bench runs."""
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
OPERATOR_AGENT = {"User-Agent": f"kopf/{importlib.metadata.version('kopf')}"}
"""The operator's User-Agent: kube-apiserver names a write's field manager after it
("kopf"). The bare clients' writes carry it too, so that every object's managedFields
are the operator run's: the creator's entry, and the operator's apart from it."""
REPLAYED = (("PATCH", PLURAL), ("PATCH", f"{PLURAL}/status"), ("POST", "events"))
"""The requests of the operator the ceiling's bare client makes again, per resource."""
WRITES = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY")
STEP_ANNOTATION = "bench.relayfleet.io/step"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def format_cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def cpu_list(text: str) -> frozenset[int]:
    """``--control-plane-cpus``: CPU numbers such as ``0`` or ``0,2``, some but not all of this
    process's."""
    try:
        cpus = frozenset(int(part) for part in text.split(","))
    except ValueError:
        message = f"expected CPU numbers such as 0 or 0,2: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    mine = os.sched_getaffinity(0)
    if not cpus or not cpus < mine:
        raise argparse.ArgumentTypeError(
            f"CPUs {sorted(cpus)} must be some, not all, of the {sorted(mine)} this runs on"
        )
    return cpus


# -- pure helpers (tests/test_bench_operator_scale.py) -------------------------------

Labels = tuple[tuple[str, str], ...]
Metrics = dict[tuple[str, Labels], float]

_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, names: Iterable[str]) -> Metrics:
    """The samples of the metrics ``names`` in Prometheus text: (name, sorted labels) -> value."""
    wanted = set(names)
    samples: Metrics = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _SAMPLE_LINE.match(line)
        if match is None or match.group(1) not in wanted:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def by_verb_resource(samples: Metrics, name: str) -> Counter[tuple[str, str]]:
    """A metric summed by (verb, resource[/subresource]), as integers."""
    counts: Counter[tuple[str, str]] = Counter()
    for (metric, labels), value in samples.items():
        if metric != name:
            continue
        label = dict(labels)
        resource = label.get("resource", "")
        if label.get("subresource"):
            resource += "/" + label["subresource"]
        counts[(label.get("verb", ""), resource)] += round(value)
    return counts


def delta(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]]) -> Counter:
    """``after - before``, keeping only what grew."""
    return Counter({key: n - before[key] for key, n in after.items() if n > before[key]})


def writes(counts: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return Counter({key: n for key, n in counts.items() if key[0] in WRITES and n > 0})


def spread(total: int, count: int, index: int) -> int:
    """Resource ``index``'s share of ``total`` requests over ``count`` resources: the totals
    add up exactly, and no two shares differ by more than one."""
    return total // count + (1 if index < total % count else 0)


@dataclass(frozen=True)
class Templates:
    """What the operator wrote to one resource, to write again to others in the ceiling."""

    finalizers: list[str]
    labels: dict[str, str]
    annotations: dict[str, str]
    status: dict[str, Any]
    events: list[dict[str, Any]]
    keys: list[str]
    """The template resource's spec.discoKeys, replaced in copies by each resource's own."""
    managers: list[str] = field(default_factory=list)
    """Its managedFields' entries (:func:`field_managers`), which the ceiling's match."""


def with_keys(value: Any, old: Sequence[str], new: Sequence[str]) -> Any:
    """``value`` (JSON) with every occurrence of the keys ``old`` replaced by ``new``."""
    text = json.dumps(value)
    for a, b in zip(old, new, strict=True):
        text = text.replace(a.removeprefix("discokey:"), b.removeprefix("discokey:"))
    return json.loads(text)


def event_body(template: dict[str, Any], namespace: str, resource: dict[str, Any]) -> dict:
    """An Event like ``template`` (one kopf posted), about ``resource`` (as created)."""
    body = copy.deepcopy(template)
    body["metadata"] = {"namespace": namespace, "generateName": "bench-event-"}
    meta = resource["metadata"]
    involved = body.setdefault("involvedObject", {})
    involved.update(
        {
            "namespace": namespace,
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for stamp in ("firstTimestamp", "lastTimestamp"):
        if stamp in body:
            body[stamp] = now
    return body


def resource_plan(
    index: int,
    count: int,
    mix: Counter[tuple[str, str]],
    templates: Templates,
    keys: list[str],
    version: str,
) -> list[tuple[str, str, Any]]:
    """The requests after the create for resource ``index`` of ``count``: (verb, resource,
    body), an Event's body to be completed by :func:`event_body`; a body that is a list is
    a JSON patch, any other a merge patch.

    Metadata PATCHes: the finalizer, as kopf adds it (a JSON patch that first tests that
    the resource is still at ``version``, the one created), then the labels and
    annotations, then (if the operator made more) a change of a step annotation each.
    Then the status PATCHes (the operator's status with these keys), then the Events,
    templates in turn."""
    plan: list[tuple[str, str, Any]] = []
    meta_patches = spread(mix[("PATCH", PLURAL)], count, index)
    annotations = with_keys(templates.annotations, templates.keys, keys)
    for step in range(meta_patches):
        body: Any
        if step == 0:
            body = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                {"op": "add", "path": "/metadata/finalizers", "value": list(templates.finalizers)},
            ]
        elif step == 1:
            body = {"metadata": {"labels": templates.labels, "annotations": annotations}}
        else:
            body = {"metadata": {"annotations": {STEP_ANNOTATION: str(step)}}}
        plan.append(("PATCH", PLURAL, body))
    status = {"status": with_keys(templates.status, templates.keys, keys)}
    for _ in range(spread(mix[("PATCH", f"{PLURAL}/status")], count, index)):
        plan.append(("PATCH", f"{PLURAL}/status", status))
    for i in range(spread(mix[("POST", "events")], count, index)):
        if templates.events:
            plan.append(("POST", "events", templates.events[i % len(templates.events)]))
    return plan


class Quiet:
    """Tells when something has stopped changing: fed samples over time, it knows the last
    change; quiet once none came for ``seconds``."""

    def __init__(self, seconds: float, now: float, value: Any = None) -> None:
        self.seconds = seconds
        self.last_change = now
        self.value = value

    def feed(self, value: Any, busy: bool, now: float) -> bool:
        """A new sample (``busy``: a change not in ``value``, e.g. CPU in use); quiet yet?"""
        if value != self.value or busy:
            self.value = value
            self.last_change = now
        return now - self.last_change >= self.seconds


def sockets(pid: int | None) -> int:
    """How many sockets a process has open."""
    if pid is None:
        return 0
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return 0
    return sum(link.startswith("socket:") for link in links)


def memory(pid: int | None) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes; (0, 0) once it is gone."""
    if pid is None:
        return 0, 0
    values = {"VmRSS:": 0, "VmHWM:": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = line.split(":", 1)[0] + ":"
            if name in values:
                values[name] = int(line.split()[1]) * 1024
    return values["VmRSS:"], values["VmHWM:"]


def counts(text: str) -> list[int]:
    values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1 or max(values) > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"counts from 1 to {MAX_COUNT}")
    return values


def seconds_text(seconds: float | None, missing: str = "-") -> str:
    return missing if seconds is None else f"{seconds:.1f} s"


def quiet_text(restart: Any, timeout: float) -> str:
    if restart.quiet_after is None:
        return f"NOT quiet {timeout:.0f} s"
    return f"quiet {restart.quiet_after:.1f} s"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- the API server ---------------------------------------------------------------


class ScaleApi(Api):
    """bench/allocations.py's admin client, with what this bench needs besides."""

    async def metrics(self, names: Iterable[str]) -> Metrics:
        return parse_metrics((await self.get(f"{self.server}/metrics")).decode(), names)

    async def requests(self) -> Counter[tuple[str, str]]:
        samples = await self.metrics(["apiserver_request_total"])
        return by_verb_resource(samples, "apiserver_request_total")

    async def send(self, method: str, url: str, body: Any, headers: dict | None = None) -> dict:
        async with self.session.request(method, url, json=body, headers=headers) as response:
            text = await response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"{method} {url}: {response.status} {text[:300]!r}")
            return json.loads(text)

    def resource_url(self, namespace: str, name: str, subresource: str = "") -> str:
        url = f"{self.collection(namespace)}/{name}"
        return f"{url}/{subresource}" if subresource else url

    def events_url(self, namespace: str) -> str:
        return f"{self.server}/api/v1/namespaces/{namespace}/events"


class Watcher:
    """One watch of a collection (every namespace), kept open until stopped: counts its
    events, stamps the first Allocated of each resource of ``namespace``, and resumes
    from the last resourceVersion (listing again when that expired)."""

    def __init__(
        self,
        api: ScaleApi,
        url: str,
        namespace: str | None = None,
        added: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.api = api
        self.url = url
        self.namespace = namespace
        self.added = added
        """Called with each resource the watch shows ADDED (not those listed)."""
        self.events = 0
        self.allocated: dict[str, float] = {}
        self.resumed = 0
        self._task: asyncio.Task[None] | None = None
        self._listed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch {self.url}")
        listed = asyncio.create_task(self._listed.wait())
        await asyncio.wait([self._task, listed], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        listed.cancel()
        if self._task.done():
            self._task.result()  # raises why it ended
        if not self._listed.is_set():
            raise TimeoutError(f"listing {self.url}")

    def check(self) -> None:
        """Raise why the watch ended, if it did."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise RuntimeError(f"watch of {self.url} ended")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _stamp(self, resource: dict[str, Any], now: float) -> None:
        meta = resource.get("metadata") or {}
        name = meta.get("name")
        if (
            self.namespace is not None
            and meta.get("namespace") == self.namespace
            and name not in self.allocated
            and is_allocated(resource)
        ):
            self.allocated[name] = now

    async def _list(self) -> str:
        listing = json.loads(await self.api.get(self.url))
        now = time.perf_counter()
        for item in listing.get("items", ()):
            self._stamp(item, now)
        return listing["metadata"]["resourceVersion"]

    async def _run(self) -> None:
        version = await self._list()
        self._listed.set()
        while True:
            url = f"{self.url}?watch=true&allowWatchBookmarks=true&resourceVersion={version}"
            async with self.api.session.get(url) as response:
                if response.status != 200:
                    raise RuntimeError(f"watch {self.url}: {response.status}")
                while True:
                    line = await response.content.readline()
                    if not line:
                        self.resumed += 1
                        break
                    now = time.perf_counter()
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        if event["object"].get("code") == 410:
                            version = await self._list()
                            break
                        raise RuntimeError(f"watch error: {event['object']}")
                    resource = event["object"]
                    version = resource["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    self.events += 1
                    self._stamp(resource, now)
                    if self.added is not None and event["type"] == "ADDED":
                        self.added(resource)


# -- the fleet --------------------------------------------------------------------


@dataclass
class ScaleFleet(Fleet):
    """bench/allocations.py's fleet, with the operator started, stopped and restarted apart
    (optionally under cProfile) and a relay restarted."""

    plane_cpus: frozenset[int] | None = None
    """Where etcd and kube-apiserver run (--control-plane-cpus); None: on any CPU."""

    def start(self) -> None:
        plane = self.control_plane
        progress("starting etcd and kube-apiserver")
        with affinity(self.plane_cpus):
            plane.start()
        apply_crds(plane)
        for namespace in (NAMESPACE, WARMUP_NAMESPACE):
            plane.kubectl("create", "namespace", namespace)
        self._start_redis()
        for index in range(1, self.relays + 1):
            progress(f"starting relay-{index}")
            self._start_relay(f"relay-{index}", self.env())
        wait_until_sync(
            lambda: asyncio.run(self._registered()),
            "the relays to register in Redis",
            timeout=30,
            interval=0.2,
        )

    def env(self) -> dict[str, str]:
        env = {**os.environ, "KUBECONFIG": str(self.control_plane.kubeconfig)}
        env.pop("RELAYFLEET_STORE", None)
        return env

    def start_operator(self, name: str, profile: Path | None = None) -> Process:
        """``relayfleet operator`` as scripts/local-fleet runs it, until its liveness answers."""
        port = free_port()
        command = [
            RELAYFLEET, "operator", "--store", self.redis_url, "--standalone",
            "--liveness", f"http://127.0.0.1:{port}/healthz",
            "--log-level", self.operator_log_level,
        ]  # fmt: skip
        if profile is not None:
            command = [sys.executable, "-m", "cProfile", "-o", str(profile), *command]
        operator = self._process(name)
        operator.start(command, env=self.env())

        def healthy() -> bool:
            self._alive(operator)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until_sync(healthy, f"{name}'s liveness endpoint", timeout=120, interval=0.1)
        return operator

    def _start_relay(self, name: str, env: dict[str, str]) -> None:
        """A relay on the store, reporting status with the admin kubeconfig, as in a pod; its
        HTTP API takes no allocations (the operator's fleet), so it needs no limits raised."""
        relay = self._process(name)
        command = [
            RELAYFLEET, "relay", "--store", self.redis_url, "--name", name,
            "--key-file", str(self.directory / f"{name}.key"), "--listen", "127.0.0.1",
            "--port", "0", "--api-listen", "127.0.0.1:0", "--addr", "127.0.0.1",
            "--bind-lifetime", BIND_LIFETIME,
            "--log-level", "warning", "--kubeconfig", str(self.control_plane.kubeconfig),
        ]  # fmt: skip
        relay.start(command, env=env, separate_stdout=True)

        def ready() -> bool:
            self._alive(relay)
            try:
                return '"ready": true' in relay.stdout_log.read_text()
            except OSError:
                return False

        wait_until_sync(ready, f"{name}'s ready line", timeout=120, interval=0.05)

    def restart_relay(self, name: str) -> None:
        """Start relay ``name`` again (stopped before) and wait for its ready line."""
        self._start_relay(name, self.env())


def apply_crds(plane: ControlPlane) -> None:
    files = [CRD, RELAY_CRD] if RELAY_CRD.exists() else [CRD]
    plane.kubectl("apply", *(arg for f in files for arg in ("-f", str(f))))
    for crd in (f"crd/{PLURAL}.{GROUP}", f"crd/relays.{GROUP}")[: len(files)]:
        plane.kubectl("wait", "--for=condition=Established", crd, "--timeout=60s", timeout=90)
    served = f"/apis/{GROUP_VERSION}/{PLURAL}?limit=1"
    wait_until_sync(
        lambda: plane.request("GET", served)[0] == 200, "RelayEndpoints served", timeout=60
    )


def log_size(process: Process) -> int:
    try:
        return process.log.stat().st_size
    except OSError:
        return 0


async def wait_quiet(
    sample: Callable[[], Any],
    busy: Callable[[], bool],
    seconds: float,
    timeout: float,
    what: str,
) -> float:
    """Sample every 0.25 s until nothing changed (and ``busy()`` was false) for ``seconds``;
    the perf_counter time of the last change."""
    started = time.perf_counter()
    quiet = Quiet(seconds, started, sample())
    reported = started
    while True:
        await asyncio.sleep(SAMPLE)
        now = time.perf_counter()
        if quiet.feed(sample(), busy(), now):
            return quiet.last_change
        if now - started > timeout:
            raise TimeoutError(f"{what}: not quiet after {timeout:.0f} s")
        if now - reported >= 15:
            progress(f"  waiting for {what} to go quiet ({now - started:.0f} s)")
            reported = now


class CpuWindow:
    """Whether a process is busy: over QUIET_CPU of a core in the last ``window`` seconds,
    fed its CPU seconds over time."""

    def __init__(self, now: float, cpu: float, window: float = CPU_WINDOW) -> None:
        self.window = window
        self._samples = deque([(now, cpu)])

    def feed(self, now: float, cpu: float) -> bool:
        samples = self._samples
        samples.append((now, cpu))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        since, before = samples[0]
        return cpu - before > QUIET_CPU * max(now - since, self.window)


def cpu_busy(pid: Callable[[], int | None]) -> Callable[[], bool]:
    """``busy()``: whether the process is busy now (:class:`CpuWindow`)."""
    window = CpuWindow(time.perf_counter(), cpu_seconds(pid()))
    return lambda: window.feed(time.perf_counter(), cpu_seconds(pid()))


# -- A.1 and A.2: the operator run ----------------------------------------------------


@dataclass
class OperatorRun:
    count: int
    created_seconds: float
    allocated: int
    allocate_seconds: float
    quiet_after: float
    mix: Counter[tuple[str, str]]
    cpu: dict[str, float]
    rss_before: int
    rss_after: int
    hwm_after: int
    sockets_peak: int
    sockets_after: int
    templates: Templates | None = None

    @property
    def rate(self) -> float:
        """Resources Allocated per second (0 if none was)."""
        return self.allocated / self.allocate_seconds if self.allocate_seconds else 0.0


async def create_all(
    api: ScaleApi, bodies: list[dict], connections: int, created: Callable[[int], None]
) -> None:
    queue = iter(bodies)
    done = 0

    async def creator() -> None:
        nonlocal done
        for body in queue:
            await api.create(NAMESPACE, body)
            done += 1
            created(done)

    await asyncio.gather(*(creator() for _ in range(connections)))


async def wait_all_allocated(watcher: Watcher, count: int, timeout: float, what: str) -> None:
    started = time.perf_counter()
    reported = started
    while len(watcher.allocated) < count:
        await asyncio.sleep(0.1)
        watcher.check()
        now = time.perf_counter()
        if now - started > timeout:
            raise TimeoutError(f"{what}: {len(watcher.allocated)} of {count} Allocated")
        if now - reported >= 10:
            progress(f"  {what}: {len(watcher.allocated):,} of {count:,} Allocated")
            reported = now


async def fleet_watchers(api: ScaleApi) -> tuple[Watcher, Watcher]:
    endpoints = Watcher(api, f"{api.server}/apis/{GROUP_VERSION}/{PLURAL}", NAMESPACE)
    events = Watcher(api, f"{api.server}/api/v1/events")
    await endpoints.start()
    await events.start()
    return endpoints, events


def field_managers(resource: dict[str, Any]) -> list[str]:
    """Who wrote which part of ``resource``, as kube-apiserver tracks it: each managedFields
    entry as "manager operation[ subresource]", sorted. Each entry costs every later write."""
    return sorted(
        " ".join(filter(None, (m.get("manager"), m.get("operation"), m.get("subresource"))))
        for m in resource["metadata"].get("managedFields") or ()
    )


async def templates_of(api: ScaleApi, name: str) -> Templates:
    resource = json.loads(await api.get(api.resource_url(NAMESPACE, name)))
    meta = resource["metadata"]
    url = f"{api.events_url(NAMESPACE)}?fieldSelector=involvedObject.name%3D{name}"
    events = json.loads(await api.get(url))["items"]
    events.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))
    return Templates(
        finalizers=meta.get("finalizers", []),
        labels=meta.get("labels", {}),
        annotations=meta.get("annotations", {}),
        status=resource.get("status", {}),
        events=[{k: v for k, v in e.items() if k not in ("metadata",)} for e in events],
        keys=resource["spec"]["discoKeys"],
        managers=field_managers(resource),
    )


async def operator_run(
    fleet: ScaleFleet, api: ScaleApi, watchers: tuple[Watcher, Watcher], count: int, args: Any
) -> OperatorRun:
    endpoints, events = watchers
    operator = fleet.processes["operator"]
    rss_before, _ = memory(operator.pid())
    bodies = [endpoint_body(f"ep-{i:05d}") for i in range(count)]
    pids = fleet.pids()
    requests_before = await api.requests()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    progress(f"operator run: creating {count:,} RelayEndpoints (load {load()})")

    def created(done: int) -> None:
        if done % 1000 == 0:
            progress(f"  created {done:,}, {len(endpoints.allocated):,} Allocated")

    peak = [0]

    async def count_sockets() -> None:
        while True:
            peak[0] = max(peak[0], sockets(operator.pid()))
            await asyncio.sleep(0.5)

    counting = asyncio.create_task(count_sockets())
    first = time.perf_counter()
    await create_all(api, bodies, args.connections, created)
    created_seconds = time.perf_counter() - first
    try:
        await wait_all_allocated(endpoints, count, args.timeout, "operator run")
    except TimeoutError as exc:
        progress(f"  {exc}")
    end = max(endpoints.allocated.values(), default=time.perf_counter())
    progress(
        f"  {len(endpoints.allocated):,} Allocated in {end - first:.1f} s; waiting until quiet"
    )
    last = await wait_quiet(
        lambda: (endpoints.events, events.events, log_size(operator)),
        cpu_busy(operator.pid),
        args.quiet,
        args.timeout,
        "the operator",
    )
    mix = delta(await api.requests(), requests_before)
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    rss_after, hwm_after = memory(operator.pid())
    counting.cancel()
    return OperatorRun(
        count, created_seconds, len(endpoints.allocated), end - first, last - first, mix, cpu,
        rss_before, rss_after, hwm_after, peak[0], sockets(operator.pid()),
        await templates_of(api, "ep-00000"),
    )  # fmt: skip


# -- A.3: the restart -----------------------------------------------------------------


class LogScan:
    """Follows a log file: its size, and when a line with ``marker`` first appeared."""

    def __init__(self, path: Path, marker: str, started: float) -> None:
        self.path = path
        self.marker = marker.encode()
        self.started = started
        self.offset = 0
        self.first: float | None = None
        self.count = 0

    def size(self) -> int:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                new = log.read()
        except OSError:
            return self.offset
        cut = new.rfind(b"\n") + 1  # whole lines only
        found = new[:cut].count(self.marker)
        if found and self.first is None:
            self.first = time.perf_counter() - self.started
        self.count += found
        self.offset += cut
        return self.offset


@dataclass
class Restart:
    stop_seconds: float
    live_seconds: float
    quiet_after: float | None
    """None: not quiet within --timeout."""
    first_resumed: float | None
    resumed: int
    requests: Counter[tuple[str, str]]
    endpoint_events: int
    events_posted: int
    cpu: float
    rss: int
    hwm: int


async def restart_operator(
    fleet: ScaleFleet, api: ScaleApi, watchers: tuple[Watcher, Watcher], count: int, args: Any
) -> Restart:
    endpoints, events = watchers
    progress(f"restart: stopping the operator (SIGTERM) (load {load()})")
    started = time.perf_counter()
    await asyncio.to_thread(fleet.processes["operator"].stop, 60.0)
    stopped = time.perf_counter() - started
    before = await api.requests()
    seen_before = (endpoints.events, events.events)
    progress("restart: starting a new operator")
    started = time.perf_counter()
    profile = args.profile / f"operator-restarted-{count}.prof" if args.profile else None
    operator = await asyncio.to_thread(fleet.start_operator, "operator-restarted", profile)
    live = time.perf_counter() - started
    cpu_before = cpu_seconds(operator.pid())
    scan = LogScan(operator.log, RESUMED, started)
    try:
        last: float | None = await wait_quiet(
            lambda: (endpoints.events, events.events, scan.size()),
            cpu_busy(operator.pid),
            args.quiet,
            args.timeout,
            "the restarted operator",
        )
    except TimeoutError as exc:
        progress(f"  {exc}: measured as it is")
        last = None
    requests = delta(await api.requests(), before)
    rss, hwm = memory(operator.pid())
    return Restart(
        stopped, live, None if last is None else last - started, scan.first, scan.count,
        requests, endpoints.events - seen_before[0], events.events - seen_before[1],
        cpu_seconds(operator.pid()) - cpu_before, rss, hwm,
    )  # fmt: skip


# -- A.4: a relay's reporter starting -----------------------------------------------

LIST_KEY = ("LIST", PLURAL)


@dataclass
class ReporterStart:
    relay: str
    labelled: int
    ready_seconds: float
    listed_seconds: float | None
    watching_seconds: float | None
    lists: int
    list_bytes: float
    status_patches: int
    cpu: float
    rss: int


def watchers_of(samples: Metrics) -> int:
    """Open watches of RelayEndpoints (every scope), from apiserver_longrunning_requests."""
    return round(
        sum(
            value
            for (name, labels), value in samples.items()
            if name == "apiserver_longrunning_requests"
            and dict(labels).get("resource") == PLURAL
            and dict(labels).get("verb") == "WATCH"
            and not dict(labels).get("subresource")
        )
    )


def list_bytes(samples: Metrics) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "apiserver_response_sizes_sum"
        and dict(labels).get("resource") == PLURAL
        and dict(labels).get("verb") == "LIST"
    )


REPORTER_METRICS = (
    "apiserver_request_total",
    "apiserver_longrunning_requests",
    "apiserver_response_sizes_sum",
)


async def reporter_start(
    fleet: ScaleFleet, api: ScaleApi, relay: str, labelled: int
) -> ReporterStart:
    progress(f"reporter start-up: stopping {relay} (load {load()})")
    await asyncio.to_thread(fleet.processes[relay].stop, 30.0)
    await asyncio.sleep(2.0)  # its watch ends; the other watches settle
    baseline = 0
    for _ in range(8):  # the other reporters' watches end and start again: take the most seen
        samples = await api.metrics(REPORTER_METRICS)
        baseline = max(baseline, watchers_of(samples))
        await asyncio.sleep(SAMPLE)
    before = samples
    lists_before = by_verb_resource(before, "apiserver_request_total")[LIST_KEY]
    progress(f"reporter start-up: starting {relay} ({labelled:,} RelayEndpoints labelled for it)")
    started = time.perf_counter()
    starting = asyncio.create_task(asyncio.to_thread(fleet.restart_relay, relay))
    ready = listed = watching = None
    deadline = started + 180
    while watching is None and time.perf_counter() < deadline:
        if ready is None and starting.done():
            starting.result()
            ready = time.perf_counter() - started
        samples = await api.metrics(REPORTER_METRICS)
        now = time.perf_counter() - started
        requests = by_verb_resource(samples, "apiserver_request_total")
        if listed is None and requests[LIST_KEY] > lists_before:
            listed = now
        if watching is None and watchers_of(samples) > baseline:
            watching = now
        await asyncio.sleep(SAMPLE)
    await starting
    if ready is None:
        ready = time.perf_counter() - started
    pid = fleet.processes[relay].pid()
    await asyncio.sleep(5.0)  # a first report pass or two, and any patch they make
    after = await api.metrics(REPORTER_METRICS)
    requests = delta(
        by_verb_resource(after, "apiserver_request_total"),
        by_verb_resource(before, "apiserver_request_total"),
    )
    rss, _ = memory(pid)
    return ReporterStart(
        relay, labelled, ready, listed, watching, requests[LIST_KEY],
        list_bytes(after) - list_bytes(before), requests[("PATCH", f"{PLURAL}/status")],
        cpu_seconds(pid), rss,
    )  # fmt: skip


# -- B: the ceiling ---------------------------------------------------------------------


async def replay(
    api: ScaleApi,
    index: int,
    count: int,
    mix: Counter[tuple[str, str]],
    templates: Templates,
    resource: dict[str, Any],
) -> None:
    """Make the operator's requests for resource ``index`` of ``count`` (as created):
    :func:`resource_plan`'s, in order, one at a time."""
    keys = resource["spec"]["discoKeys"]
    meta = resource["metadata"]
    plan = resource_plan(index, count, mix, templates, keys, meta["resourceVersion"])
    for verb, kind, payload in plan:
        if kind == "events":
            event = event_body(payload, NAMESPACE, resource)
            await api.send(verb, api.events_url(NAMESPACE), event, OPERATOR_AGENT)
        else:
            sub = "status" if kind.endswith("/status") else ""
            url = api.resource_url(NAMESPACE, meta["name"], sub)
            kind_of_patch = JSON_PATCH if isinstance(payload, list) else MERGE_PATCH
            await api.send(verb, url, payload, {**kind_of_patch, **OPERATOR_AGENT})


@dataclass
class Ceiling:
    count: int
    seconds: float
    allocated: int
    requests: Counter[tuple[str, str]]
    cpu: dict[str, float]
    client_cpu: float
    managers: list[str] = field(default_factory=list)
    """The first resource's managedFields entries (:func:`field_managers`)."""

    @property
    def rate(self) -> float:
        """Resources Allocated per second."""
        return self.allocated / self.seconds


async def ceiling_run(
    plane: ControlPlane, count: int, mix: Counter[tuple[str, str]], templates: Templates, args: Any
) -> Ceiling:
    api = ScaleApi(plane, args.connections + 4)
    try:
        watchers = await fleet_watchers(api)
        endpoints = watchers[0]
        pids = {"kube-apiserver": plane.apiserver.pid(), "etcd": plane.etcd.pid()}
        requests_before = await api.requests()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = time.process_time()
        progress(
            f"ceiling: {count:,} RelayEndpoints through the operator's requests, no operator "
            f"(load {load()})"
        )
        queue = iter(range(count))
        done = 0

        async def worker() -> None:
            nonlocal done
            for index in queue:
                body = endpoint_body(f"ep-{index:05d}")
                resource = await api.send("POST", api.collection(NAMESPACE), body)
                await replay(api, index, count, mix, templates, resource)
                done += 1
                if done % 1000 == 0:
                    progress(f"  ceiling: {done:,} done")

        first = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.connections)))
        await wait_all_allocated(endpoints, count, args.timeout, "ceiling")
        seconds = max(endpoints.allocated.values()) - first
        client_cpu = time.process_time() - client_before
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        requests = delta(await api.requests(), requests_before)
        for watcher in watchers:
            await watcher.stop()
        first_resource = json.loads(await api.get(api.resource_url(NAMESPACE, "ep-00000")))
        return Ceiling(
            count, seconds, len(endpoints.allocated), requests, cpu, client_cpu,
            field_managers(first_resource),
        )  # fmt: skip
    finally:
        await api.close()


# -- C: the bare operator ---------------------------------------------------------------


@dataclass
class BareOperator:
    count: int
    seconds: float
    allocated: int
    cpu: dict[str, float]
    client_cpu: float
    allocating: bool = False
    """Whether it placed and allocated each resource in the store too."""

    @property
    def rate(self) -> float:
        """Resources Allocated per second."""
        return self.allocated / self.seconds


async def allocated(
    allocator: Allocator, templates: Templates, resource: dict[str, Any]
) -> Templates:
    """``templates`` with ``resource``'s own allocation in the status and the relay label,
    placed as the operator places a new resource and written by the operator's own
    ``write_allocated`` (relay_operator/handlers.py)."""
    a, b = (DiscoPublicKey.parse(k) for k in resource["spec"]["discoKeys"])
    name = await allocator.holding((a, b)) or (await allocator.choose(None)).name
    placement = await allocator.allocate((a, b), name)
    patch = kopf.Patch()
    write_allocated(patch, kopf.Body(resource), placement)
    labels = {**templates.labels, **patch["metadata"]["labels"]}
    return replace(templates, status=patch["status"], labels=labels)


async def bare_operator_run(
    fleet: ScaleFleet, count: int, mix: Counter[tuple[str, str]], templates: Templates, args: Any
) -> BareOperator:
    """A.1 again on a fleet with no operator: in its place the least any operator does, a
    watch of the RelayEndpoints and, for each one created, the operator's requests
    (:func:`replay`) from --connections connections of its own. With ``allocating``,
    each resource is first placed and allocated in the fleet's store, and its requests
    write that allocation (:func:`allocated`)."""
    allocating = args.bare_operator == "allocating"
    store = open_store(fleet.redis_url, max_vni=MAX_VNI) if allocating else None
    allocator = Allocator(store) if store is not None else None
    api = ScaleApi(fleet.control_plane, args.connections + 4)
    reactor_api = ScaleApi(fleet.control_plane, args.connections + 1)
    created: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reactor = Watcher(reactor_api, reactor_api.collection(NAMESPACE), added=created.put_nowait)
    watchers: tuple[Watcher, Watcher] | None = None
    tasks: list[asyncio.Task[None]] = []

    async def react() -> None:
        while True:
            resource = await created.get()
            index = int(resource["metadata"]["name"].removeprefix("ep-"))
            written = templates
            if allocator is not None:
                written = await allocated(allocator, templates, resource)
            await replay(reactor_api, index, count, mix, written, resource)

    try:
        watchers = await fleet_watchers(api)
        endpoints = watchers[0]
        await reactor.start()
        tasks = [asyncio.create_task(react()) for _ in range(args.connections)]
        pids = fleet.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = time.process_time()
        bodies = [endpoint_body(f"ep-{i:05d}") for i in range(count)]
        progress(f"bare operator: {count:,} RelayEndpoints (load {load()})")
        first = time.perf_counter()
        await create_all(api, bodies, args.connections, lambda done: None)
        every_one = wait_all_allocated(endpoints, count, args.timeout, "bare operator")
        waiting = asyncio.create_task(every_one)
        tasks.append(waiting)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                task.result()  # a reaction's error, or the wait's timeout
        reactor.check()
        seconds = max(endpoints.allocated.values()) - first
        client_cpu = time.process_time() - client_before
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        return BareOperator(count, seconds, len(endpoints.allocated), cpu, client_cpu, allocating)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watcher in (*(watchers or ()), reactor):
            await watcher.stop()
        await api.close()
        await reactor_api.close()
        if store is not None:
            await store.close()


def start_plane(directory: Path, cpus: frozenset[int] | None) -> ControlPlane:
    plane = ControlPlane(directory)
    progress("ceiling: starting a fresh etcd and kube-apiserver")
    with affinity(cpus):
        plane.start()
    apply_crds(plane)
    plane.kubectl("create", "namespace", NAMESPACE)
    return plane


# -- one N ---------------------------------------------------------------------------


@dataclass
class Figures:
    count: int
    relays: int
    run: OperatorRun
    restart: Restart | None = None
    reporter: ReporterStart | None = None
    ceiling: Ceiling | None = None
    bare: BareOperator | None = None
    load_start: str = ""
    load_end: str = ""
    profile: Path | None = None
    plane_cpus: frozenset[int] | None = None
    notes: list[str] = field(default_factory=list)


async def fleet_part(fleet: ScaleFleet, count: int, args: Any, figures_load: str) -> Figures:
    api = ScaleApi(fleet.control_plane, args.connections + 4)
    watchers: tuple[Watcher, Watcher] | None = None
    try:
        await api.create(WARMUP_NAMESPACE, endpoint_body("warm-up"))
        await wait_allocated(api, WARMUP_NAMESPACE, "warm-up", 120)
        watchers = await fleet_watchers(api)
        run = await operator_run(fleet, api, watchers, count, args)
        figures = Figures(count, fleet.relays, run, load_start=figures_load)
        figures.restart = await restart_operator(fleet, api, watchers, count, args)
        labelled = count // fleet.relays + (1 if count % fleet.relays else 0)
        figures.reporter = await reporter_start(fleet, api, "relay-1", labelled)
        return figures
    finally:
        if watchers is not None:
            for watcher in watchers:
                await watcher.stop()
        await api.close()


def measure(count: int, args: argparse.Namespace) -> Figures:
    load_start = load()
    with tempfile.TemporaryDirectory(prefix=f"bench-operator-scale-{count}-") as directory:
        root = Path(directory)
        fleet = ScaleFleet(
            root / "fleet", args.relays, True, args.operator_log_level,
            plane_cpus=args.control_plane_cpus,
        )  # fmt: skip
        logs = args.logs / str(count) if args.logs is not None else None
        profile = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            args.profile = args.profile.resolve()
            profile = args.profile / f"operator-{count}.prof"
        try:
            (root / "fleet").mkdir()
            fleet.start()
            progress("starting the operator" + (" under cProfile" if profile else ""))
            fleet.start_operator("operator", profile)
            figures = asyncio.run(fleet_part(fleet, count, args, load_start))
            figures.profile = profile
            figures.plane_cpus = args.control_plane_cpus
        finally:
            progress("stopping the fleet")
            fleet.stop(logs)
        plane = start_plane(root / "ceiling", args.control_plane_cpus)
        try:
            assert figures.run.templates is not None
            figures.ceiling = asyncio.run(
                ceiling_run(plane, count, figures.run.mix, figures.run.templates, args)
            )
        finally:
            plane.close()
            if logs is not None:
                shutil.copytree(plane.log_dir, logs / "ceiling", dirs_exist_ok=True)
        if args.bare_operator:
            bare_fleet = ScaleFleet(
                root / "bare", args.relays, True, args.operator_log_level,
                plane_cpus=args.control_plane_cpus,
            )  # fmt: skip
            try:
                (root / "bare").mkdir()
                bare_fleet.start()
                run = figures.run
                assert run.templates is not None
                figures.bare = asyncio.run(
                    bare_operator_run(bare_fleet, count, run.mix, run.templates, args)
                )
            finally:
                progress("stopping the bare operator's fleet")
                bare_fleet.stop(logs / "bare" if logs is not None else None)
    figures.load_end = load()
    return figures


# -- printing ----------------------------------------------------------------------------


def per(n: float, count: int) -> str:
    return f"{n / count:.2f}"


def print_figures(f: Figures, args_timeout: float) -> None:
    run, restart, reporter, ceiling = f.run, f.restart, f.reporter, f.ceiling
    n = f.count
    print(
        f"\n{n:,} RelayEndpoints, {f.relays} relays, one operator; load average "
        f"{f.load_start} at the start, {f.load_end} at the end"
    )
    if f.plane_cpus is not None:
        rest = os.sched_getaffinity(0)
        print(
            f"  etcd and kube-apiserver on CPU {format_cpus(f.plane_cpus)}, everything else "
            f"(the operator, relays, Redis, the bench's clients) on CPU {format_cpus(rest)}"
        )
    rate = run.rate
    rows = [["", "seconds", "resources/s", "x ceiling"]]
    if ceiling is not None:
        ceiling_rate = ceiling.rate
        rows.append(
            ["ceiling: bare client, no operator", f"{ceiling.seconds:.1f}",
             f"{ceiling_rate:.1f}", "1.00"]
        )  # fmt: skip
        ratio = f"{rate / ceiling_rate:.2f}"
    else:
        ratio = "-"
    rows.append(
        [f"operator: created -> Allocated ({run.allocated:,} of {n:,})",
         f"{run.allocate_seconds:.1f}", f"{rate:.1f}", ratio]
    )  # fmt: skip
    if f.bare is not None:
        bare_rate = f.bare.rate
        rows.append(
            [f"bare operator: a watch, {'our allocator, ' if f.bare.allocating else ''}"
             f"the same requests ({f.bare.allocated:,} of {n:,})",
             f"{f.bare.seconds:.1f}", f"{bare_rate:.1f}",
             f"{bare_rate / ceiling_rate:.2f}" if ceiling is not None else "-"]
        )  # fmt: skip
    table(rows, left=1)
    print(
        f"  creates took {run.created_seconds:.1f} s ({n / run.created_seconds:.0f}/s); "
        f"quiet {run.quiet_after:.1f} s after the first create"
    )
    print("  requests per resource (apiserver_request_total, every client):")
    rows = [["verb", "resource", "operator run", "ceiling"]]
    keys = sorted(
        set(run.mix) | set(ceiling.requests if ceiling else ()),
        key=lambda k: -run.mix.get(k, 0),
    )
    for key in keys:
        if key[0] in ("WATCH", "CONNECT") or not key[1]:
            continue
        theirs = per(ceiling.requests.get(key, 0), n) if ceiling else "-"
        rows.append([key[0], key[1], per(run.mix.get(key, 0), n), theirs])
    table(rows, left=2)
    if run.templates is not None and ceiling is not None:
        same = "the same" if run.templates.managers == ceiling.managers else "NOT the same"
        print(
            f"  managedFields of ep-00000 ({same}): operator run "
            f"{', '.join(run.templates.managers)}; ceiling {', '.join(ceiling.managers)}"
        )
    print("  CPU per resource, ms (operator run; ceiling; bare operator):")
    rows = [["process", "operator run", "ceiling", "bare operator"]]

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds / n * 1e3:.1f}"

    for name, seconds in sorted(run.cpu.items(), key=lambda item: -item[1]):
        theirs = ceiling.cpu.get(name) if ceiling else None
        bare = f.bare.cpu.get(name) if f.bare else None
        if name == "operator":
            theirs = ceiling.client_cpu if ceiling else None
            bare = f.bare.client_cpu if f.bare else None
            name = "operator (ceiling, bare operator: the bench)"
        rows.append([name, ms(seconds), ms(theirs), ms(bare)])
    table(rows, left=1)
    growth = run.rss_after - run.rss_before
    print(
        f"  operator memory: RSS {mib(run.rss_before)} before, {mib(run.rss_after)} with "
        f"{n:,} allocated (peak {mib(run.hwm_after)}): {growth / n / 1024:.1f} KiB per resource; "
        f"sockets open: at most {run.sockets_peak}, {run.sockets_after} once quiet"
    )
    if restart is not None:
        patches = sum(v for (verb, res), v in restart.requests.items()
                      if verb == "PATCH" and res.startswith(PLURAL))  # fmt: skip
        print(
            f"  restart: stopped in {restart.stop_seconds:.1f} s; the new one live in "
            f"{restart.live_seconds:.1f} s, {quiet_text(restart, args_timeout)} after its start; "
            f"first resource resumed after {seconds_text(restart.first_resumed)}, "
            f"{restart.resumed:,} resumed in all; "
            f"PATCH relayendpoints {patches}; RelayEndpoint events {restart.endpoint_events}, "
            f"Events posted {restart.events_posted}; CPU {restart.cpu:.1f} s; "
            f"RSS {mib(restart.rss)} (peak {mib(restart.hwm)})"
        )
        listed = restart.requests.get(("LIST", PLURAL), 0)
        others = ", ".join(
            f"{verb} {res} {count}"
            for (verb, res), count in sorted(writes(restart.requests).items())
        )
        print(f"    writes in that window: {others or 'none'}; LIST relayendpoints {listed}")
    if reporter is not None:
        listed = "-" if reporter.listed_seconds is None else f"{reporter.listed_seconds:.2f} s"
        watching = (
            "-" if reporter.watching_seconds is None else f"{reporter.watching_seconds:.2f} s"
        )
        print(
            f"  reporter start-up ({reporter.relay}, {reporter.labelled:,} labelled for it): "
            f"ready {reporter.ready_seconds:.2f} s, list served {listed}, watching (first "
            f"report) {watching}; LIST {reporter.lists} ({mib(reporter.list_bytes)}); status "
            f"PATCH {reporter.status_patches}; CPU {reporter.cpu:.1f} s; RSS {mib(reporter.rss)}"
        )
    if f.profile is not None:
        for path in (f.profile, f.profile.with_name(f"operator-restarted-{n}.prof")):
            if path.exists():
                print_profile(path)


def print_profile(path: Path, top: int = 25) -> None:
    print(f"  operator profile (cProfile, main thread): {path}")
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats.items()  # type: ignore[attr-defined]
    own = sorted(entries, key=lambda item: -item[1][2])[:top]
    print(f"    own time, of {total:.1f} s:")
    for (file, line, function), (_, calls, tt, _, _) in own:
        print(f"      {tt / total:6.1%} {calls:>9,}  {function} ({short(file)}:{line})")
    cumulative = sorted(entries, key=lambda item: -item[1][3])[:top]
    print("    cumulative:")
    for (file, line, function), (_, calls, _, ct, _) in cumulative:
        print(f"      {ct / total:6.1%} {calls:>9,}  {function} ({short(file)}:{line})")


def short(path: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def ratio_of(f: Figures) -> float | None:
    """The operator's rate over the ceiling's, if the ceiling was measured."""
    if f.ceiling is None:
        return None
    return f.run.rate / f.ceiling.rate


def bare_ratios(f: Figures) -> tuple[float, float] | None:
    """The bare operator's rate over the ceiling's, and the operator's over the bare
    operator's, if both were measured."""
    if f.ceiling is None or f.bare is None:
        return None
    return f.bare.rate / f.ceiling.rate, f.run.rate / f.bare.rate


def median_ratios(all_figures: Sequence[Figures]) -> dict[int, tuple[float, float, float, int]]:
    """Per count measured more than once: (median, lowest, highest) ratio and how many."""
    by_count: dict[int, list[float]] = {}
    for f in all_figures:
        ratio = ratio_of(f)
        if ratio is not None:
            by_count.setdefault(f.count, []).append(ratio)
    return {
        count: (statistics.median(ratios), min(ratios), max(ratios), len(ratios))
        for count, ratios in by_count.items()
        if len(ratios) > 1
    }


def print_summary(all_figures: list[Figures], profiled: bool) -> None:
    print("\nSummary")
    rows = [["RelayEndpoints", "ceiling/s", "operator/s", "ratio", "bare/ceiling",
             "operator/bare", "RSS/resource",
             "restart: quiet", "restart PATCHes", "reporter: watching",
             "reporter LIST"]]  # fmt: skip
    for f in all_figures:
        rate = f.run.rate
        ceiling = f.ceiling.rate if f.ceiling else None
        bare = bare_ratios(f)
        patches = (
            sum(v for (verb, res), v in f.restart.requests.items()
                if verb == "PATCH" and res.startswith(PLURAL))
            if f.restart else None
        )  # fmt: skip
        rows.append(
            [
                f"{f.count:,}",
                "-" if ceiling is None else f"{ceiling:.1f}",
                f"{rate:.1f}",
                "-" if ceiling is None else f"{ratio_of(f):.2f}",
                "-" if bare is None else f"{bare[0]:.2f}",
                "-" if bare is None else f"{bare[1]:.2f}",
                f"{(f.run.rss_after - f.run.rss_before) / f.count / 1024:.1f} KiB",
                "-" if f.restart is None else seconds_text(f.restart.quiet_after, "not quiet"),
                "-" if patches is None else str(patches),
                "-"
                if f.reporter is None or f.reporter.watching_seconds is None
                else f"{f.reporter.watching_seconds:.2f} s",
                "-" if f.reporter is None else mib(f.reporter.list_bytes),
            ]
        )
    table(rows, left=1)
    for count, (median, lowest, highest, runs) in sorted(median_ratios(all_figures).items()):
        spread = f"{lowest:.2f}-{highest:.2f}"
        print(f"  {count:,}: ratio {median:.2f}, the median of {runs} runs ({spread})")
    if profiled:
        print(
            "  The operators ran under cProfile, which about doubles their CPU: these rates say\n"
            "  where the time goes, not how fast the operator is (run again without --profile)."
        )


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operator_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--counts", type=counts, default=[1000, 10000], help="RelayEndpoints")
    parser.add_argument("--relays", type=int, default=2, choices=[1, 2, 3, 4])
    parser.add_argument("--connections", type=int, default=32, help="of the creating clients")
    parser.add_argument("--timeout", type=float, default=900.0, help="per wait, seconds")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds without change")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the first operator under cProfile into DIR")  # fmt: skip
    parser.add_argument("--logs", type=Path, default=None, metavar="DIR",
                        help="keep the logs in DIR/N/")  # fmt: skip
    parser.add_argument("--operator-log-level", default="info",
                        choices=["debug", "info", "warning", "error"])  # fmt: skip
    parser.add_argument("--bare-operator", nargs="?", const="requests", default=None,
                        choices=["requests", "allocating"],
                        help="also run the fleet with no operator, a watch making its requests "
                             "in its place: the most any operator could reach here; "
                             "'allocating': placing and allocating in the store too, "
                             "as the operator does")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="measure every count R times, in turn, and give the median ratio "
                             "(it swings by up to 0.1 from one run to the next)")  # fmt: skip
    parser.add_argument("--control-plane-cpus", type=cpu_list, default=None, metavar="LIST",
                        help="run etcd and kube-apiserver on these CPUs (such as 0) and "
                             "everything else (the operator, relays, Redis, this bench's "
                             "clients) on the others, in every run: the API server then has "
                             "the same CPUs with an operator as without, as when the operator "
                             "runs on a worker node (default: all share every CPU)")  # fmt: skip
    args = parser.parse_args(None if argv is None else list(argv))
    if args.repeat < 1 or (args.repeat > 1 and args.profile is not None):
        parser.error("--repeat takes 1 or more, and 1 with --profile")
    if args.control_plane_cpus is not None:
        rest = os.sched_getaffinity(0) - args.control_plane_cpus
        os.sched_setaffinity(0, rest)
        progress(
            f"etcd and kube-apiserver on CPU {format_cpus(args.control_plane_cpus)}, "
            f"everything else on CPU {format_cpus(rest)}"
        )
    stop_on_sigterm()
    progress(f"load average at the start: {load()}")
    results = []
    for run in range(1, args.repeat + 1):
        for count in args.counts:
            started = time.monotonic()
            figures = measure(count, args)
            print_figures(figures, args.timeout)
            sys.stdout.flush()
            of = f" (run {run} of {args.repeat})" if args.repeat > 1 else ""
            progress(f"{count:,} done in {time.monotonic() - started:.0f} s{of}")
            results.append(figures)
    print_summary(results, profiled=args.profile is not None)


if __name__ == "__main__":
    main()
