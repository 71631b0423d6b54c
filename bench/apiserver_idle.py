"""What idle relays' status reporters cost kube-apiserver: listing every interval, or watching.

    .venv/bin/python -m bench.apiserver_idle [--resources 1000,10000] [--relays 2]
                                             [--idle 30] [--warmup 10] [--before HEAD]
                                             [--report-interval 2] [--report-timeout 10]

Why: issue 19 item 7. Each relay's reporter listed every RelayEndpoint labelled
for its relay, whole, every --report-interval; with 2 relays and 1 000
resources kube-apiserver spent 8% of a core on it while nothing happened. The
reporter now lists once and then watches (relay/reporter.py). This bench
measures both, side by side, on the same control plane and resources.

In a temporary directory: etcd and kube-apiserver from .dev/bin
(tests/support/controlplane.py), and the CRD. For each --resources count, in
increasing order, RelayEndpoints are created until there are that many (REST
POSTs from 32 aiohttp connections as admin), each labelled for one of --relays
relays in turn and given an Allocated status through the status subresource,
as the operator leaves them. Then three idle windows of --idle seconds each,
one after the other:
  1. none: no reporter (what the API server spends on its own);
  2. before: --relays StatusReporters of the reporter at --before (default
     HEAD; `git show REV:relay/reporter.py`, loaded from a temporary file),
     which must be one that lists every interval;
  3. after: --relays StatusReporters of this tree's relay/reporter.py.
Each reporter runs in this process, on one event loop, with a RelayCore
holding its relay's endpoints as allocated and untouched (what a relay has
while nobody binds: nothing to patch). Reporters start --warmup seconds
before their window (their first list is not idle cost) and stop after it.

Reported per window: kube-apiserver's and etcd's CPU (utime+stime from
/proc/<pid>/stat, as % of one core), its requests for RelayEndpoints per
second by verb (apiserver_request_total deltas from its /metrics; a WATCH is
counted when it ends), and this process's CPU (the reporters). Ratios are
before / after, of the CPU above the "none" window too. Progress goes to stderr.

Bounded: --resources (at most 100 000), --idle; the control plane and the
temporary directory go at the end, also on errors. Never run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

from bench.clients import random_pair
from bench.report import Progress, table
from relay.aio import stop_tasks
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey, raw_pair
from relay.reporter import StatusReporter
from relay.resource.client import RelayEndpointsApi
from relay.resource.definition import GROUP, KIND, PLURAL, RELAY_LABEL, VERSION
from relay.store import Allocation
from tests.support.controlplane import ControlPlane
from tests.support.waiting import wait_until, wait_until_sync

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "relayendpoint.yaml"
NAMESPACE = "idle"
CONNECTIONS = 32
MAX_RESOURCES = 100_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


PROGRESS = Progress("bench.apiserver_idle", 0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def old_reporter(revision: str) -> ModuleType:
    """relay/reporter.py as of ``revision``, loaded under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:relay/reporter.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "on_relay(" not in source:
        raise SystemExit(
            f"the reporter at {revision} does not list every interval (no on_relay call): "
            "pass --before a revision from before issue 19 item 7"
        )
    directory = Path(tempfile.mkdtemp(prefix="reporter-before-"))
    path = directory / "reporter_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("reporter_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.rmtree(directory)
    return module


