"""Data plane on two CPUs: ours with --workers 1 and 2 beside the v1.102.5 reference.

    .venv/bin/python -m bench.workers [--sizes 200,1400] [--packets 200000] [--rounds 9]
                                      [--endpoints 8] [--quiet-wait 10]
                                      [--forwarders NAME,NAME] [--trains N]

Why: issue 17 asks, with both CPUs given to the relay while it drains, for
`relayfleet relay --workers 2` >= 1.7x the same relay with one worker, and
>= 1.2x the reference of today's clients (tailscale.com v1.102.5,
.dev/bin/refserver-v1) with GOMAXPROCS=2. bench/dataplane.py gives every
forwarder one CPU; this bench gives them both. It measures, on loopback:
  (a) ours 1 worker: `relayfleet relay --workers 1` (one process);
  (b) ours 2 workers: `relayfleet relay --workers 2`: the parent opens the UDP
      port's two sockets in one SO_REUSEPORT group whose BPF program steers
      each datagram to worker VNI % 2 (relay/shells/reuseport.py); the parent
      relays nothing. So one endpoint only ever uses one worker: the bench
      binds endpoints whose VNIs are spread evenly over the workers.
      Both of ours: one Redis store (one redis-server for the whole run, each
      relay under its own --name, as in a fleet), --report-status off,
      --fast-path off, UDP GSO and GRO as built;
  (c) the v1.102.5 reference (bench/processes.py REFERENCE_V1_VARIANTS) with
      GOMAXPROCS=1 (one socket, one reading goroutine) and GOMAXPROCS=2 (two
      SO_REUSEPORT sockets, its default on 2 CPUs), each with UDP GRO on (its
      default) and off (TS_DEBUG_DISABLE_UDP_GRO=1).
None is pinned: every process of a forwarder may run on every CPU this bench
may use (the bench, too, is not pinned).

How (every forwarder is set up first, steps 1-2, and then measured; between
its own rounds each is held stopped, SIGSTOP, so that none takes a CPU from
the one measured):
  1. Start the forwarder; allocate endpoints through its HTTP API
     (POST /v0/relay/endpoint) until `--endpoints` of them are spread evenly
     over its workers (one worker: any), and bind them in protocol version 1
     from two client sockets each (client A and client B of each endpoint).
  2. Give every socket of the forwarder on its port the same large receive
     queue (SO_RCVBUFFORCE on a pidfd_getfd duplicate; for ours with workers,
     the socket each worker holds), large enough for a whole round.
     The reference with two sockets: the kernel hashes each client's source
     address to one of them, so its clients are picked by probing (one
     non-Geneve datagram each while it is stopped, dropped by it later), half
     on each socket, clients A and B of every endpoint on different ones.
  3. Each round: first wait (up to `--quiet-wait` s) until the rest of the
     machine uses under 0.25 CPUs (/proc/stat over 0.25 s, the forwarder and
     this bench left out): on a shared machine another process that takes a
     CPU mid-drain leaves a 2-process forwarder one CPU. Then SIGSTOP every
     process of the forwarder (ours' parent and workers), send `--packets`
     data packets into its queues, the clients taking turns one packet each
     (e.g. 16 clients of 8 endpoints: A1 B1 A2 B2 ...), so that every socket
     and worker has a share of the round; while it is stopped the load
     generator competes with nothing. An equal share of the packets is sent
     from each CPU (the bench moving itself): the kernel frees a received
     buffer on the CPU that allocated it, and from one CPU every buffer
     would be freed there, costing the worker on that CPU a quarter more
     kernel time than the other (a NIC spreads them over its queues' CPUs).
     Then
     SIGCONT it and poll (SO_MEMINFO, every POLL = 10 ms) the clients'
     receive queues until all packets arrived (their truesize reaches that
     of the forwarder's queues), or the forwarder's queues are empty and
     nothing arrived for 20 ms (GSO sends' segments have a smaller
     truesize), or no packet arrived for 0.5 s, or 30 s passed. Rate =
     packets received / (last arrival - SIGCONT), the last arrival being
     the latest kernel receive time (SO_TIMESTAMPNS) of the clients' last
     datagrams: a round lasts until its slowest socket or worker is done.
     The polling only sees that a round is over, so it can be sparse: a
     forwarder on both CPUs shares them with it (every millisecond, it
     took 3-6% of a CPU from ours with two workers, none from one worker).
  4. At each size: one warm-up round (a tenth of the packets) of each
     forwarder, then `--rounds` rounds in turn: round r of every forwarder
     before round r + 1 of any. A round of one forwarder swings by tens of
     percent on this kind of machine from one minute to the next; taking
     turns puts a slow minute on all of them, instead of on whichever
     forwarder had it to itself. The median rate and the total loss over
     the rounds are reported.
  5. Ours: /metrics must show the endpoints bound and at least as many
     packets forwarded as the clients received; a worker that restarted
     (its log) fails the run. It also says how many of ours' sockets read
     with UDP GRO (--udp-gro auto turns it on only once trains come).
  Single datagrams in the queues (as loopback, or a NIC without GRO, hands
  them over), so the rows "GRO off" show the reference's batching of
  single datagrams; its GRO-on rows read few per call from such a queue
  (docs/performance.md, "Data plane"). With --trains N each client's turn
  is instead one GSO train of N datagrams (one sendmsg with UDP_SEGMENT), as
  a NIC with GRO hands them over under load (bench/dataplane.py --trains);
  ours turns UDP GRO on in its warm-up round (--udp-gro auto), the
  reference reads with GRO from the start (its GRO-off rows: segmented by
  the kernel on arrival). A queued train's truesize is not its datagrams',
  so such a round ends on the second or third rule above.

What it prints, per size and forwarder: packets/s (median of the rounds,
with the lowest and highest), loss, "CPUs" = the forwarder's CPU time (all
its processes and threads, schedstat, up to the end of the polling, a
little past the last arrival) / drain time (2.00: both CPUs busy all
along; it can read a hundredth or two above), each worker's busy share
(ours with workers: one near 0% sits idle), each socket's share of the
pre-loaded round, packets per CPU-second,
how long its processes were runnable without a CPU ("waited", in CPUs: a
worker that shared a CPU with the other, or with another process), the CPUs
everything else used meanwhile ("others": other processes, ksoftirqd), and
the load generator's own CPU share while polling; rounds that started with
others busy after all are counted. Then the ratios of issue 17: ours 2
workers / ours 1 worker (target 1.7), ours 2 workers / the
reference with GOMAXPROCS=2 at its better of GRO on and off (target 1.2),
and, for scale, the reference's own GOMAXPROCS=2 / GOMAXPROCS=1 (its best
each), and the machine's load average before and after.
Needs root (pidfd_getfd, SO_RCVBUFFORCE), redis-server, and
.dev/bin/refserver-v1 (scripts/build-go-helpers) for the reference's rows.
Bounded: packets x (rounds + a warm-up) per forwarder and size, a deadline per
round and `--quiet-wait` before it; every process it starts (relays and their
workers, references, redis-server) is stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.binder import Binder
from bench.clients import KeySet, allocate
from bench.dataplane import QUIET, ROUND_DEADLINE, SETTLED, _grown_queue, _numbers
from bench.processes import (
    GRO_OFF,
    PR_SET_PDEATHSIG,
    REFERENCE_V1_VARIANTS,
    Forwarder,
    Reference,
    machine_busy_seconds,
    ours_command,
    process_state,
    scheduled_ns,
    stop_all,
    stop_on_sigterm,
)
from bench.report import Progress, ratio, table
from bench.sockets import (
    client_socket,
    drain,
    drain_stamped,
    forwarder_sockets,
    meminfo,
    segment_control,
    set_buffers,
    stamp_arrivals,
)
from relay.protocol import geneve
from relay.shells.reuseport import worker_for_vni
from relay.shells.transport import GSO_MAX_BYTES
from tests.support.waiting import wait_until_sync

POLL = 0.01
"""Seconds between two looks at the queues while a forwarder drains, only to see that it is
over: the last arrival's time comes from the kernel (SO_TIMESTAMPNS). Polling every
millisecond took 3-6% of a CPU from a forwarder that used both (printed: "polling")."""
QUIET_SAMPLE = 0.25
"""Seconds over which the machine's other load is sampled before a round."""
QUIET_LOAD = 0.25
"""CPUs of other load below which a round starts at once."""
ALLOCATION_TRIES = 8
SPREAD_CANDIDATES = 32
"""Probe candidates per client wanted, for a reference with several sockets."""
SCALING_TARGET = 1.7
REFERENCE_TARGET = 1.2
OURS_1, OURS_2 = "ours 1 worker", "ours 2 workers"
WORKER_STARTED = re.compile(r"worker (\d+) of (\d+) started \(pid (\d+)\)")
WORKER_EXITED = re.compile(r"worker \d+ \(pid \d+\) exited with")
LOG_TAIL_LINES = 20


