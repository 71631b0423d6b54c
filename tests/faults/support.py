"""Helpers of the fault-injection suite: peers, bulk creation, probes, the change log, checks.

Every fault module drives the same real parts (kube-apiserver, redis-server,
``relayfleet relay`` and ``relayfleet operator`` processes) and ends with the
same invariants, so they live here: :func:`check_invariants` compares the
RelayEndpoints' status with the store's allocations, the store's change
announcements (the order in which Redis issued LamportIDs) and the relays'
own endpoint tables. :class:`TrafficProbe` sends round trips through a bound
endpoint from a thread of its own, so that nothing the test does on its event
loop (listing hundreds of resources, waiting for processes) can pass for a
data-plane outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.store.redis import RedisStore
from tests.relay.relay_process import RelayProcess
from tests.support.controlplane import ControlPlane
from tests.support.waiting import wait_until

API = "/apis/relayfleet.io/v1alpha1"
PREFIX = "relayfleet:"
# Unbound endpoints must outlive the slowest test: an expiry would look like a lost allocation.
BIND_LIFETIME = "10m"
ROUND_TRIP_TIMEOUT = 5.0
PROBE_INTERVAL = 0.02
PROBE_LIMIT = 600.0
# Between two listings of every resource (or every relay's table) while waiting on them.
LIST_INTERVAL = 0.5


# -- peers and resources ---------------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """The two peers of one RelayEndpoint: its name, their private keys, an optional pin."""

    name: str
    keys: tuple[DiscoPrivateKey, DiscoPrivateKey]
    relay: str | None = None

    @classmethod
    def fresh(cls, name: str, relay: str | None = None) -> Peers:
        return cls(name, (DiscoPrivateKey.generate(), DiscoPrivateKey.generate()), relay)

    @property
    def public(self) -> frozenset[str]:
        return frozenset(str(k.public) for k in self.keys)

    def manifest(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"discoKeys": [str(k.public) for k in self.keys]}
        if self.relay is not None:
            spec["relay"] = self.relay
        return {
            "apiVersion": "relayfleet.io/v1alpha1",
            "kind": "RelayEndpoint",
            "metadata": {"name": self.name},
            "spec": spec,
        }


def phase(resource: Mapping[str, Any]) -> str | None:
    return resource.get("status", {}).get("phase")


class Endpoints:
    """The RelayEndpoints of one namespace, through the API server's REST API as admin."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.path = f"{API}/namespaces/{namespace}/relayendpoints"

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.plane.pki / "ca.crt"))
        context.load_cert_chain(self.plane.admin_cert.cert, self.plane.admin_cert.key)
        return context

    def list_now(self) -> dict[str, dict[str, Any]]:
        """Every RelayEndpoint by name; {} while the API server does not answer."""
        try:
            status, body = self.plane.request("GET", self.path, timeout=20)
        except OSError:
            return {}
        if status != 200:
            return {}
        return {r["metadata"]["name"]: r for r in json.loads(body)["items"]}

    async def list(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(self.list_now)

    async def look_up(self, name: str) -> str:
        """One resource as a GET by name finds it, for a failure message: its phase and
        what the operator's framework wrote in its metadata."""
        try:
            status, body = await asyncio.to_thread(
                self.plane.request, "GET", f"{self.path}/{name}", timeout=20
            )
        except OSError as exc:
            return f"GET {name}: {exc}"
        if status != 200:
            return f"GET {name}: {status}"
        resource = json.loads(body)
        meta = resource["metadata"]
        return (
            f"GET {name}: phase {phase(resource)}, resourceVersion {meta['resourceVersion']}, "
            f"finalizers {meta.get('finalizers')}, annotations {meta.get('annotations')}"
        )

    async def create(self, peers: Sequence[Peers], concurrency: int = 50) -> float:
        """Create every resource, ``concurrency`` requests in flight; returns the seconds taken.

        A request that fails to connect or meets a 5xx/429 is sent again (bounded);
        409 on a retry means the earlier attempt got through.
        """
        started = time.monotonic()
        connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=concurrency)
        gate = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(item: Peers) -> None:
                async with gate:
                    for attempt in range(40):
                        try:
                            async with session.post(
                                f"{self.plane.server}{self.path}",
                                json=item.manifest(),
                                timeout=aiohttp.ClientTimeout(total=30),
                            ) as response:
                                if response.status == 201 or (response.status == 409 and attempt):
                                    return
                                text = await response.text()
                                if response.status < 500 and response.status != 429:
                                    raise AssertionError(
                                        f"creating {item.name}: {response.status} {text}"
                                    )
                        except (aiohttp.ClientError, TimeoutError):
                            pass
                        await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                    raise AssertionError(f"creating {item.name}: gave up after 40 attempts")

            await asyncio.gather(*(one(item) for item in peers))
        return time.monotonic() - started