class Api:
    """kube-apiserver over aiohttp as admin (client certificate)."""

    def __init__(self, plane: ControlPlane) -> None:
        context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
        context.load_cert_chain(plane.admin_cert.cert, plane.admin_cert.key)
        self.server = plane.server
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self.collection = f"{self.server}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"

    async def create(self, name: str, relay: str, vni: int, keys: list[str]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "labels": {RELAY_LABEL: relay}},
            "spec": {"discoKeys": keys},
        }
        async with self.session.post(self.collection, json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"create {name}: {response.status} {await response.text()}")
        status = {
            "status": {
                "phase": "Allocated",
                "relay": relay,
                "vni": vni,
                "lamportID": 1,
                "clients": [{"discoKey": key, "handshake": "Init"} for key in keys],
            }
        }
        async with self.session.patch(
            f"{self.collection}/{name}/status",
            data=json.dumps(status),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"status {name}: {response.status} {await response.text()}")

    async def request_counts(self) -> Counter[str]:
        """apiserver_request_total for RelayEndpoints (not their status), by verb."""
        counts: Counter[str] = Counter()
        async with self.session.get(f"{self.server}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
            labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
            labels = {k: v.strip('"') for k, v in labels.items()}
            if labels.get("resource") == PLURAL and not labels.get("subresource"):
                counts[labels.get("verb", "")] += int(float(value))
        return counts

    async def close(self) -> None:
        await self.session.close()


@dataclass
class Fleet:
    """What each relay has: its resources' VNIs and key pairs."""

    relays: list[str]
    endpoints: dict[str, list[tuple[int, tuple[DiscoPublicKey, DiscoPublicKey]]]]

    @classmethod
    def empty(cls, relays: int) -> Fleet:
        names = [f"relay-{i}" for i in range(1, relays + 1)]
        return cls(names, {name: [] for name in names})

    @property
    def size(self) -> int:
        return sum(len(e) for e in self.endpoints.values())

    async def grow(self, api: Api, count: int) -> None:
        """Create resources until there are ``count``, relays in turn."""
        started = time.monotonic()
        first = self.size
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(first, count):
            queue.put_nowait(index)
        done = 0

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                index = queue.get_nowait()
                relay = self.relays[index % len(self.relays)]
                vni = index // len(self.relays) + 1
                pair = random_pair()
                self.endpoints[relay].append((vni, pair))
                await api.create(f"rep-{index:06}", relay, vni, [str(k) for k in pair])
                done += 1
                if done % 1000 == 0:
                    PROGRESS.note(
                        f"created {first + done}/{count} RelayEndpoints "
                        f"({time.monotonic() - started:.0f} s)"
                    )

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))

    def core(self, relay: str) -> RelayCore:
        core = RelayCore(DiscoPrivateKey.generate(), bytes(32))
        now = time.time()
        for vni, pair in self.endpoints[relay]:
            keys = sorted(pair)
            core.install(Allocation(relay, vni, 1, raw_pair((keys[0], keys[1])), now))
        return core


class CountingApi(RelayEndpointsApi):
    """Counts the lists (``on_relay`` before, ``listing`` after), to know each has listed."""

    def __init__(self, kubeconfig: str) -> None:
        super().__init__(kubeconfig)
        self.lists = 0

    async def on_relay(self, relay: str, timeout: float) -> list[dict[str, Any]]:
        items = await super().on_relay(relay, timeout)
        self.lists += 1
        return items

    async def listing(self, relay: str, timeout: float) -> Any:
        listed = await super().listing(relay, timeout)
        self.lists += 1
        return listed


@dataclass
class Window:
    name: str
    seconds: float
    apiserver_cpu: float
    etcd_cpu: float
    own_cpu: float
    requests: Counter[str]

    def share(self, cpu: float) -> float:
        """CPU seconds as % of one core over the window."""
        return 100 * cpu / self.seconds

    def rate(self, verb: str) -> float:
        return self.requests[verb] / self.seconds


async def idle_window(
    name: str,
    plane: ControlPlane,
    api: Api,
    fleet: Fleet,
    reporter_class: type | None,
    args: argparse.Namespace,
) -> Window:
    tasks = []
    clients: list[CountingApi] = []
    if reporter_class is not None:
        for relay in fleet.relays:
            client = CountingApi(str(plane.kubeconfig))
            clients.append(client)
            reporter = reporter_class(
                fleet.core(relay),
                relay,
                client,
                interval=args.report_interval,
                request_timeout=args.report_timeout,
            )
            tasks.append(asyncio.create_task(reporter.run(), name=f"{name}-{relay}"))
        await wait_until(
            lambda: all(c.lists for c in clients),
            f"{name}: each reporter's first list",
            timeout=120,
        )
        PROGRESS.note(f"{name}: reporters listed; {args.warmup:g} s of warm-up")
        await asyncio.sleep(args.warmup)
    pids = {"apiserver": plane.apiserver.pid(), "etcd": plane.etcd.pid()}
    assert all(pids.values()), f"control plane not running: {pids}"
    PROGRESS.note(f"{name}: measuring {args.idle:g} s")
    before = await api.request_counts()
    cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}  # type: ignore[arg-type]
    own_before = time.process_time()
    started = time.monotonic()
    await asyncio.sleep(args.idle)
    seconds = time.monotonic() - started
    own = time.process_time() - own_before
    cpu = {k: cpu_seconds(pid) - cpu_before[k] for k, pid in pids.items()}  # type: ignore[arg-type]
    after = await api.request_counts()
    await stop_tasks(*tasks)
    requests = Counter({verb: after[verb] - before[verb] for verb in after})
    return Window(name, seconds, cpu["apiserver"], cpu["etcd"], own, requests)