# -- pure helpers (tests/test_bench_workers.py) --------------------------------------------


def balanced_endpoints(vnis: Sequence[int], workers: int, count: int) -> list[int] | None:
    """Indexes into ``vnis`` of ``count`` endpoints, ``count / workers`` owned by each worker
    (:func:`worker_for_vni`), taking turns worker 0, 1, ..., 0, 1, ...; None while ``vnis``
    does not hold enough of some worker's."""
    if workers < 1 or count % workers:
        raise ValueError(f"{count} endpoints cannot be shared evenly by {workers} workers")
    owned: list[list[int]] = [[] for _ in range(workers)]
    for index, vni in enumerate(vnis):
        owned[worker_for_vni(vni, workers)].append(index)
    each = count // workers
    if any(len(indexes) < each for indexes in owned):
        return None
    return [owned[worker][turn] for turn in range(each) for worker in range(workers)]


def round_robin(buckets: Sequence[Sequence[object]], count: int) -> list[object]:
    """``count`` items taken from ``buckets`` in turn (one of bucket 0, one of bucket 1, ...);
    ValueError when one runs out first."""
    taken = []
    for turn in range(count):
        bucket = buckets[turn % len(buckets)]
        position = turn // len(buckets)
        if position >= len(bucket):
            raise ValueError(f"bucket {turn % len(buckets)} has only {len(bucket)} items")
        taken.append(bucket[position])
    return taken


