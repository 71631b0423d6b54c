"""Allocations per second and latency: the HTTP API beside the reference, the operator on targets.

    .venv/bin/python -m bench.allocations [--part all|http|operator]
                                          [--allocations 10000] [--clients 32]
                                          [--endpoints 1000] [--relays 2] [--no-report]
                                          [--profile DIR] [--timeout 300] [--idle 10]
                                          [--logs DIR] [--operator-log-level info]

Why: issue 7 asks for allocations per second and latency through the HTTP API
(memory and Redis store) beside the reference Go server, and through the
operator (RelayEndpoint created -> status Allocated, 1 000 created at once on
the local control plane) against its targets: >= 100 allocated per second,
p99 created->Allocated under 1 s. One run prints both.

HTTP API (--part http). For each of (a) `relayfleet relay` on the memory store,
(b) the same on the Redis store (a private redis-server), (c) the reference Go
server .dev/bin/refserver (scripts/build-go-helpers), all on loopback:
  1. start the server pinned to CPU 1 (with its redis-server); this script runs
     on CPU 0, on uvloop;
  2. 200 warm-up allocations, then --allocations POST /v0/relay/endpoint of
     distinct random key pairs from --clients concurrent aiohttp clients on
     keep-alive connections;
  3. latency per request from send to body read; rate = allocations / wall
     time; server CPU per allocation = utime+stime of the server and its
     redis-server (/proc) over the run / allocations, a figure the load
     generator cannot skew; client CPU near 100% says the client was the limit.
Ratios are ours / reference from the same run.

Operator (--part operator). In a temporary directory: etcd and kube-apiserver
from .dev/bin (tests/support/controlplane.py, as scripts/local-fleet runs them), the
CRD, a redis-server, --relays `relayfleet relay` processes on Redis reporting
status as in a pod (--kubeconfig; --no-report turns that off), and one
`relayfleet operator --standalone` logging at its default level (info), as
scripts/local-fleet runs it. One RelayEndpoint in another namespace is
allocated first, to prove the chain works. Then:
  1. a watch on the namespace is opened (list, then watch from its
     resourceVersion);
  2. --endpoints RelayEndpoints are created at once: concurrent POSTs to the
     API server from 32 aiohttp connections with the admin client certificate
     (the REST call `kubectl create` makes), each one's client-side return
     time recorded;
  3. the watch stamps the first event in which each one has status.phase
     Allocated and a VNI; status.allocatedAt and creationTimestamp have
     second resolution, so neither is used.
Reported: allocations/s (first create sent to last Allocated), created ->
Allocated p50/p99/max, API requests per endpoint by verb and resource
(kube-apiserver's apiserver_request_total), the CPU each process spent per
endpoint (what bounds the rate on a machine this small, whoever else runs on
it), and the CPU each one keeps spending once all are allocated (--idle).
--profile DIR records the operator with py-spy over the same window
(DIR/operator.raw, collapsed stacks) and prints its busiest functions.

Bounded: --allocations per server, --timeout for the operator; every process
and the temporary directory go at the end, also on errors. Never run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop

from bench.clients import random_pair, request_body
from bench.processes import (
    BENCH_CPU,
    FORWARDER_CPU,
    NO_API_LIMITS,
    REFSERVER,
    REFSERVER_MISSING,
    Forwarder,
    cpu_seconds,
    machine_busy_seconds,
    ours_command,
    pin,
    reference_command,
    stop_all,
)
from bench.report import Progress, percentile, ratio
from relay.resource.definition import GROUP, PLURAL, VERSION
from relay.store.redis import RedisStore
from tests.support.controlplane import ControlPlane, Process
from tests.support.paths import RELAYFLEET, ROOT
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until, wait_until_sync

PY_SPY = str(Path(sys.executable).parent / "py-spy")
CRD = ROOT / "crds" / "relayendpoint.yaml"
WARMUP = 200
CREATE_CONNECTIONS = 32
GROUP_VERSION = f"{GROUP}/{VERSION}"
NAMESPACE, WARMUP_NAMESPACE = "bench", "bench-warmup"
PROFILE_RATE = 100
IDLE_SETTLE = 5.0
MEMORY, REDIS, REFERENCE = "ours, memory store", "ours, Redis store", "reference Go server"


# -- part 1: the HTTP API ----------------------------------------------------------


@dataclass
class HttpResult:
    name: str
    rate: float
    latencies: list[float]
    server_cpu: float
    client_cpu: float


async def allocate_all(
    session: aiohttp.ClientSession, api: str, count: int, clients: int
) -> list[float]:
    """``count`` allocations from ``clients`` concurrent workers; each one's latency."""
    url = f"http://{api}/v0/relay/endpoint"
    headers = {"Content-Type": "application/json"}
    bodies = iter([request_body(random_pair()) for _ in range(count)])
    latencies: list[float] = []

    async def worker() -> None:
        for body in bodies:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"allocation failed: {response.status} {text[:200]!r}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