def print_windows(count: int, relays: int, windows: list[Window], before_revision: str) -> None:
    print(
        f"\n{count:,} RelayEndpoints, {relays} relays ({count // relays:,} each), "
        f"{windows[0].seconds:.0f} s idle windows"
    )
    verbs = ("LIST", "WATCH", "GET", "PATCH")
    rows = [
        [
            "reporters",
            "kube-apiserver CPU",
            "etcd CPU",
            *(f"{verb}/s" for verb in verbs),
            "reporters' CPU",
        ]
    ]
    labels = {
        "none": "none",
        "before": f"before ({before_revision}: list every interval)",
        "after": "after (list, then watch)",
    }
    for window in windows:
        rows.append(
            [
                labels[window.name],
                f"{window.share(window.apiserver_cpu):.1f}%",
                f"{window.share(window.etcd_cpu):.1f}%",
                *(f"{window.rate(verb):.2f}" for verb in verbs),
                "-" if window.name == "none" else f"{window.share(window.own_cpu):.1f}%",
            ]
        )
    table(rows, left=1)
    by_name = {w.name: w for w in windows}
    none, old, new = by_name["none"], by_name["before"], by_name["after"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "-"

    above_old = old.share(old.apiserver_cpu) - none.share(none.apiserver_cpu)
    above_new = new.share(new.apiserver_cpu) - none.share(none.apiserver_cpu)
    print(
        f"  before / after: kube-apiserver CPU "
        f"{ratio(old.share(old.apiserver_cpu), new.share(new.apiserver_cpu))}, "
        f"above the no-reporter window {above_old:.1f}% / {above_new:.1f}% "
        f"({ratio(above_old, above_new) if above_new > 0.05 else 'after within noise'}); "
        f"requests/s {ratio(sum(old.requests.values()), sum(new.requests.values()))}; "
        f"reporters' CPU {ratio(old.own_cpu, new.own_cpu)}"
    )


def start_plane(directory: Path) -> ControlPlane:
    plane = ControlPlane(directory / "controlplane", durable=False)
    PROGRESS.note("starting etcd and kube-apiserver")
    plane.start()
    plane.kubectl("apply", "-f", str(CRD))
    plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s",
        timeout=90,
    )  # fmt: skip

    def served() -> bool:
        status, _ = plane.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}?limit=1")
        return status == 200

    wait_until_sync(served, "RelayEndpoints served", timeout=60, interval=0.2)
    plane.kubectl("create", "namespace", NAMESPACE)
    return plane


async def measure(plane: ControlPlane, args: argparse.Namespace) -> None:
    before_module = old_reporter(args.before)
    api = Api(plane)
    fleet = Fleet.empty(args.relays)
    try:
        for count in args.resources:
            PROGRESS.cell(f"creating RelayEndpoints up to {count:,}")
            await fleet.grow(api, count)
            windows = []
            for name, reporter_class in (
                ("none", None),
                ("before", before_module.StatusReporter),
                ("after", StatusReporter),
            ):
                PROGRESS.cell(f"{count:,} RelayEndpoints, reporters {name}")
                windows.append(await idle_window(name, plane, api, fleet, reporter_class, args))
            print_windows(count, args.relays, windows, args.before)
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"  load average after the windows: {load}", flush=True)
    finally:
        await api.close()


def counts(text: str) -> list[int]:
    values = sorted(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    if not values or values[0] < 1 or values[-1] > MAX_RESOURCES:
        raise argparse.ArgumentTypeError(f"counts from 1 to {MAX_RESOURCES}")
    return values


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.apiserver_idle",
        description="kube-apiserver's cost of idle relays' status reporters, before and after",
    )
    parser.add_argument("--resources", type=counts, default=[1000, 10000])
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before a window")
    parser.add_argument("--before", default="HEAD", help="revision of the listing reporter")
    parser.add_argument("--report-interval", type=float, default=2.0)
    parser.add_argument("--report-timeout", type=float, default=10.0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    directory = Path(tempfile.mkdtemp(prefix="apiserver-idle-"))
    plane: ControlPlane | None = None
    PROGRESS.total = 4 * len(args.resources)
    PROGRESS.note(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    try:
        plane = start_plane(directory)
        asyncio.run(measure(plane, args))
    finally:
        if plane is not None:
            with contextlib.suppress(Exception):
                plane.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