def shares(amounts: Sequence[float]) -> str:
    """Each amount's share of their sum in percent, "50/50"; "-" if they sum to nothing."""
    total = sum(amounts)
    if not total:
        return "-"
    return "/".join(f"{100 * amount / total:.0f}" for amount in amounts)


def reference_label(reference: Reference) -> str:
    """``ref v1.102.5 GOMAXPROCS=N`` (+ `` GRO off``): what the variant is, by its settings."""
    env = dict(reference.env)
    label = f"ref v1.102.5 GOMAXPROCS={env.get('GOMAXPROCS', 'default')}"
    return label + (" GRO off" if GRO_OFF[0] in env else "")


def best_of(rates: dict[str, float], names: Sequence[str]) -> tuple[str, float] | None:
    """The fastest of ``names`` that has a rate in ``rates``: (name, rate), or None."""
    measured = [(rates[name], name) for name in names if rates.get(name)]
    if not measured:
        return None
    rate, name = max(measured)
    return name, rate


def verdict(value: float | None, target: float) -> str:
    """Whether ``value`` (a ratio) reaches ``target``: met, missed, or "-" if not measured."""
    if value is None:
        return "-"
    return "met" if value >= target else "missed"


def ratio_rows(results: dict[str, dict[int, dict]], sizes: Sequence[int]) -> list[list[str]]:
    """The ratios of issue 17 per size, from ``results[forwarder][size]["rate"]``: header first."""
    references = [reference_label(r) for r in REFERENCE_V1_VARIANTS]
    one = [name for name in references if "GOMAXPROCS=1" in name]
    two = [name for name in references if "GOMAXPROCS=2" in name]
    rows = [
        [
            "bytes", "2 workers / 1 worker", f"(>= {SCALING_TARGET})",
            "best ref GOMAXPROCS=2", "2 workers / it", f"(>= {REFERENCE_TARGET})",
            "ref GOMAXPROCS=2 / =1 (best each)",
        ]
    ]  # fmt: skip
    for size in sizes:
        rates = {name: cells[size]["rate"] for name, cells in results.items() if size in cells}
        ours_2 = rates.get(OURS_2)
        scaling = ours_2 / rates[OURS_1] if ours_2 and rates.get(OURS_1) else None
        best_two, best_one = best_of(rates, two), best_of(rates, one)
        against = ours_2 / best_two[1] if ours_2 and best_two else None
        rows.append(
            [
                str(size),
                ratio(ours_2, rates.get(OURS_1)),
                verdict(scaling, SCALING_TARGET),
                best_two[0].removeprefix("ref v1.102.5 ") if best_two else "-",
                ratio(ours_2, best_two and best_two[1]),
                verdict(against, REFERENCE_TARGET),
                ratio(best_two and best_two[1], best_one and best_one[1]),
            ]
        )
    return rows


# -- the forwarder's processes -------------------------------------------------------------


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(text) for text in path.read_text().split())
        except OSError:
            continue
    return found


def on_cpus(cpus: set[int]) -> Callable[[], None]:
    """For ``preexec_fn``: the child (and so its workers) may run on ``cpus``, and gets SIGTERM
    when the bench dies."""

    def child() -> None:
        os.sched_setaffinity(0, cpus)
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return child


@dataclass
class Group(Forwarder):
    """A forwarder that may be several processes: ours' parent and its workers (``workers``,
    by worker index, held as pidfds), or one process (a reference, ours with one worker)."""

    workers: list[int] = field(default_factory=list)
    pidfds: list[int] = field(default_factory=list)
    log: Path | None = None
    allocated: int = 0
    """endpoints allocated through its API (the bound ones included)"""
    bind_packets: int = 0
    """data packets the binder sent through it to check the binds"""

    @property
    def relaying(self) -> list[int]:
        """The processes that relay: the workers, or the process itself."""
        return self.workers or [self.process.pid]

    def _signal(self, sig: int) -> None:
        for pidfd in self.pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)

    def pause(self) -> None:
        """SIGSTOP to every process, and wait until the kernel shows each stopped (a worker
        that exited is the restart check's to report)."""
        super().pause()
        self._signal(signal.SIGSTOP)
        for pid in self.workers:
            wait_until_sync(
                lambda pid=pid: process_state(pid) in ("T", "gone"),
                f"{self.name} (worker pid {pid}) to stop",
                timeout=5,
                interval=0.001,
            )

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        super().resume()

    def scheduled_ns(self) -> tuple[int, int]:
        """(running, waiting) ns of every process and thread of the forwarder, parent included."""
        running = waiting = 0
        for pid in {self.process.pid, *self.relaying}:
            ran, waited = scheduled_ns(pid)
            running += ran
            waiting += waited
        return running, waiting

    def relaying_ns(self) -> list[int]:
        """ns on a CPU of each relaying process (all its threads)."""
        return [scheduled_ns(pid)[0] for pid in self.relaying]

    def take_sockets(self, buffer: int) -> None:
        """Duplicates of the port's sockets, with ``buffer``-byte queues: each worker's own
        (socket i is worker i's), or those of the single process."""
        port = self.ready["udp_port"]
        self.sockets = []
        for pid in self.relaying:
            found = forwarder_sockets(pid, port)
            if self.workers and len(found) != 1:
                raise RuntimeError(f"{self.name}: worker pid {pid} holds {len(found)} sockets")
            self.sockets += found
        for sock in self.sockets:
            set_buffers(sock, buffer)

    def log_tail(self) -> str:
        if self.log is None:
            return ""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def restarted_workers(self) -> list[str]:
        if self.log is None:
            return []
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if WORKER_EXITED.search(line)]

    def stop(self) -> None:
        """SIGCONT to the workers (a stopped worker would hold up the parent's shutdown), stop
        the parent (which stops its workers), then SIGKILL any worker still alive after 15 s."""
        self._signal(signal.SIGCONT)
        super().stop()
        for pidfd in self.pidfds:
            if not select.select([pidfd], [], [], 15)[0]:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        self.pidfds = []