async def measure_http(
    name: str, api: str, pids: list[int], count: int, clients: int
) -> HttpResult:
    """Warm up, then time ``count`` allocations; ``pids`` is the server and its redis-server."""

    def server_cpu() -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await allocate_all(session, api, WARMUP, clients)
        server_before, client_before = server_cpu(), time.process_time()
        started = time.perf_counter()
        latencies = await allocate_all(session, api, count, clients)
        elapsed = time.perf_counter() - started
        server_cpu_used = server_cpu() - server_before
        client_cpu = time.process_time() - client_before
    return HttpResult(
        name, count / elapsed, latencies, server_cpu_used / count, client_cpu / elapsed
    )


def measure_server(name: str, directory: Path, count: int, clients: int) -> HttpResult:
    """Start server ``name`` (with a redis-server for ours on Redis), both pinned; measure it."""
    with contextlib.ExitStack() as stack:
        command, pids = ours_command("--log-level", "error"), []
        if name == REDIS:
            redis_server = stack.enter_context(RedisServer(directory))
            pin(redis_server.process.pid, FORWARDER_CPU)
            pids.append(redis_server.process.pid)
            command += ["--store", redis_server.url(), "--name", "bench"]
        elif name == REFERENCE:
            command = reference_command()
        started: list[Forwarder] = []
        stack.callback(stop_all, started)
        server = Forwarder.start(name, command, started)
        pids.append(server.process.pid)
        return uvloop.run(measure_http(name, server.api, pids, count, clients))


def http_part(count: int, clients: int) -> None:
    pin(0, BENCH_CPU)
    results: list[HttpResult] = []
    progress = Progress("bench.allocations", 3 if REFSERVER.exists() else 2)
    with tempfile.TemporaryDirectory(prefix="bench-allocations-") as directory:
        for name in (MEMORY, REDIS, REFERENCE):
            if name == REFERENCE and not REFSERVER.exists():
                print(f"  {REFSERVER_MISSING}")
                continue
            progress.cell(f"HTTP API, {name}: {count:,} allocations")
            results.append(measure_server(name, Path(directory), count, clients))
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    print_http(results, count, clients)


def print_http(results: list[HttpResult], count: int, clients: int) -> None:
    print(
        f"HTTP allocation API: {count:,} allocations, {clients} concurrent aiohttp clients, "
        f"loopback; server (and its redis-server) on CPU {FORWARDER_CPU}, client on CPU {BENCH_CPU}"
    )
    reference = next((r for r in results if r.name == REFERENCE), None)
    header = (
        f"  {'':22}{'alloc/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'server CPU':>12}{'client':>8}{'x ref':>7}{'x ref':>7}"
    )
    print(header)
    print(f"  {'':22}{'':>9}{'':>9}{'':>9}{'':>9}{'us/alloc':>12}{'CPU':>8}{'rate':>7}{'CPU':>7}")
    for r in results:
        ratios = ""
        if reference is not None:
            ratios = (
                f"{ratio(r.rate, reference.rate):>7}{ratio(r.server_cpu, reference.server_cpu):>7}"
            )
        print(
            f"  {r.name:22}{r.rate:9,.0f}{percentile(r.latencies, 0.5) * 1e3:9.2f}"
            f"{percentile(r.latencies, 0.99) * 1e3:9.2f}{max(r.latencies) * 1e3:9.2f}"
            f"{r.server_cpu * 1e6:12.0f}{r.client_cpu:8.0%}{ratios}"
        )
    print(
        "  (x ref rate: ours/reference allocations per second, higher is better; "
        "x ref CPU: server CPU per allocation, lower is better)"
    )


# -- part 2: the operator ------------------------------------------------------------