async def settled(
    endpoints: Endpoints,
    expected: Mapping[str, str],
    timeout: float,
    log: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Wait until the namespace holds exactly the ``expected`` resources, each in its phase."""

    async def check() -> dict[str, dict[str, Any]] | None:
        resources = await endpoints.list()
        if resources.keys() != expected.keys():
            return None
        if all(phase(r) == expected[name] for name, r in resources.items()):
            return resources
        return None

    async def describe() -> str:
        resources = await endpoints.list()
        counts: dict[str, int] = {}
        behind: list[str] = []
        for name, want in expected.items():
            got = phase(resources.get(name, {}))
            key = f"{got or 'missing'} (want {want})"
            counts[key] = counts.get(key, 0) + 1
            if got != want:
                behind.append(name)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        behind.sort()
        return summary + "".join([f"\n{await endpoints.look_up(n)}" for n in behind[:3]])

    try:
        what = f"{len(expected)} resources in their phase"
        interval = 1.0 if len(expected) <= 200 else 2.0
        return await wait_until(check, what, timeout=timeout, interval=interval, log=log)
    except TimeoutError as exc:
        raise AssertionError(f"{await describe()}\n{exc}") from None


async def store_count(store: RedisStore, relays: Iterable[str]) -> int:
    """How many allocations ``relays`` hold in the store now."""
    total = 0
    for name in relays:
        total += len(await store.allocations(name))
    return total


async def issued_total(store: RedisStore, relays: Iterable[str]) -> int:
    """How many allocations the store ever issued on ``relays``: their LamportID counters."""
    total = 0
    for relay in relays:
        total += int(await store.client.get(f"{PREFIX}{{{relay}}}:lamport") or 0)
    return total


# -- processes -----------------------------------------------------------------------------


async def start_relay(
    plane: ControlPlane,
    redis_url: str,
    name: str,
    key_dir: Path,
    *,
    heartbeat: str = "500ms",
    report: str = "1s",
) -> RelayProcess:
    """A ``relayfleet relay`` registered under ``name``, reporting into ``plane``."""
    return await RelayProcess.start(
        "--store", redis_url, "--name", name, "--addr", "127.0.0.1",
        "--key-file", str(key_dir / f"{name}.key"), "--kubeconfig", str(plane.kubeconfig),
        "--heartbeat-interval", heartbeat, "--report-interval", report,
        "--bind-lifetime", BIND_LIFETIME,
    )  # fmt: skip


async def stop_relays(relays: Mapping[str, RelayProcess], log_dir: Path) -> None:
    """Stop every relay (SIGTERM) and keep what each logged in ``log_dir``/<name>.log."""
    for name, relay in relays.items():
        _, stderr = await relay.stop()
        (log_dir / f"{name}.log").write_text(stderr)


def operator_flags(relay_check_interval: str = "1s") -> tuple[str, ...]:
    """Flags for tests.relay_operator.e2e_support.Operator, after its own (the last one wins)."""
    return ("--standalone", "--relay-check-interval", relay_check_interval, "--log-level", "info")


def relay_table(relay: RelayProcess) -> set[tuple[int, int]] | None:
    """The (VNI, LamportID) of every endpoint a relay serves, from its HTTP API."""
    try:
        with urllib.request.urlopen(
            f"http://{relay.ready['api']}/v0/relay/endpoints", timeout=5
        ) as response:
            listing = json.load(response)
    except OSError:
        return None
    return {(e["VNI"], e["LamportID"]) for e in listing["Endpoints"]}


# -- the data plane --------------------------------------------------------------------------


@dataclass
class ProbeReport:
    """What a probe saw: round trips made, those lost, and the longest silence between two."""

    name: str
    relay: str
    rounds: int = 0
    lost: list[str] = field(default_factory=list)
    max_rtt: float = 0.0
    max_gap: float = 0.0
    first_ok: float | None = None
    last_ok: float | None = None

    def ok_during(self, start: float, end: float) -> bool:
        """Whether round trips succeeded before ``start`` and after ``end`` (monotonic)."""
        return (
            self.first_ok is not None
            and self.last_ok is not None
            and self.first_ok < start
            and self.last_ok > end
        )


class TrafficProbe:
    """Two real clients bound to one endpoint, making round trips A -> B -> A in a thread.

    :meth:`bind` runs both handshakes over UDP with the allocation in a
    RelayEndpoint's status; :meth:`start` sends a round trip every
    ``PROBE_INTERVAL`` until :meth:`finish` (or for ``PROBE_LIMIT`` s at
    most), each one lost unless it comes back within ``ROUND_TRIP_TIMEOUT``.
    """

    def __init__(self, peers: Peers, status: Mapping[str, Any]) -> None:
        self.peers = peers
        server = DiscoPublicKey.parse(status["serverDisco"])
        self.clients = [RelayClient(k, server, int(status["vni"]), protocol=0) for k in peers.keys]
        host, port = status["addrPorts"][0].rsplit(":", 1)
        self.relay_addr = (host, int(port))
        self.sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for sock in self.sockets:
            sock.bind(("127.0.0.1", 0))
        self.report = ProbeReport(peers.name, status["relay"])
        self._sequence = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe-{peers.name}", daemon=True)

    def _receive(self, index: int, wanted: bytes, deadline: float) -> bool:
        sock, client = self.sockets[index], self.clients[index]
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                datagram = sock.recv(2048)
            except TimeoutError:
                return False
            try:
                if client.read_data(datagram) == wanted:
                    return True
            except ValueError:
                continue
        return False

    def round_trip(self, timeout: float = ROUND_TRIP_TIMEOUT) -> str | None:
        """One round trip; None if it came back, else what went wrong."""
        self._sequence += 1
        payload = struct.pack(">Q", self._sequence) + b" probe"
        deadline = time.monotonic() + timeout
        self.sockets[0].sendto(self.clients[0].data(payload), self.relay_addr)
        if not self._receive(1, payload, deadline):
            return f"#{self._sequence} A->B lost"
        self.sockets[1].sendto(self.clients[1].data(payload), self.relay_addr)
        if not self._receive(0, payload, deadline):
            return f"#{self._sequence} B->A lost"
        return None

    def _handshake(self, index: int, deadline: float) -> bool:
        sock, client = self.sockets[index], self.clients[index]
        sock.sendto(client.bind(), self.relay_addr)
        while (left := min(0.3, deadline - time.monotonic())) > 0:
            sock.settimeout(left)
            try:
                datagram = sock.recv(2048)
            except TimeoutError:
                return False
            try:
                sock.sendto(client.answer(datagram), self.relay_addr)
                return True
            except ValueError:
                continue
        return False

    def bind(self, timeout: float = 20.0) -> None:
        """Bind both clients (retrying while the relay has not installed the endpoint yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._handshake(i, deadline) for i in range(2)) and self.round_trip() is None:
                return
        raise AssertionError(f"{self.peers.name}: could not bind to {self.relay_addr}")

    def _run(self) -> None:
        started = time.monotonic()
        last_ok = None
        for _ in range(int(PROBE_LIMIT / PROBE_INTERVAL)):
            if self._stop.is_set():
                break
            began = time.monotonic()
            problem = self.round_trip()
            now = time.monotonic()
            report = self.report
            report.rounds += 1
            if problem is None:
                report.max_rtt = max(report.max_rtt, now - began)
                report.max_gap = max(report.max_gap, now - (last_ok or started))
                if report.first_ok is None:
                    report.first_ok = now
                report.last_ok = last_ok = now
            else:
                report.lost.append(problem)
            self._stop.wait(PROBE_INTERVAL)

    def start(self) -> TrafficProbe:
        self._thread.start()
        return self

    async def warmed_up(self, rounds: int = 10, timeout: float = 10.0) -> None:
        """Wait until ``rounds`` round trips have come back, all of them."""

        async def done() -> bool:
            report = self.report
            assert not report.lost, f"{self.peers.name} lost round trips: {report.lost}"
            return report.rounds >= rounds

        await wait_until(
            done, f"{rounds} round trips through {self.peers.name}", timeout=timeout, interval=0.05
        )

    def finish(self, after: float | None = None) -> ProbeReport:
        """Stop, once a round trip has come back later than ``after`` (monotonic), if given."""
        deadline = time.monotonic() + ROUND_TRIP_TIMEOUT * 2
        while after is not None and time.monotonic() < deadline and self._thread.is_alive():
            if (self.report.last_ok or 0) > after:
                break
            self._stop.wait(PROBE_INTERVAL)
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(ROUND_TRIP_TIMEOUT * 2 + 1)
            assert not self._thread.is_alive(), f"probe {self.peers.name} did not stop"
        for sock in self.sockets:
            sock.close()
        return self.report


def assert_no_outage(report: ProbeReport, fault_start: float, fault_end: float) -> str:
    """Every round trip came back, before, during and after the fault; returns a summary."""
    assert report.lost == [], f"{report.name} on {report.relay} lost round trips: {report.lost}"
    assert report.ok_during(fault_start, fault_end), (
        f"{report.name} on {report.relay} made no round trip before or after the fault: {report}"
    )
    assert report.max_gap < ROUND_TRIP_TIMEOUT, report
    return (
        f"{report.rounds}/{report.rounds} round trips through {report.name}, "
        f"max rtt {report.max_rtt * 1000:.0f} ms, max gap {report.max_gap * 1000:.0f} ms"
    )


async def bound_probe(
    endpoints: Endpoints, peers: Peers, timeout: float = 30.0, log: Path | None = None
) -> TrafficProbe:
    """Wait for ``peers``' resource to be Allocated, bind both clients, wait for phase Bound."""

    async def allocated() -> dict[str, Any] | None:
        resource = (await endpoints.list()).get(peers.name, {})
        return resource["status"] if phase(resource) == "Allocated" else None

    status = await wait_until(
        allocated, f"{peers.name} Allocated", timeout=timeout, interval=LIST_INTERVAL, log=log
    )
    probe = TrafficProbe(peers, status)
    await asyncio.to_thread(probe.bind)

    async def bound() -> bool:
        return phase((await endpoints.list()).get(peers.name, {})) == "Bound"

    await wait_until(bound, f"{peers.name} Bound", timeout=timeout, interval=LIST_INTERVAL, log=log)
    return probe


async def start_probes(
    endpoints: Endpoints, relays: Iterable[str], probes: list[TrafficProbe], log: Path
) -> list[Peers]:
    """One bound pair per relay, each relaying round trips; started probes go into ``probes``
    as they start, so the caller's cleanup finishes them whatever fails later."""
    probe_peers = [Peers.fresh(f"probe-{name}", relay=name) for name in relays]
    await endpoints.create(probe_peers)
    for peers in probe_peers:
        probes.append((await bound_probe(endpoints, peers, log=log)).start())
        await probes[-1].warmed_up()
    return probe_peers


def check_no_outage(
    checks: Checks, reports: Iterable[ProbeReport], fault_start: float, fault_end: float
) -> None:
    for report in reports:
        with checks.check(f"no outage on {report.relay}") as outcome:
            outcome.detail = assert_no_outage(report, fault_start, fault_end)


# -- the store's issue order ---------------------------------------------------------------


class ChangeLog:
    """Every change Redis announced for every relay, in the order it published them.

    The allocation script publishes ``alloc <vni> <lamport>`` in the same
    atomic step that issues the LamportID, so this is the store's own issue
    order. A thread listens with a pattern subscription; when Redis goes away
    it subscribes again, and ``reconnects`` counts how often (announcements
    made in between are lost to it).
    """

    def __init__(self, redis_url: str, prefix: str = PREFIX) -> None:
        self._url = redis_url
        self._pattern = f"{prefix}{{*}}:changes"
        self._prefix = prefix
        self.changes: list[tuple[str, str, int, int]] = []
        self.reconnects = 0
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="change-log", daemon=True)

    def _relay(self, channel: bytes) -> str:
        return channel.decode()[len(self._prefix) + 1 : -len("}:changes")]

    def _listen(self) -> None:
        client = redis.Redis.from_url(self._url, socket_connect_timeout=1.0)
        pubsub = client.pubsub()
        try:
            pubsub.psubscribe(self._pattern)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    self._subscribed.set()
                elif message["type"] == "pmessage":
                    kind, vni, lamport = message["data"].decode().split()
                    relay = self._relay(message["channel"])
                    self.changes.append((relay, kind, int(vni), int(lamport)))
        finally:
            pubsub.close()
            client.close()

    def _run(self) -> None:
        deadline = time.monotonic() + PROBE_LIMIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._listen()
            except (redis.ConnectionError, redis.TimeoutError):
                self.reconnects += 1
                self._stop.wait(0.05)

    def start(self, timeout: float = 10.0) -> ChangeLog:
        self._thread.start()
        assert self._subscribed.wait(timeout), "the change log did not subscribe"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def issued(self, relay: str) -> list[int]:
        """The LamportIDs allocated on ``relay``, in issue order."""
        return [lamport for r, kind, _, lamport in self.changes if r == relay and kind == "alloc"]