def start_group(
    name: str,
    command: list[str],
    started: list[Forwarder],
    log: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Group:
    """Start ``command`` on every CPU this bench may use, its log in ``log``; wait for its JSON
    ready line and, with ``workers`` above 1, for its workers (from its log: their index and pid,
    checked against its children)."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env} if env else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=on_cpus(os.sched_getaffinity(0)),
        )
    group = Group(name, process, {}, log=log)
    started.append(group)
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"{name} did not start (exit {process.wait(10)}):\n{group.log_tail()}")
    group.ready = json.loads(line)
    if workers > 1:

        def all_started() -> dict[int, int] | None:
            text = log.read_text(errors="replace")
            found = {int(m[1]): int(m[3]) for m in WORKER_STARTED.finditer(text)}
            children = _children(process.pid)
            if len(found) == workers and set(found.values()) <= children:
                return found
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{group.log_tail()}")
            return None

        try:
            found = wait_until_sync(all_started, f"{name}'s {workers} workers", timeout=30)
        except TimeoutError:
            raise RuntimeError(
                f"{name}: not {workers} workers running (steering refused?):\n{group.log_tail()}"
            ) from None
        group.workers = [found[index] for index in range(workers)]
        group.pidfds = [os.pidfd_open(pid) for pid in group.workers]
    return group


# -- endpoints and clients -----------------------------------------------------------------


def spread_clients(forwarder: Group, buffer: int, count: int) -> list[socket.socket]:
    """``count`` client sockets, taking turns over the forwarder's sockets (as the kernel
    hashes their source addresses): client i reaches socket i mod (its sockets).

    Candidates send one probe each (not Geneve: dropped) while the forwarder is
    stopped; each is kept while its socket still needs clients. With one socket,
    any clients do.
    """
    queues = forwarder.sockets
    if len(queues) == 1 or forwarder.workers:
        return [client_socket(buffer) for _ in range(count)]
    need = -(-count // len(queues))
    buckets: list[list[socket.socket]] = [[] for _ in queues]
    forwarder.pause()
    try:
        for _ in range(SPREAD_CANDIDATES * count):
            sock = client_socket(buffer)
            before = [meminfo(queue)[0] for queue in queues]
            sock.sendto(b"probe", forwarder.udp)
            queue = wait_until_sync(
                partial(_grown_queue, queues, before),
                "a probe in the forwarder's queues",
                timeout=5,
                interval=0.001,
            )
            if len(buckets[queue - 1]) < need:
                buckets[queue - 1].append(sock)
            else:
                sock.close()
            if all(len(bucket) >= need for bucket in buckets):
                break
    finally:
        forwarder.resume()
    try:
        chosen = round_robin(buckets, count)
    except ValueError:
        for bucket in buckets:
            for sock in bucket:
                sock.close()
        raise RuntimeError(
            f"{forwarder.name}: {SPREAD_CANDIDATES * count} clients did not reach each of its "
            f"{len(queues)} sockets {need} times"
        ) from None
    for bucket in buckets:
        for sock in bucket:
            if sock not in chosen:
                sock.close()
    return chosen  # type: ignore[return-value]


def bind_endpoints(
    forwarder: Group, clients: list[socket.socket], count: int, workers: int
) -> list[int]:
    """Allocate until ``count`` endpoints are spread evenly over ``workers``, bind those from
    ``clients`` (endpoint e's clients A and B: 2e and 2e + 1); their VNIs in that order."""
    keys = KeySet(count * ALLOCATION_TRIES)
    vnis: list[int] = []
    chosen = None
    for _ in range(ALLOCATION_TRIES):
        vnis += allocate(forwarder.api, keys.request_bodies(len(vnis), len(vnis) + count))
        chosen = balanced_endpoints(vnis, workers, count)
        if chosen is not None:
            break
    if chosen is None:
        raise RuntimeError(f"{forwarder.name}: {len(vnis)} VNIs, not {count} spread evenly")
    endpoints = [(index, vnis[index]) for index in chosen]
    outcome = Binder(forwarder.udp, forwarder.server_key, keys, endpoints, clients, protocol=1).run(
        window=count, retry=0.5, timeout=20
    )
    if outcome.done != count:
        raise RuntimeError(f"{forwarder.name}: {count - outcome.done} of {count} did not bind")
    forwarder.allocated = len(vnis)
    forwarder.bind_packets = outcome.done + outcome.retries
    return [vni for _, vni in endpoints]


# -- capacity ------------------------------------------------------------------------------


@dataclass
class Round:
    rate: float
    received: int
    elapsed: float
    cpu: float
    """the forwarder's CPU seconds, all its processes"""
    relaying: list[float]
    """each relaying process's CPU seconds"""
    queued: list[int]
    """each forwarder socket's queue (bytes, truesize) once pre-loaded"""
    polling: float
    """the load generator's CPU seconds while the forwarder drained"""
    waited: float
    """seconds the forwarder's processes and threads were runnable but had no CPU"""
    others: float
    """CPU seconds of everything else on the machine while it drained (/proc/stat)"""
    window: float
    """seconds from SIGCONT to the end of the round (the drain and its quiet tail)"""
    others_before: float
    """CPUs of other load just before the round (its last sample)"""


def other_load(forwarder: Group, seconds: float) -> float:
    """CPUs used by everything but the forwarder and this bench over ``seconds`` (/proc/stat)."""
    machine, own, cpu = machine_busy_seconds(), time.process_time(), forwarder.scheduled_ns()[0]
    time.sleep(seconds)
    used = machine_busy_seconds() - machine
    used -= time.process_time() - own + (forwarder.scheduled_ns()[0] - cpu) / 1e9
    return max(0.0, used / seconds)


def wait_for_quiet(forwarder: Group, limit: float) -> float:
    """Until other load falls below QUIET_LOAD, for at most ``limit`` s; the last sample."""
    deadline = time.monotonic() + limit
    load = other_load(forwarder, QUIET_SAMPLE)
    while load >= QUIET_LOAD and time.monotonic() < deadline:
        load = other_load(forwarder, QUIET_SAMPLE)
    return load


def one_round(
    forwarder: Group,
    clients: list[socket.socket],
    datagrams: list[bytes],
    packets: int,
    quiet_wait: float = 0.0,
    train: int = 0,
) -> Round:
    """Pre-load ``packets`` (the clients taking turns; an equal share from each CPU this bench
    may use) while the forwarder is stopped, then time its drain; ``packets`` is a multiple of
    the clients' number (times ``train``). A turn is one datagram, or with ``train`` one GSO
    train of that many. First waits up to ``quiet_wait`` s for the rest of the machine to be
    nearly idle."""
    for sock in clients:
        drain(sock)
    others_before = wait_for_quiet(forwarder, quiet_wait) if quiet_wait else 0.0
    forwarder.pause()
    drops = sum(meminfo(s)[1] for s in forwarder.sockets)
    if train:
        control = segment_control(len(datagrams[0]))
        sends = [
            (lambda buffers, sock=sock: sock.sendmsg(buffers, control), [datagram * train])
            for sock, datagram in zip(clients, datagrams, strict=True)
        ]
    else:
        sends = [(sock.send, datagram) for sock, datagram in zip(clients, datagrams, strict=True)]
    cpus = sorted(os.sched_getaffinity(0))
    turns = packets // len(clients) // max(train, 1)
    try:
        for k, cpu in enumerate(cpus):
            os.sched_setaffinity(0, {cpu})
            for _ in range(turns * k // len(cpus), turns * (k + 1) // len(cpus)):
                for send, datagram in sends:
                    send(datagram)
    finally:
        os.sched_setaffinity(0, cpus)
    overflow = sum(meminfo(s)[1] for s in forwarder.sockets) - drops
    queued = [meminfo(s)[0] for s in forwarder.sockets]
    target = math.inf if train else sum(queued)
    (cpu_before, wait_before), relaying_before = forwarder.scheduled_ns(), forwarder.relaying_ns()
    own_before, machine_before = time.process_time(), machine_busy_seconds()
    resumed_ns = time.time_ns()
    started = time.perf_counter()
    forwarder.resume()
    last, last_change = -1, started
    while True:
        now = time.perf_counter()
        arrived = sum(meminfo(sock)[0] for sock in clients)
        if arrived != last:
            last, last_change = arrived, now
        quiet = now - last_change
        if (
            arrived >= target
            or quiet > QUIET
            or (quiet > SETTLED and not any(meminfo(s)[0] for s in forwarder.sockets))
            or now - started > ROUND_DEADLINE
        ):
            break
        time.sleep(POLL)
    window = time.perf_counter() - started
    machine = machine_busy_seconds() - machine_before
    polling = time.process_time() - own_before
    cpu_after, wait_after = forwarder.scheduled_ns()
    cpu, waited = cpu_after - cpu_before, wait_after - wait_before
    relaying = [
        (after - before) / 1e9
        for after, before in zip(forwarder.relaying_ns(), relaying_before, strict=True)
    ]
    drained = [drain_stamped(sock) for sock in clients]
    received = sum(count for count, _ in drained)
    if overflow:
        print(f"    note: {overflow} packets overflowed {forwarder.name}'s receive queues")
    elapsed = max((max(arrival for _, arrival in drained) - resumed_ns) / 1e9, 1e-9)
    others = max(0.0, machine - cpu / 1e9 - polling)
    return Round(
        received / elapsed, received, elapsed, cpu / 1e9, relaying, queued, polling,
        waited / 1e9, others, window, others_before,
    )  # fmt: skip


@dataclass
class Measured:
    """A forwarder set up for the rounds: its endpoints bound, its clients connected to it,
    held stopped (SIGSTOP) between its rounds."""

    forwarder: Group
    clients: list[socket.socket]
    vnis: list[int]
    received: int = 0
    """packets its clients received over every size's rounds, warm-ups included"""

    def datagrams(self, size: int) -> list[bytes]:
        """One data packet of ``size`` bytes per client, for its endpoint's VNI."""
        payload = b"x" * (size - geneve.HEADER_LEN)
        return [geneve.data_header(self.vnis[i // 2]) + payload for i in range(len(self.clients))]

    def round(self, size: int, packets: int, quiet_wait: float = 0.0, train: int = 0) -> Round:
        """One round of ``packets`` at ``size`` bytes (in GSO trains of ``train``, if not 0);
        stopped again once it is over."""
        datagrams = self.datagrams(size)
        done = one_round(self.forwarder, self.clients, datagrams, packets, quiet_wait, train)
        self.forwarder.pause()
        self.received += done.received
        return done


def measure_size(measured: Sequence[Measured], size: int, args, progress: Progress) -> list[dict]:
    """A warm-up round of each forwarder, then ``--rounds`` rounds in turn: round r of every
    forwarder before round r + 1 of any, so that a slow minute of the machine falls on all
    of them. Each forwarder's figures, in ``measured``'s order."""
    train = min(args.trains, GSO_MAX_BYTES // size)
    turn = 2 * args.endpoints * max(train, 1)
    packets = args.packets // turn * turn
    for m in measured:
        m.round(size, max(packets // 10 // turn * turn, turn), train=train)
    rounds: list[list[Round]] = [[] for _ in measured]
    for r in range(args.rounds):
        progress.cell(f"{size} B, round {r + 1} of {args.rounds}")
        for m, done in zip(measured, rounds, strict=True):
            done.append(m.round(size, packets, args.quiet_wait, train))
    return [summary(m.forwarder, done, packets) for m, done in zip(measured, rounds, strict=True)]


def summary(forwarder: Group, rounds: list[Round], packets: int) -> dict:
    """A forwarder's figures at one size from its rounds: medians and the total loss."""
    received = sum(r.received for r in rounds)
    sent = packets * len(rounds)
    per_process = [
        statistics.median(r.relaying[i] / r.elapsed for r in rounds)
        for i in range(len(forwarder.relaying))
    ]
    return {
        "rate": statistics.median(r.rate for r in rounds),
        "low": min(r.rate for r in rounds),
        "high": max(r.rate for r in rounds),
        "loss": 100.0 * (sent - received) / sent,
        "cpus": statistics.median(r.cpu / r.elapsed for r in rounds),
        "per_cpu": statistics.median(r.received / max(r.cpu, 1e-9) for r in rounds),
        "workers": per_process if forwarder.workers else [],
        "queues": [
            statistics.median(r.queued[i] for r in rounds) for i in range(len(rounds[0].queued))
        ],
        "polling": statistics.median(r.polling / r.elapsed for r in rounds),
        "waited": statistics.median(r.waited / r.elapsed for r in rounds),
        "others": statistics.median(r.others / r.window for r in rounds),
        "busy_starts": sum(r.others_before >= QUIET_LOAD for r in rounds),
    }


def describe(name: str, figures: dict) -> str:
    workers = " / ".join(f"{100 * busy:.0f}%" for busy in figures["workers"])
    return (
        f"  {name}: {figures['rate']:,.0f} packets/s "
        f"({figures['low']:,.0f}-{figures['high']:,.0f}), loss {figures['loss']:.2f}%, "
        f"CPUs {figures['cpus']:.2f}"
        + (f" (workers {workers})" if workers else "")
        + f", queues {shares(figures['queues'])}%, {figures['per_cpu']:,.0f} per CPU-second; "
        f"waited for a CPU {figures['waited']:.2f}, others {figures['others']:.2f} CPUs; "
        f"polling {100 * figures['polling']:.0f}% of a CPU"
        + (
            f"; {figures['busy_starts']} round(s) started with others busy"
            if figures["busy_starts"]
            else ""
        )
    )


def check_ours(forwarder: Group, endpoints: int, received: int) -> None:
    """/metrics (the workers' summed, scraped every second) against what the clients got; a
    worker that exited fails the run."""
    restarts = forwarder.restarted_workers()
    if restarts:
        raise RuntimeError(f"{forwarder.name}: a worker exited:\n" + "\n".join(restarts))
    if forwarder.workers:
        time.sleep(2.5)  # the parent's sums are at most a second old
    metrics = forwarder.metrics()
    bound = metrics['relayfleet_relay_endpoints{state="bound"}']
    allocated = metrics['relayfleet_relay_endpoints{state="allocated"}']
    forwarded = metrics["relayfleet_relay_forwarded_packets_total"]
    gro = metrics.get("relayfleet_relay_udp_gro_sockets", 0)
    drops = {
        name.split('"')[1]: value
        for name, value in metrics.items()
        if name.startswith("relayfleet_relay_dropped_packets_total") and value
    }
    print(
        f"  {forwarder.name} /metrics: {bound:,.0f} bound + {allocated:,.0f} allocated; "
        f"{forwarded:,.0f} forwarded, clients received {received:,} "
        f"(+ {forwarder.bind_packets} bind checks); drops {drops or 'none'}; "
        f"{gro:.0f} of its sockets read with UDP GRO"
    )
    if bound != endpoints or bound + allocated != forwarder.allocated:
        raise RuntimeError(
            f"{forwarder.name}: {bound:,.0f} bound, {bound + allocated:,.0f} served; expected "
            f"{endpoints} bound of {forwarder.allocated} allocated"
        )
    if forwarded < received:
        raise RuntimeError(f"{forwarder.name}: forwarded {forwarded:,.0f} < received {received:,}")


def set_up(
    name: str,
    command: list[str],
    args,
    started: list[Forwarder],
    directory: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Measured:
    """Start one forwarder, bind the endpoints, connect its clients, and stop it (SIGSTOP)
    until its first round."""
    log = directory / f"{name.replace(' ', '-')}.log"
    forwarder = start_group(name, command, started, log, workers, env)
    forwarder.take_sockets(args.buffer)
    clients = spread_clients(forwarder, args.buffer, 2 * args.endpoints)
    try:
        vnis = bind_endpoints(forwarder, clients, args.endpoints, workers)
        for sock in clients:
            sock.connect(forwarder.udp)
            stamp_arrivals(sock)
    except BaseException:
        for sock in clients:
            sock.close()
        raise
    owners = [worker_for_vni(vni, workers) for vni in vnis]
    print(
        f"  {name}: {args.endpoints} endpoints bound (VNIs {', '.join(map(str, vnis))}"
        + (f"; workers {', '.join(map(str, owners))}" if workers > 1 else "")
        + f"), {len(forwarder.sockets)} socket(s), {len(clients)} clients"
    )
    forwarder.pause()
    return Measured(forwarder, clients, vnis)


def print_logs(started: list[Forwarder]) -> None:
    for group in started:
        tail = group.log_tail() if isinstance(group, Group) else ""
        if tail:
            print(f"  {group.name}'s log ends:\n{tail}")


# -- report --------------------------------------------------------------------------------


def print_results(results: dict[str, dict[int, dict]], args) -> None:
    print()
    print(
        f"capacity: packets/s, median of {args.rounds} rounds (lowest-highest); CPUs = "
        "forwarder CPU time / drain time (2.00: both busy; counted until the polling ends, a "
        "little past the last arrival); workers = each worker's; queues = "
        "each socket's share of a pre-loaded round; per CPU-s = packets / forwarder CPU time; "
        "waited = its processes' time runnable without a CPU / drain time; others = CPUs used "
        "by everything else (other processes, ksoftirqd; /proc/stat) while it drained; "
        "polling = the load generator's CPU share while it drained"
    )
    rows = [
        [
            "bytes", "forwarder", "packets/s", "lowest-highest", "loss", "CPUs", "workers",
            "queues %", "per CPU-s", "waited", "others", "polling",
        ]
    ]  # fmt: skip
    for size in args.sizes:
        for name, cells in results.items():
            figures = cells.get(size)
            if figures is None:
                continue
            rows.append(
                [
                    str(size),
                    name,
                    f"{figures['rate']:,.0f}",
                    f"{figures['low']:,.0f}-{figures['high']:,.0f}",
                    f"{figures['loss']:.2f}%",
                    f"{figures['cpus']:.2f}",
                    " / ".join(f"{100 * b:.0f}%" for b in figures["workers"]) or "-",
                    shares(figures["queues"]),
                    f"{figures['per_cpu']:,.0f}",
                    f"{figures['waited']:.2f}",
                    f"{figures['others']:.2f}",
                    f"{100 * figures['polling']:.0f}%",
                ]
            )
    table(rows, left=2)
    print()
    print(
        f"issue 17: ours 2 workers >= {SCALING_TARGET}x ours 1 worker, and >= "
        f"{REFERENCE_TARGET}x the reference with GOMAXPROCS=2 (its better of GRO on and off)"
    )
    table(ratio_rows(results, args.sizes), left=1)


FORWARDERS = {
    "ours1": OURS_1,
    "ours2": OURS_2,
    "ref1": reference_label(REFERENCE_V1_VARIANTS[0]),
    "ref1-gro-off": reference_label(REFERENCE_V1_VARIANTS[1]),
    "ref2": reference_label(REFERENCE_V1_VARIANTS[2]),
    "ref2-gro-off": reference_label(REFERENCE_V1_VARIANTS[3]),
}


def main(args: argparse.Namespace) -> None:
    from tests.support.redis_server import RedisServer

    # large enough for a whole round of queued packets at up to ~4 KiB truesize each
    args.buffer = min(max(args.packets * 4096, 16 << 20), 1 << 30)
    cpus = sorted(os.sched_getaffinity(0))
    before = load_average()
    preload = f"GSO trains of {args.trains}" if args.trains else "single datagrams"
    print(
        f"data plane on {len(cpus)} CPUs ({', '.join(map(str, cpus))}), loopback: sizes "
        f"{', '.join(map(str, args.sizes))} bytes (Geneve header included); load average "
        f"before: {before}"
    )
    print(
        f"capacity: {args.packets:,} packets x {args.rounds} rounds (+ a warm-up of a tenth); "
        f"{args.endpoints} bound endpoints, {2 * args.endpoints} clients taking turns; SIGSTOP "
        f"every process of the forwarder, pre-load its queues ({preload}; SO_RCVBUFFORCE "
        f"{args.buffer >> 20} MiB on each of its sockets), SIGCONT, time until the clients got "
        "them all; no process pinned"
    )
    print(
        "ours: relayfleet relay --workers 1 or 2, one Redis store (each relay named), "
        "--report-status off, --fast-path off, UDP GSO/GRO as built, bound in protocol "
        "version 1; reference v1.102.5: GOMAXPROCS=1 (one socket) or 2 (two SO_REUSEPORT "
        "sockets, clients spread over them), UDP GRO on (its default) or off"
    )
    runs: list[tuple[str, list[str], int, dict[str, str] | None]] = []
    started: list[Forwarder] = []
    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as temporary:
        directory = Path(temporary)
        redis_directory = directory / "redis"
        redis_directory.mkdir()
        redis = None
        try:
            if {OURS_1, OURS_2} & set(args.forwarders):
                redis = RedisServer(redis_directory)
                redis.start()
                for name, count in ((OURS_1, 1), (OURS_2, 2)):
                    if name in args.forwarders:
                        flags = (
                            "--store", redis.url(), "--report-status", "off",
                            "--fast-path", "off", "--workers", str(count),
                            "--name", name.replace(" ", "-"),
                            "--bind-lifetime", "6h", "--log-level", "info",
                        )  # fmt: skip
                        runs.append((name, ours_command(*flags), count, None))
            for reference in REFERENCE_V1_VARIANTS:
                label = reference_label(reference)
                if label not in args.forwarders:
                    continue
                if reference.missing:
                    print(f"  {label}: {reference.missing}")
                    continue
                runs.append((label, reference.command(), 1, reference.environment()))
            progress = Progress("bench.workers", len(runs) + len(args.sizes) * args.rounds)
            measured: list[Measured] = []
            try:
                for name, command, count, env in runs:
                    progress.cell(f"setting up {name} (load average {load_average()})")
                    measured.append(set_up(name, command, args, started, directory, count, env))
                for size in args.sizes:
                    print(f"\n{size} bytes (load average {load_average()}):")
                    for m, figures in zip(
                        measured, measure_size(measured, size, args, progress), strict=True
                    ):
                        results.setdefault(m.forwarder.name, {})[size] = figures
                        print(describe(m.forwarder.name, figures))
                print()
                for m in measured:
                    if m.forwarder.name.startswith("ours"):
                        m.forwarder.resume()
                        check_ours(m.forwarder, args.endpoints, m.received)
            except BaseException:
                print_logs(started)
                raise
            finally:
                for m in measured:
                    for sock in m.clients:
                        sock.close()
        finally:
            stop_all(started)
            if redis is not None:
                redis.stop()
    print_results(results, args)
    print(f"\nload average before: {before}; after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=_numbers,
        default=[200, 1400],
        help="comma-separated datagram sizes in bytes, Geneve header included, "
        f"{geneve.HEADER_LEN + 8}..2048 (default 200,1400)",
    )
    parser.add_argument(
        "--packets",
        type=int,
        default=200_000,
        help="packets per round, all clients together (rounded down to a multiple of their "
        "number; default 200000)",
    )
    parser.add_argument(
        "--rounds", type=int, default=9, help="rounds after the warm-up (default 9)"
    )
    parser.add_argument(
        "--endpoints",
        type=int,
        default=8,
        help="bound endpoints measured at once, an even number (both workers own half), two "
        "clients each (default 8)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help=f"before each round, wait up to this many seconds until other processes use "
        f"less than {QUIET_LOAD} CPUs (sampled over {QUIET_SAMPLE} s); 0: do not wait "
        "(default 10)",
    )
    parser.add_argument(
        "--forwarders",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(FORWARDERS),
        metavar="NAME,NAME",
        help=f"only these, by short name: {', '.join(FORWARDERS)} (default all)",
    )
    parser.add_argument(
        "--trains",
        type=int,
        default=0,
        metavar="N",
        help="pre-load GSO trains of N datagrams, 2..64 (one sendmsg with UDP_SEGMENT per "
        "client's turn, at most 64 KiB each), not single datagrams (default 0: single)",
    )
    options = parser.parse_args()
    if any(size < geneve.HEADER_LEN + 8 or size > 2048 for size in options.sizes):
        parser.error(f"--sizes must be between {geneve.HEADER_LEN + 8} and 2048")
    if options.endpoints < 2 or options.endpoints % 2:
        parser.error("--endpoints: an even number, at least 2")
    if options.packets < 20 * options.endpoints or options.rounds < 1:
        parser.error("--packets >= 20 x --endpoints, --rounds >= 1")
    if options.trains and not 2 <= options.trains <= 64:
        parser.error("--trains: 2..64 datagrams")
    unknown = [name for name in options.forwarders if name not in FORWARDERS]
    if unknown:
        parser.error(f"--forwarders: unknown {', '.join(unknown)}; known: {', '.join(FORWARDERS)}")
    options.forwarders = [FORWARDERS[name] for name in options.forwarders]
    stop_on_sigterm()
    main(options)