@dataclass
class Fleet:
    """The control plane, Redis, relays and operator of one operator measurement."""

    directory: Path
    relays: int
    report: bool
    operator_log_level: str = "info"
    control_plane: ControlPlane = field(init=False)
    processes: dict[str, Process] = field(default_factory=dict)
    redis: RedisServer | None = None
    redis_url: str = ""

    def __post_init__(self) -> None:
        self.control_plane = ControlPlane(self.directory / "controlplane")

    def start(self) -> None:
        plane = self.control_plane
        plane.start()
        plane.kubectl("apply", "-f", str(CRD))
        plane.kubectl(
            "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}",
            "--timeout=60s", timeout=90,
        )  # fmt: skip
        for namespace in (NAMESPACE, WARMUP_NAMESPACE):
            plane.kubectl("create", "namespace", namespace)
        self._start_redis()
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        env.pop("RELAYFLEET_STORE", None)
        for index in range(1, self.relays + 1):
            self._start_relay(f"relay-{index}", env)
        asyncio.run(
            wait_until(
                self._registered, "the relays to register in Redis", timeout=30, interval=0.1
            )
        )
        port = free_port()
        operator = self._process("operator")
        operator.start(
            [RELAYFLEET, "operator", "--store", self.redis_url, "--standalone",
             "--liveness", f"http://127.0.0.1:{port}/healthz",
             "--log-level", self.operator_log_level],
            env=env,
        )  # fmt: skip

        def healthy() -> bool:
            self._alive(operator)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until_sync(healthy, "the operator's liveness endpoint", timeout=60, interval=0.2)

    def _process(self, name: str) -> Process:
        process = Process(name, self.directory, self.directory / "logs")
        self.processes[name] = process
        return process

    def _alive(self, process: Process) -> None:
        if process.exited() is not None:
            raise RuntimeError(f"{process.name} exited; {process.log}:\n{process.log_tail()}")

    def _start_redis(self) -> None:
        data = self.directory / "redis"
        data.mkdir()
        self.redis = RedisServer(data)
        self.redis.start()
        self.redis_url = self.redis.url()

    def _start_relay(self, name: str, env: dict[str, str]) -> None:
        relay = self._process(name)
        command = [
            RELAYFLEET, "relay", "--store", self.redis_url, "--name", name,
            "--key-file", str(self.directory / f"{name}.key"), "--listen", "127.0.0.1",
            "--port", "0", "--api-listen", "127.0.0.1:0", *NO_API_LIMITS, "--addr", "127.0.0.1",
            "--log-level", "warning",
        ]  # fmt: skip
        if self.report:
            command += ["--kubeconfig", str(self.control_plane.kubeconfig)]
        else:
            command += ["--report-status", "off"]
        relay.start(command, env=env, separate_stdout=True)

        def ready() -> bool:
            self._alive(relay)
            try:
                return '"ready": true' in relay.stdout_log.read_text()
            except OSError:
                return False

        wait_until_sync(ready, f"{name}'s ready line", timeout=60)

    async def _registered(self) -> bool:
        store = RedisStore.from_url(self.redis_url)
        try:
            return sum(r.alive for r in await store.relays()) >= self.relays
        finally:
            await store.close()

    def pids(self) -> dict[str, int | None]:
        plane = self.control_plane
        return {
            "kube-apiserver": plane.apiserver.pid(),
            "etcd": plane.etcd.pid(),
            "redis": self.redis.process.pid if self.redis and self.redis.process else None,
            **{name: process.pid() for name, process in self.processes.items()},
        }

    def stop(self, logs: Path | None = None) -> None:
        for process in reversed(self.processes.values()):
            process.stop()
        if self.redis is not None:
            self.redis.stop()
        self.control_plane.close()
        if logs is not None:
            shutil.copytree(self.directory / "logs", logs, dirs_exist_ok=True)
            if self.redis is not None:
                shutil.copy(self.redis.log, logs / "redis.log")
            shutil.copytree(self.control_plane.log_dir, logs / "controlplane", dirs_exist_ok=True)


@dataclass
class OperatorResult:
    created: dict[str, float]
    allocated: dict[str, float]
    first_sent: float
    last_created: float
    cpu: dict[str, float]
    busy_machine: float
    requests: Counter[tuple[str, str]]
    rewatches: int
    idle_seconds: float
    idle_cpu: dict[str, float]
    idle_requests: Counter[tuple[str, str]]
    profile: Path | None