# -- the invariants -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a passing check says about itself in the table."""

    detail: str = ""


class InvariantViolated(AssertionError):
    """One or more of a fault's checks failed (each is named in the message)."""


class Checks:
    """Named checks run one after another: each failure is kept and the others still run.

    Every check, passed or failed, is handed to ``record`` as one line (for
    the table); :meth:`assert_all` fails the test with every failure at once.
    """

    def __init__(self, record: Callable[[str], None]) -> None:
        self._record = record
        self.failures: list[str] = []

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[Outcome]:
        outcome = Outcome()
        try:
            yield outcome
        except (AssertionError, TimeoutError) as exc:
            message = str(exc) or "assertion failed"
            self.failures.append(f"{name}: {message}")
            self._record(f"FAILED {name}: {message.splitlines()[0][:400]}")
        else:
            self._record(f"{name}: {outcome.detail}" if outcome.detail else name)

    def assert_all(self) -> None:
        if self.failures:
            raise InvariantViolated("\n".join(self.failures))


async def check_invariants(
    checks: Checks,
    resources: Mapping[str, Mapping[str, Any]],
    peers: Iterable[Peers],
    expected: Mapping[str, str],
    store: RedisStore,
    changes: ChangeLog,
    live_relays: Mapping[str, RelayProcess],
    *,
    dead_relays: Iterable[str] = (),
    complete_log: bool = True,
) -> None:
    """Check what every fault must leave intact, each check recorded in ``checks``.

    - every resource is in its expected phase;
    - exactly one allocation per resource: the store holds one allocation per
      pair of keys, the one the status names (relay, VNI, LamportID), and
      nothing else, on any relay (dead ones included);
    - no VNI in use twice on a relay, by the statuses or the store;
    - LamportIDs strictly increasing per relay in the store's issue order
      (its change announcements), none reused, and every live allocation
      among those announced unless ``complete_log`` is off (Redis restarted);
    - each live relay serves exactly its allocations from the store.
    """
    peers = list(peers)
    by_pair = {p.public: p.name for p in peers}
    dead = set(dead_relays)
    relays = {r.name for r in await store.relays()} | set(live_relays) | dead
    allocations = {relay: await store.allocations(relay) for relay in sorted(relays)}
    statuses = {name: r.get("status", {}) for name, r in resources.items()}

    with checks.check("phases") as outcome:
        assert resources.keys() == expected.keys(), (
            f"missing {sorted(expected.keys() - resources.keys())}, "
            f"unexpected {sorted(resources.keys() - expected.keys())}"
        )
        wrong = {n: phase(r) for n, r in resources.items() if phase(r) != expected[n]}
        assert not wrong, f"{len(wrong)} in the wrong phase: {wrong}"
        outcome.detail = _phase_counts(expected)

    with checks.check("exactly one allocation per resource") as outcome:
        held: dict[str, list[tuple[str, int, int]]] = {name: [] for name in resources}
        strangers = []
        for relay, found in allocations.items():
            for allocation in found:
                owner = by_pair.get(frozenset(str(k) for k in allocation.disco_keys))
                if owner in held:
                    held[owner].append((relay, allocation.vni, allocation.lamport_id))
                else:
                    strangers.append(allocation)
        wrong = {}
        for name, status in statuses.items():
            named = (status.get("relay"), status.get("vni"), status.get("lamportID"))
            if held[name] != [named]:
                wrong[name] = f"status {named}, store {held[name]}"
        total = sum(len(found) for found in allocations.values())
        assert not wrong, (
            f"{len(wrong)} resources whose store allocations differ from their status "
            f"({total} allocations for {len(resources)} resources): "
            + "; ".join(f"{n}: {w}" for n, w in sorted(wrong.items()))
        )
        assert not strangers, f"allocations of no resource: {strangers}"
        on_dead = {relay: allocations.get(relay) for relay in dead if allocations.get(relay)}
        assert not on_dead, f"dead relays still hold allocations: {on_dead}"
        outcome.detail = f"{total} in the store for {len(resources)} resources"

    with checks.check("no VNI twice on a relay") as outcome:
        for relay in relays:
            vnis = [s.get("vni") for s in statuses.values() if s.get("relay") == relay]
            assert len(vnis) == len(set(vnis)), f"a VNI named twice on {relay}: {sorted(vnis)}"
            in_store = [a.vni for a in allocations[relay]]
            assert len(in_store) == len(set(in_store)), f"a VNI held twice on {relay}"
        outcome.detail = f"{len(relays)} relays"

    with checks.check("LamportIDs strictly increasing per relay in issue order") as outcome:
        announced = 0
        for relay in relays:
            issued = changes.issued(relay)
            announced += len(issued)
            assert all(a < b for a, b in itertools.pairwise(issued)), (
                f"not increasing on {relay}: {issued}"
            )
            in_status = [s.get("lamportID") for s in statuses.values() if s.get("relay") == relay]
            assert len(in_status) == len(set(in_status)), f"a LamportID named twice on {relay}"
            lamports = {a.lamport_id for a in allocations[relay]}
            if complete_log:
                missing = sorted(lamports - set(issued))
                assert not missing, f"allocations on {relay} never announced: {missing}"
            counter = int(await store.client.get(f"{PREFIX}{{{relay}}}:lamport") or 0)
            assert max(lamports, default=0) <= counter, f"{relay}'s counter {counter} went back"
        note = "" if complete_log else f", {changes.reconnects} resubscriptions"
        outcome.detail = f"{announced} issued{note}"

    with checks.check("relays serve exactly the store's allocations") as outcome:

        async def tables_agree() -> bool:
            for name, relay in live_relays.items():
                table = await asyncio.to_thread(relay_table, relay)
                if table != {(a.vni, a.lamport_id) for a in allocations[name]}:
                    return False
            return True

        await wait_until(
            tables_agree,
            "every live relay serving exactly its allocations",
            timeout=20,
            interval=LIST_INTERVAL,
        )
        outcome.detail = ", ".join(sorted(live_relays))


def _phase_counts(expected: Mapping[str, str]) -> str:
    counts: dict[str, int] = {}
    for want in expected.values():
        counts[want] = counts.get(want, 0) + 1
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