def endpoint_body(name: str) -> dict:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "RelayEndpoint",
        "metadata": {"name": name},
        "spec": {"discoKeys": [str(key) for key in random_pair()]},
    }


def is_allocated(resource: dict) -> bool:
    status = resource.get("status") or {}
    return status.get("phase") == "Allocated" and status.get("vni") is not None


class Api:
    """kube-apiserver over aiohttp as admin (client certificate)."""

    def __init__(self, plane: ControlPlane, connections: int) -> None:
        context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
        context.load_cert_chain(plane.admin_cert.cert, plane.admin_cert.key)
        self.server = plane.server
        self.rewatches = 0
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=connections),
            read_bufsize=2**20,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    def collection(self, namespace: str) -> str:
        return f"{self.server}/apis/{GROUP_VERSION}/namespaces/{namespace}/{PLURAL}"

    async def create(self, namespace: str, body: dict) -> None:
        async with self.session.post(self.collection(namespace), json=body) as response:
            text = await response.read()
            if response.status != 201:
                raise RuntimeError(f"create failed: {response.status} {text[:300]!r}")

    async def get(self, url: str) -> bytes:
        async with self.session.get(url) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status} {body[:300]!r}")
            return body

    async def watch_allocated(
        self, namespace: str, resource_version: str, seen: dict[str, float], want: int
    ) -> None:
        """Stamp the first event in which each resource is Allocated, until ``want`` are.

        The API server closes a watch whose reader falls behind; it is resumed
        from the last resourceVersion seen, as every client does.
        """
        while len(seen) < want:
            url = (
                f"{self.collection(namespace)}?watch=true&allowWatchBookmarks=true"
                f"&resourceVersion={resource_version}"
            )
            async with self.session.get(url) as response:
                if response.status != 200:
                    raise RuntimeError(f"watch failed: {response.status}")
                while len(seen) < want:
                    line = await response.content.readline()
                    if not line:
                        self.rewatches += 1
                        break
                    now = time.perf_counter()
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {event['object']}")
                    resource = event["object"]
                    resource_version = resource["metadata"]["resourceVersion"]
                    name = resource["metadata"].get("name")
                    if event["type"] != "BOOKMARK" and name not in seen and is_allocated(resource):
                        seen[name] = now

    async def request_counts(self) -> Counter[tuple[str, str]]:
        """apiserver_request_total summed by (verb, resource[/subresource])."""
        counts: Counter[tuple[str, str]] = Counter()
        for line in (await self.get(f"{self.server}/metrics")).decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
            labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
            labels = {k: v.strip('"') for k, v in labels.items()}
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            counts[(labels.get("verb", ""), resource)] += int(float(value))
        return counts

    async def close(self) -> None:
        await self.session.close()


async def wait_allocated(api: Api, namespace: str, name: str, timeout: float) -> None:
    url = f"{api.collection(namespace)}/{name}"

    async def allocated() -> bool:
        return is_allocated(json.loads(await api.get(url)))

    await wait_until(allocated, f"{namespace}/{name} Allocated", timeout=timeout, interval=0.1)


def start_profiler(pid: int, output: Path) -> subprocess.Popen:
    if not Path(PY_SPY).exists():
        sys.exit("bench.allocations: --profile needs py-spy: .venv/bin/pip install py-spy")
    process = subprocess.Popen(
        [PY_SPY, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--format", "raw",
         "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)
    if process.poll() is not None:
        raise RuntimeError(f"py-spy failed: {process.stderr.read().decode()}")
    return process


def stop_profiler(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def measure_operator(
    fleet: Fleet,
    count: int,
    timeout: float,
    idle: float,
    profile: Path | None,
    progress: Progress,
) -> OperatorResult:
    api = Api(fleet.control_plane, CREATE_CONNECTIONS + 2)
    profiler = None
    try:
        await api.create(WARMUP_NAMESPACE, endpoint_body("warm-up"))
        await wait_allocated(api, WARMUP_NAMESPACE, "warm-up", 60)
        listing = json.loads(await api.get(api.collection(NAMESPACE)))
        allocated: dict[str, float] = {}
        watch = asyncio.create_task(
            api.watch_allocated(NAMESPACE, listing["metadata"]["resourceVersion"], allocated, count)
        )
        bodies = [endpoint_body(f"ep-{i:05d}") for i in range(count)]
        pids = fleet.pids()
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            profiler = start_profiler(pids["operator"], profile / "operator.raw")
        requests_before = await api.request_counts()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        busy_before = machine_busy_seconds()
        created: dict[str, float] = {}
        queue = iter(bodies)

        async def creator() -> None:
            for body in queue:
                await api.create(NAMESPACE, body)
                created[body["metadata"]["name"]] = time.perf_counter()

        progress.cell(f"operator: {count:,} RelayEndpoints created at once, until all Allocated")
        first_sent = time.perf_counter()
        await asyncio.gather(*(creator() for _ in range(CREATE_CONNECTIONS)))
        last_created = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.shield(watch), timeout)
        except TimeoutError:
            watch.cancel()
            print(f"  timed out: {len(allocated)} of {count} Allocated after {timeout} s")
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        busy = machine_busy_seconds() - busy_before
        if profiler is not None:
            stop_profiler(profiler)
        requests = await api.request_counts()
        requests.subtract(requests_before)
        await asyncio.sleep(IDLE_SETTLE)
        progress.cell(f"operator: idle for {idle:g} s")
        idle_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        idle_requests = await api.request_counts()
        await asyncio.sleep(idle)
        idle_cpu = {name: cpu_seconds(pid) - idle_before[name] for name, pid in pids.items()}
        idle_requests.subtract(await api.request_counts())
        idle_requests = Counter({key: -n for key, n in idle_requests.items() if n < 0})
        raw = profile / "operator.raw" if profile is not None else None
        return OperatorResult(
            created, allocated, first_sent, last_created, cpu, busy, requests, api.rewatches,
            idle, idle_cpu, idle_requests, raw,
        )  # fmt: skip
    finally:
        if profiler is not None and profiler.poll() is None:
            stop_profiler(profiler)
        await api.close()


def operator_part(args: argparse.Namespace) -> None:
    count, relays, report = args.endpoints, args.relays, not args.no_report
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as directory:
        fleet = Fleet(Path(directory), relays, report, args.operator_log_level)
        progress = Progress("bench.allocations", 3)
        try:
            progress.cell(f"operator: starting the fleet (control plane, Redis, {relays} relays)")
            fleet.start()
            result = asyncio.run(
                measure_operator(fleet, count, args.timeout, args.idle, args.profile, progress)
            )
        finally:
            fleet.stop(args.logs)
    print_operator(result, count, relays, report)
    if result.profile is not None:
        print_profile(result.profile)


def print_operator(result: OperatorResult, count: int, relays: int, report: bool) -> None:
    done = [name for name in result.created if name in result.allocated]
    latencies = [max(0.0, result.allocated[n] - result.created[n]) for n in done]
    end = max(result.allocated.values(), default=result.last_created)
    window = end - result.first_sent
    rate = len(result.allocated) / window
    creating = result.last_created - result.first_sent
    reporting = "reporting status" if report else "not reporting status"
    print(
        f"Operator: {count:,} RelayEndpoints created at once (concurrent POSTs, "
        f"{CREATE_CONNECTIONS} connections), one operator, {relays} relay(s) {reporting}, "
        "local control plane"
    )
    print(f"  creates        {count:,} in {creating:.2f} s ({count / creating:,.0f}/s)")
    rewatched = f" (the watch was resumed {result.rewatches}x)" if result.rewatches else ""
    print(f"  Allocated      {len(result.allocated):,} of {count:,} in {window:.2f} s{rewatched}")
    p99 = percentile(latencies, 0.99) if latencies else float("inf")
    if latencies:
        print(
            f"  created->Allocated  p50 {percentile(latencies, 0.5):.2f} s  p99 {p99:.2f} s  "
            f"max {max(latencies):.2f} s"
        )
    print(f"  {'':24}{'ours':>9}{'target':>9}{'ours/target':>13}")
    print(
        f"  {'allocations/s':24}{rate:9.1f}{'>= 100':>9}{rate / 100:13.2f}  "
        f"{'met' if rate >= 100 else 'MISSED'}"
    )
    print(
        f"  {'p99 created->Allocated':24}{p99:8.2f}s{'< 1 s':>9}{p99:13.2f}  "
        f"{'met' if p99 < 1 else 'MISSED'}"
    )
    cores = os.cpu_count() or 1
    print(
        f"  CPU in the {window:.1f} s window (the machine was busy {result.busy_machine:.1f} "
        f"of {window * cores:.1f} CPU-s, other processes included):"
    )
    for name, seconds in sorted(result.cpu.items(), key=lambda item: -item[1]):
        print(
            f"    {name:16}{seconds:7.1f} s  {seconds / window:5.0%} of a core "
            f"{seconds / count * 1e3:7.1f} ms per RelayEndpoint"
        )
    per_endpoint = sum(result.cpu.values()) / count
    print(
        f"    {'all of these':16}{per_endpoint * count:7.1f} s{'':17}{per_endpoint * 1e3:7.1f} ms "
        f"per RelayEndpoint: at most {cores / per_endpoint:.0f}/s on {cores} idle cores"
    )
    if result.idle_seconds > 0:
        busiest = sorted(result.idle_cpu.items(), key=lambda item: -item[1])[:3]
        shares = ", ".join(
            f"{name} {seconds / result.idle_seconds:.0%}" for name, seconds in busiest
        )
        print(
            f"  idle afterwards ({count:,} endpoints allocated, {IDLE_SETTLE:.0f} s after the "
            f"last, for {result.idle_seconds:.0f} s): {shares} of a core"
        )
        busiest_requests = [
            f"{verb} {resource} {n / result.idle_seconds:.1f}/s"
            for (verb, resource), n in result.idle_requests.most_common(4)
            if resource and verb != "WATCH"
        ]
        print(f"    API requests then: {', '.join(busiest_requests) or 'none'}")
    print("  API requests per RelayEndpoint (apiserver_request_total, all clients):")
    for (verb, resource), n in sorted(result.requests.items(), key=lambda item: -item[1]):
        if n > 0 and verb not in ("WATCH", "CONNECT") and resource:
            print(f"    {verb:7} {resource:32}{n / count:6.2f}  ({n:,})")


def print_profile(raw: Path, top: int = 20) -> None:
    """Busiest functions of a py-spy raw profile: own samples (leaf) and total (on the stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack_text.split(";")]
        samples += count
        own[frames[-1]] += count
        packages[package_of(stack_text.split(";")[-1])] += count
        for name in set(frames):
            total[name] += count
    print(f"  operator profile (py-spy, {PROFILE_RATE}/s, {samples:,} samples on CPU): {raw}")
    print("    own time by package of the innermost frame:")
    for name, n in packages.most_common(12):
        print(f"      {n / samples:6.1%}  {name}")
    print("    own time (innermost frame):")
    for name, n in own.most_common(top):
        print(f"      {n / samples:6.1%}  {name}")
    print("    total time (function anywhere on the stack):")
    for name, n in total.most_common(top + 10):
        print(f"      {n / samples:6.1%}  {name}")


def frame_name(frame: str) -> str:
    """``function (path:line)`` -> ``function (package/module.py)``, lines merged."""
    function, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{function} ({short_path(path)})"


def short_path(path: str) -> str:
    python = f"python{sys.version_info.major}.{sys.version_info.minor}/"
    for marker in ("site-packages/", python, f"{ROOT}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def package_of(frame: str) -> str:
    path = short_path(frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0])
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") if head else "?"


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "http", "operator"], default="all")
    parser.add_argument("--allocations", type=int, default=10_000, help="per HTTP server")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--endpoints", type=int, default=1_000, help="RelayEndpoints at once")
    parser.add_argument("--relays", type=int, default=2, choices=[1, 2, 3, 4])
    parser.add_argument("--no-report", action="store_true", help="relays do not report status")
    parser.add_argument("--timeout", type=float, default=300.0, help="for the last Allocated")
    parser.add_argument("--idle", type=float, default=10.0, help="CPU measured while idle after")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record the operator with py-spy into DIR")  # fmt: skip
    parser.add_argument("--logs", type=Path, default=None, metavar="DIR",
                        help="keep the operator part's logs in DIR")  # fmt: skip
    parser.add_argument("--operator-log-level", default="info",
                        choices=["debug", "info", "warning", "error"])  # fmt: skip
    args = parser.parse_args(None if argv is None else list(argv))
    if args.part in ("all", "http"):
        http_part(args.allocations, args.clients)
    if args.part == "all":
        print()
    if args.part in ("all", "operator"):
        operator_part(args)


if __name__ == "__main__":
    main()
