"""Data plane: packets/s, loss and one-way latency, ours beside the references and a C forwarder.

    .venv/bin/python -m bench.dataplane [--endpoints 1,1000] [--sizes 64,200,1400]
                                        [--packets 100000] [--rounds 9]
                                        [--latency-packets 20000] [--latency-load 0.2]
                                        [--latency-rate R] [--bind-all]
                                        [--trains N] [--ours-flags FLAGS ...]
                                        [--references NAME,NAME]

Full scale, for docs/performance.md: --endpoints 1,1000,1000000 with the other
defaults; well over half an hour on a quiet 2-core machine, most of it
allocating (and, for the references, binding) the million endpoints five times.

Why: issue 7 asks for a user-space data plane limited by the kernel, not by
Python: forwarded packets/s, loss and one-way latency p50/p99/p99.9 for a
bound endpoint with 1, 1 000 and 1 000 000 endpoints allocated, 64/200/1400-
byte packets, ours beside the reference from the same run, as a ratio; issue
14 adds the reference of today's clients. This measures, on loopback, these
forwarders side by side:
  (a) ours: `relayfleet relay` (memory store), its endpoints bound in protocol
      version 1 (the data plane is the same in both versions);
  (b) the reference Go server of tailscale.com v1.84.0, .dev/bin/refserver,
      bound in version 0 (scripts/build-go-helpers);
  (c) the reference of tailscale.com v1.102.5, .dev/bin/refserver-v1, bound in
      version 1, four ways (bench/processes.py REFERENCE_V1_VARIANTS): it reads
      and writes batches of 128, turns UDP GRO on, sends runs for one
      destination as one UDP GSO send, and opens min(16, GOMAXPROCS)
      SO_REUSEPORT sockets. So it runs with GOMAXPROCS=1 (one socket, one
      reading goroutine) or GOMAXPROCS=2 (two sockets: its default on a 2-CPU
      machine), each with GRO on (its default) and off
      (TS_DEBUG_DISABLE_UDP_GRO=1), always pinned to the same one CPU as the
      others;
  (d) a minimal C forwarder (recvmmsg/sendmmsg, batches of 64, source checked
      against the two client addresses it is given, bench/c/forwarder.c),
      compiled here with gcc into a temporary directory: the practical limit
      of user space without GRO/GSO; and the same with both offloads
      (bench/c/forwarder_gso.c: UDP GRO on receive, a train sent whole, and a
      batch's datagrams grouped by destination, a run of one size sent as one
      UDP GSO send, as v1.102.5 batches): the limit with them (issue 17:
      ours >= 0.8x).
For every (endpoints, size) it prints one row per forwarder: packets/s, loss,
how busy it was, packets per CPU-second, its CPU per packet in user space and
in the kernel (where a forwarder's own code ends and the kernel's begins),
ours / it for both (above 1: ours is faster; issue 7's targets are ours/C >=
0.9 and ours/reference >= 1.2), and its latency, beside that of a direct
loopback socket pair.

How, endpoints (per endpoint count, every forwarder is started and given its
endpoints first, one after the other; all of them then stay up until every size
is measured, and are stopped before the next count; while one is measured, the
others are held with SIGSTOP, so that none takes turns on the CPU they share):
  1. Start the forwarder pinned to one core (CPU 1); this script runs on CPU 0.
  2. Allocate N-1 extra endpoints through the HTTP API (POST /v0/relay/endpoint,
     8 keep-alive connections with 32 pipelined requests each, in chunks of
     5 000; key pairs from ~sqrt(2N) client keys, see bench/clients.py),
     then the measured one, and bind the measured one from the two measuring
     client sockets. Allocation time and rate, and the server's CPU time per
     extra endpoint, are printed.
     - ours: runs with --bind-lifetime 6h so the unbound allocations stay;
       16 extra endpoints are bound (from a pool of 256 client sockets),
       the rest stay allocated; /metrics must show all N before and after.
       With --bind-all every extra endpoint is bound, and ours then runs with
       its handshake rate limits raised to 1e9 (256 sockets bind them all).
     - references: their bind lifetime is fixed at 30 s (unbound allocations
       are collected within 30-60 s, less than 1M allocations take), so every
       extra endpoint is bound, chunk by chunk, right after allocation.
     Bound extras live 5 min after their clients' last packet (both servers'
     steady-state lifetime), so when 150 s have passed since they were bound
     or last refreshed (checked after each chunk of any forwarder, and before
     each round and latency run), one data packet from each client of every
     bound extra endpoint, and of the measured one, refreshes them. After the
     run a sample of the bound extras must still relay.
How, capacity (so that the Python load generator is not the bottleneck):
  3. Enlarge the forwarder's UDP receive buffers so a whole round fits in
     them: the script takes a duplicate of each of the forwarder's IPv4
     sockets on its port (pidfd_getfd, as root) and sets SO_RCVBUFFORCE, the
     same size for all (the references never set one, ours asks for 4 MiB).
     The two client sockets get large SO_RCVBUF/SO_SNDBUF the same way.
     Where the forwarder has several SO_REUSEPORT sockets, the kernel hashes
     each client's address to one of them: clients A and B are picked (one
     probe datagram each while the forwarder is stopped) so that they reach
     different sockets, and a round pre-loads half of its packets into each.
  4. Each round: SIGSTOP the forwarder, send `--packets` data packets into its
     receive queue (half from client A, half from client B, alternating), then
     SIGCONT it and poll (SO_MEMINFO) the clients' receive queues until all
     packets arrived (their truesize reaches that of the forwarder's queues),
     or the forwarder's queues are empty and nothing arrived for 20 ms (a GSO
     sender's segments have a smaller truesize), or no packet arrived for
     0.5 s, or 30 s passed. The clients do not read during the round; they
     drain and count afterwards.
     Rate = packets received / (last arrival - SIGCONT); loss = packets not
     received / packets sent (drops in the forwarder's queue included).
     The forwarder's CPU time over the round (schedstat, all its threads)
     gives busy = CPU time / drain time, and packets per CPU-second.
  Variants: --ours-flags runs ours once per value with those extra relay
  flags (e.g. "--udp-gso off --udp-gro off", before trains; "" as built),
  the first being the "ours" of the ratios; --references keeps only the
  named references (e.g. "ref v1.102.5,ref v1.102.5 GRO off").
  5. One warm-up round (a tenth of the packets) of each forwarder, then
     `--rounds` rounds taken in turn: round 1 of every forwarder, then round 2
     of every one, and so on, so that a minute when this machine runs slower
     (one forwarder's rounds here swing by 25-45%) falls on all of them, not
     on one. The median rate, its lowest and highest round, and the
     total loss are reported. From SETTLE_AT endpoints, one whole pass at the
     first size is run before the cells and not reported.
  The queues hold single datagrams, as a NIC without GRO, or loopback, hands
  them over; a GRO reader gets no trains to read whole from them (the
  v1.102.5 reference with GRO on reads few datagrams per call then: see its
  GRO-off rows). With --trains N (issue 17) each client instead sends trains
  of N datagrams (fewer where N would pass 65507 bytes: 46 of 1400 bytes),
  each one sendmsg with UDP_SEGMENT, as a NIC hands a GRO
  socket under load: a forwarder with UDP_GRO on finds them whole in its
  queue, one without gets them split into single datagrams by the kernel.
  Draining a full queue is the best case for a batched reader: this is the
  ceiling of each forwarder on one core, kernel work of sending included (the
  loopback delivery runs on the sender's core), not its latency. On a quiet
  machine busy is ~100% and packets/s equals packets per CPU-second. On a
  shared one, other work takes turns on CPU 1, and not always in equal
  shares (busy shows each forwarder's: the Go server's has been seen at 90%
  beside 20% for C and ours in the same minute); below ~90% the per
  CPU-second table is the fair comparison.
How, latency (after the capacity rounds of the same size):
  6. Client A sends `--latency-packets` packets to client B through the
     forwarder at a fixed rate on a fixed schedule (open loop: a late packet
     does not delay the next ones): `--latency-load` (default 20%) of the C
     forwarder's packets per CPU-second at that size and endpoint count, or
     `--latency-rate`. Each payload carries a sequence number and the send
     time (perf_counter_ns, i.e. CLOCK_MONOTONIC, read just before send());
     B's arrival time is read just after recv(). Sender and receiver are one
     busy-polling loop on CPU 0 (no sleeps, no wake-ups: the loop checks the
     send schedule and then tries a non-blocking recv), so a packet is picked
     up within one loop turn, a few microseconds; the forwarder has CPU 1.
  7. The first tenth of the packets is warm-up; p50/p99/p99.9 are over the
     rest. The same loop between two sockets connected directly (no
     forwarder) is the loopback baseline: the floor of this harness; a
     forwarder's own cost is its figure minus that one. Printed per run:
     "late", the share of sends more than one interval behind schedule (the
     load generator was held up), and how long the forwarder waited, ready
     to run, for a CPU (schedstat: another process had its core).
Bounded: packets x rounds and a latency count per forwarder and size, a
deadline per round; every process is stopped at the end, also on errors
(SIGCONT, SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.binder import Binder, client_of, refresh
from bench.c import build_program
from bench.clients import KeySet, allocate
from bench.processes import (
    BENCH_CPU,
    FORWARDER_CPU,
    RAISED_LIMIT,
    RAISED_LIMITS,
    REFERENCE_V0,
    REFERENCE_V1_VARIANTS,
    Forwarder,
    ours_command,
    pin,
    stop_all,
    stop_on_sigterm,
)
from bench.report import Progress, percentile, ratio, table
from bench.sockets import POOL_BUFFER, client_socket, drain, meminfo, segment_control
from relay.protocol import geneve
from relay.shells.transport import GSO_MAX_BYTES
from tests.support.waiting import wait_until_sync

ROUND_DEADLINE = 30.0
QUIET = 0.5
SETTLED = 0.02
ALLOCATION_CHUNK = 5_000
BIND_POOL = 256
OURS_BOUND_EXTRAS = 16
OURS_BIND_LIFETIME = "6h"
REFRESH_AFTER = 150.0
LIVENESS_SAMPLE = 1000
SPREAD_CANDIDATES = 64
LATENCY_TAIL = 0.2
_STAMP = struct.Struct("<Qq")  # sequence number, send time in ns
MIN_SIZE = geneve.HEADER_LEN + _STAMP.size

OURS, C, C_GSO, LOOPBACK_PAIR = "ours", "C", "C GRO/GSO", "loopback"


@dataclass
class Cell:
    """Every figure measured for one (endpoint count, packet size)."""

    capacity: dict[str, dict] = field(default_factory=dict)
    latency: dict[str, dict] = field(default_factory=dict)
    load: float = 0.0


# -- capacity ------------------------------------------------------------------


def one_round(
    forwarder: Forwarder, sockets, datagrams, packets: int, train: int = 0
) -> tuple[float, int, float, float, float]:
    """Pre-load ``packets`` while the forwarder is stopped (in GSO trains of ``train``
    datagrams, if not 0); (packets/s, received, CPU ns used, of them seconds in user
    space and in the kernel)."""
    a, b = sockets
    for sock in sockets:
        drain(sock)
    forwarder.pause()
    queue_drops = sum(meminfo(s)[1] for s in forwarder.sockets)
    if train:
        train = min(train, GSO_MAX_BYTES // len(datagrams[0]))
        control = segment_control(len(datagrams[0]))
        sends = [(a, [datagrams[0] * train]), (b, [datagrams[1] * train])]
        for i in range(packets // train):
            sock, buffers = sends[i & 1]
            sock.sendmsg(buffers, control)
    else:
        for i in range(packets):
            if i & 1:
                b.send(datagrams[1])
            else:
                a.send(datagrams[0])
    overflow = sum(meminfo(s)[1] for s in forwarder.sockets) - queue_drops
    # truesize of all queued packets: what the clients hold once all arrived, unless the
    # forwarder sent them as GSO trains (segments have a smaller truesize): then the round
    # ends when its queues are empty and nothing more arrived for SETTLED seconds. Queued
    # trains (--trains) have a truesize of their own: only that second rule ends the round
    target = sum(meminfo(s)[0] for s in forwarder.sockets)
    running_before = forwarder.scheduled_ns()[0]
    user_before, system_before = forwarder.user_system_seconds()
    started = time.perf_counter()
    forwarder.resume()
    last, last_change = -1, started
    while True:
        now = time.perf_counter()
        arrived = meminfo(a)[0] + meminfo(b)[0]
        if arrived != last:
            last, last_change = arrived, now
        quiet = now - last_change
        if (
            (arrived >= target and not train)
            or quiet > QUIET
            or (quiet > SETTLED and not any(meminfo(s)[0] for s in forwarder.sockets))
            or now - started > ROUND_DEADLINE
        ):
            break
        time.sleep(0.0001)
    running = forwarder.scheduled_ns()[0] - running_before
    user, system = forwarder.user_system_seconds()
    received = drain(a) + drain(b)
    if overflow:
        print(f"    note: {overflow} packets overflowed {forwarder.name}'s receive queue")
    elapsed = max(last_change - started, 1e-9)
    return received / elapsed, received, running, user - user_before, system - system_before


@dataclass
class Rounds:
    """One forwarder's capacity rounds at one size, as they are run."""

    rates: list[float] = field(default_factory=list)
    per_cpu: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    received: int = 0
    user: float = 0.0
    system: float = 0.0

    def add(self, rate: float, got: int, running: float, user: float, system: float) -> None:
        self.rates.append(rate)
        self.per_cpu.append(got / max(running, 1) * 1e9)
        self.busy.append(running / 1e9 * rate / max(got, 1))
        self.received += got
        self.user += user
        self.system += system

    def figures(self, sent: int) -> dict:
        """Median packets/s and packets per second of the forwarder's own CPU time
        (schedstat), how busy it was (CPU time / drain time: below ~90% something else
        had its core), the loss over all rounds of ``sent`` packets, and the µs of CPU
        per packet over all rounds, in user space and in the kernel (utime and stime:
        10 ms ticks, so only sums over rounds mean much)."""
        return {
            "rate": statistics.median(self.rates),
            "low": min(self.rates),
            "high": max(self.rates),
            "loss": 100.0 * (sent - self.received) / sent,
            "per_cpu": statistics.median(self.per_cpu),
            "busy": 100.0 * min(1.0, statistics.median(self.busy)),
            "user_us": 1e6 * self.user / max(self.received, 1),
            "system_us": 1e6 * self.system / max(self.received, 1),
        }


SETTLE_AT = 100_000
"""From this many endpoints, one capacity pass is run and thrown away before the first
cell. Right after a million were allocated, the first cell ran at a third to two thirds of the
next cell's rate for every forwarder that sends with UDP GSO, the C one with no endpoints
too: the kernel allocated new slab pages for GSO segments (docs/performance.md,
2026-12-06). The cell after it did not."""


def capacities(measured: list[Measured], payload: bytes, args) -> list[dict]:
    """Each forwarder's capacity figures with ``payload`` after the Geneve header: one
    warm-up round each, then ``--rounds`` rounds taken in turn (every forwarder's
    round r before any round r + 1), so that a minute when the machine runs slower
    falls on all of them alike."""
    datagrams = [(m.datagram(payload),) * 2 for m in measured]
    for m, pair in zip(measured, datagrams, strict=True):
        with alone(m):
            one_round(m.forwarder, m.sockets, pair, max(args.packets // 10, 1), args.trains)
    rounds = [Rounds() for _ in measured]
    for _ in range(args.rounds):
        for m, pair, taken in zip(measured, datagrams, rounds, strict=True):
            with alone(m):
                taken.add(*one_round(m.forwarder, m.sockets, pair, args.packets, args.trains))
    train = min(args.trains, GSO_MAX_BYTES // (geneve.HEADER_LEN + len(payload)))
    sent = (args.packets // train * train if train else args.packets) * args.rounds
    return [taken.figures(sent) for taken in rounds]


# -- latency -------------------------------------------------------------------


def one_way_latency(
    sender: socket.socket, receiver: socket.socket, datagram: bytes, rate: float, packets: int
) -> dict:
    """Send ``packets`` stamped ``datagram``s at ``rate``/s; delays at the receiver in µs."""
    buffer = bytearray(datagram)
    incoming = bytearray(65536)
    delays = array("q", [-1]) * packets
    interval = 1e9 / rate
    drain(receiver)
    receiver.setblocking(False)
    send, receive = sender.send, receiver.recv_into
    stamp, read = _STAMP.pack_into, _STAMP.unpack_from
    clock = time.perf_counter_ns
    offset = geneve.HEADER_LEN
    sent = received = late = 0
    start = due = clock()
    try:
        while sent < packets:
            now = clock()
            if now >= due:
                if now - due > interval:
                    late += 1
                stamp(buffer, offset, sent, now)
                send(buffer)
                sent += 1
                due = start + int(sent * interval)
            try:
                receive(incoming)
            except BlockingIOError:
                continue
            now = clock()
            number, then = read(incoming, offset)
            if number < packets and delays[number] < 0:
                delays[number] = now - then
                received += 1
        finished = clock()
        tail = finished + int(LATENCY_TAIL * 1e9)
        while received < packets and clock() < tail:
            try:
                receive(incoming)
            except BlockingIOError:
                continue
            now = clock()
            number, then = read(incoming, offset)
            if number < packets and delays[number] < 0:
                delays[number] = now - then
                received += 1
    finally:
        receiver.setblocking(True)
    measured = [d / 1000 for d in delays[packets // 10 :] if d >= 0]
    if not measured:
        raise RuntimeError("no latency sample arrived")
    return {
        "p50": percentile(measured, 0.5),
        "p99": percentile(measured, 0.99),
        "p999": percentile(measured, 0.999),
        "loss": 100.0 * (packets - received) / packets,
        "rate": sent / ((finished - start) / 1e9),
        "late": 100.0 * late / packets,
    }


def loopback_latency(size: int, rate: float, args) -> dict:
    """The harness's own floor: the same loop between two directly connected sockets."""
    a, b = client_socket(args.buffer), client_socket(args.buffer)
    try:
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        datagram = geneve.data_header(1) + bytes(size - geneve.HEADER_LEN)
        return one_way_latency(a, b, datagram, rate, args.latency_packets)
    finally:
        a.close()
        b.close()


@contextmanager
def alone(m: Measured) -> Iterator[None]:
    """``m`` running, kept alive, while the other forwarders stay stopped: one of them
    (v1.102.5 with a million endpoints, its garbage collector) would otherwise take
    turns on the CPU they share."""
    m.forwarder.resume()
    m.keep_alive()
    try:
        yield
    finally:
        m.forwarder.pause()


def measure_size(measured: list[Measured], size: int, cell: Cell, args) -> None:
    """Capacity (the forwarders' rounds in turn), then each one's latency, at one size,
    into ``cell``; the C forwarder, first, sets the latency load."""
    payload = b"x" * (size - geneve.HEADER_LEN)
    for m, figures in zip(measured, capacities(measured, payload, args), strict=True):
        cell.capacity[m.name] = figures
    for m in measured:
        if m.name == C:
            cell.load = args.latency_rate or args.latency_load * cell.capacity[C]["per_cpu"]
            cell.latency[LOOPBACK_PAIR] = loopback_latency(size, cell.load, args)
        forwarder = m.forwarder
        with alone(m):
            waited = forwarder.scheduled_ns()[1]
            delay = cell.latency[m.name] = one_way_latency(
                *m.sockets, m.datagram(payload), cell.load, args.latency_packets
            )
            delay["waited"] = (forwarder.scheduled_ns()[1] - waited) / 1e6
        figures = cell.capacity[m.name]
        print(
            f"    {m.name}, {size} bytes: {figures['rate']:,.0f} packets/s (busy "
            f"{figures['busy']:.0f}%, {figures['per_cpu']:,.0f} per CPU-second, rounds "
            f"{figures['low']:,.0f}-{figures['high']:,.0f}; CPU µs per packet "
            f"{figures['user_us']:.2f} user + {figures['system_us']:.2f} kernel), loss "
            f"{figures['loss']:.2f}%; latency "
            f"{delay['p50']:.0f}/{delay['p99']:.0f}/{delay['p999']:.0f} µs at "
            f"{delay['rate']:,.0f}/s (waited for a CPU {delay['waited']:.1f} ms, "
            f"{delay['late']:.1f}% sends late)"
        )


# -- the forwarders ------------------------------------------------------------


@dataclass
class Extras:
    """A relay's extra endpoints: how many, the VNIs of the bound ones per bind run, and the
    client sockets that bound them (their addresses are the clients' for as long as they live)."""

    count: int
    pool: list[socket.socket] = field(default_factory=list)
    bound_runs: list[array] = field(default_factory=list)
    refreshed_at: float = 0.0

    def close(self) -> None:
        for sock in self.pool:
            sock.close()

    @property
    def bound(self) -> int:
        return sum(len(run) for run in self.bound_runs)


def bind_run(
    forwarder: Forwarder, keys: KeySet, first: int, vnis, extras: Extras, protocol: int
) -> None:
    """Bind endpoints ``first``.. (VNIs ``vnis``) of ``keys`` from the pool; all must relay."""
    endpoints = list(zip(range(first, first + len(vnis)), vnis, strict=True))
    server, key = forwarder.udp, forwarder.server_key
    outcome = Binder(server, key, keys, endpoints, extras.pool, protocol).run()
    if outcome.done != len(endpoints):
        raise RuntimeError(
            f"{forwarder.name}: {len(endpoints) - outcome.done} of {len(endpoints)} "
            "extra endpoints did not bind"
        )
    extras.bound_runs.append(array("I", vnis))


def populate(
    forwarder: Forwarder,
    keys: KeySet,
    extras: Extras,
    bind_all: bool,
    protocol: int,
    keep_others_alive: Callable[[], None],
) -> None:
    """Allocate the extra endpoints (the first ``extras.count`` of ``keys``); bind all or a
    few. ``keep_others_alive`` runs after every chunk."""
    count = extras.count
    if not count:
        return
    extras.pool = [client_socket(POOL_BUFFER) for _ in range(BIND_POOL)]
    allocating = binding = 0.0
    allocating_cpu = 0
    began = progress = extras.refreshed_at = time.monotonic()
    for first in range(0, count, ALLOCATION_CHUNK):
        stop = min(count, first + ALLOCATION_CHUNK)
        cpu = forwarder.scheduled_ns()[0]
        started = time.monotonic()
        vnis = allocate(forwarder.api, keys.request_bodies(first, stop))
        allocating += time.monotonic() - started
        allocating_cpu += forwarder.scheduled_ns()[0] - cpu
        started = time.monotonic()
        if bind_all:
            bind_run(forwarder, keys, first, vnis, extras, protocol)
        elif first == 0:
            bind_run(forwarder, keys, 0, vnis[:OURS_BOUND_EXTRAS], extras, protocol)
        binding += time.monotonic() - started
        keep_alive(forwarder, extras)
        keep_others_alive()
        if time.monotonic() - progress > 30:
            progress = time.monotonic()
            print(f"    ... {stop:,} of {count:,} in {progress - began:.0f} s")
    print(
        f"  {forwarder.name}: {count:,} extra endpoints allocated in {allocating:.1f} s "
        f"({count / allocating:,.0f}/s; server CPU {allocating_cpu / count / 1000:,.0f} µs per "
        f"allocation), {extras.bound:,} of them bound in {binding:.1f} s "
        f"({extras.bound / max(binding, 1e-9):,.0f}/s)"
    )


def check_ours(forwarder: Forwarder, expected: int, when: str) -> None:
    metrics = forwarder.metrics()
    allocated = metrics['relayfleet_relay_endpoints{state="allocated"}']
    bound = metrics['relayfleet_relay_endpoints{state="bound"}']
    if allocated + bound != expected:
        raise RuntimeError(
            f"ours {when}: {allocated + bound:,.0f} endpoints served, expected {expected:,}"
        )
    print(f"  ours {when}: {allocated:,.0f} allocated + {bound:,.0f} bound endpoints (/metrics)")


def keep_alive(forwarder: Forwarder, extras: Extras) -> None:
    """Refresh bound extras whose 5-minute lifetime could end before the next size is done."""
    if not extras.bound or time.monotonic() - extras.refreshed_at < REFRESH_AFTER:
        return
    started = time.monotonic()
    sent = refresh(forwarder.udp, extras.pool, extras.bound_runs, forwarder.sockets)
    extras.refreshed_at = time.monotonic()
    print(f"  {forwarder.name}: {sent:,} refresh packets in {extras.refreshed_at - started:.1f} s")


def check_alive(forwarder: Forwarder, extras: Extras) -> None:
    """A data packet through a sample of the bound extras, the earliest included; all must come."""
    if not extras.bound:
        return
    pool = extras.pool
    for sock in pool:
        drain(sock)
    sample = []
    step = max(1, extras.bound // LIVENESS_SAMPLE)
    for run in extras.bound_runs:
        sample.extend((slot, run[slot]) for slot in range(0, len(run), step))
    for slot, vni in sample:
        datagram = geneve.data_header(vni) + b"alive?"
        pool[client_of(slot, 0, BIND_POOL)].sendto(datagram, forwarder.udp)
    time.sleep(0.5)
    arrived = 0
    for sock in pool:
        sock.setblocking(False)
        try:
            while True:
                arrived += sock.recv(4096).endswith(b"alive?")
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
    print(f"  {forwarder.name}: {arrived:,} of {len(sample):,} sampled extra endpoints still relay")
    if arrived < len(sample):
        print(f"  WARNING: {forwarder.name} lost extra endpoints during the run")


def _grown_queue(queues: list[socket.socket], before: list[int]) -> int:
    """1 + the index of the first of ``queues`` whose receive memory changed, 0 if none did."""
    for index, queue in enumerate(queues):
        if meminfo(queue)[0] != before[index]:
            return index + 1
    return 0


def spread_clients(forwarder: Forwarder, buffer: int) -> tuple[socket.socket, socket.socket]:
    """Clients A and B, on sockets whose datagrams reach different sockets of the forwarder.

    With SO_REUSEPORT the kernel hashes each source address to one of the
    forwarder's sockets; candidates send one probe each (not Geneve: dropped)
    while the forwarder is stopped, and the first two that land in different
    queues are kept. With one socket, any two clients do.
    """
    if len(forwarder.sockets) == 1:
        return client_socket(buffer), client_socket(buffer)
    chosen: dict[int, socket.socket] = {}
    forwarder.pause()
    try:
        for _ in range(SPREAD_CANDIDATES):
            sock = client_socket(buffer)
            before = [meminfo(queue)[0] for queue in forwarder.sockets]
            sock.sendto(b"probe", forwarder.udp)
            queue = wait_until_sync(
                partial(_grown_queue, forwarder.sockets, before),
                "a probe in the forwarder's queues",
                timeout=5,
                interval=0.001,
            )
            if queue in chosen:
                sock.close()
                continue
            chosen[queue] = sock
            if len(chosen) == 2:
                break
    finally:
        forwarder.resume()
    if len(chosen) < 2:
        raise RuntimeError(f"{forwarder.name}: {SPREAD_CANDIDATES} clients all hashed alike")
    a, b = chosen.values()
    print(f"    clients A and B reach different ones of its {len(forwarder.sockets)} sockets")
    return a, b


@dataclass
class Measured:
    """A forwarder set up for measuring: its measuring clients A and B, the VNI of the
    endpoint they bound (1 for a C forwarder), and its extra endpoints."""

    name: str
    forwarder: Forwarder
    sockets: tuple[socket.socket, socket.socket]
    vni: int
    extras: Extras
    expires: bool
    """Whether the measured endpoint expires: a relay's lives 5 minutes after its clients'
    last packet; a C forwarder has none."""
    refreshed_at: float = field(default_factory=time.monotonic)

    def datagram(self, payload: bytes) -> bytes:
        return geneve.data_header(self.vni) + payload

    def keep_alive(self) -> None:
        """Refresh the bound extras, and the measured endpoint, where their lifetime could
        end before the next size is done: the forwarders set up later may take longer
        than that."""
        keep_alive(self.forwarder, self.extras)
        if not self.expires or time.monotonic() - self.refreshed_at < REFRESH_AFTER:
            return
        for sock in self.sockets:
            sock.send(self.datagram(b"keep-alive"))
        for sock in self.sockets:
            sock.settimeout(5)
            try:
                sock.recv(65536)
            except TimeoutError:
                raise RuntimeError(f"{self.name}: the measured endpoint no longer relays") from None
            finally:
                sock.settimeout(None)
            drain(sock)
        self.refreshed_at = time.monotonic()

    def close(self) -> None:
        self.extras.close()
        for sock in self.sockets:
            sock.close()


def start_relay(
    name: str,
    command: list[str],
    count: int,
    args,
    started: list[Forwarder],
    protocol: int,
    earlier: list[Measured],
    env: dict[str, str] | None = None,
) -> Measured:
    """Start a relay and give it ``count`` endpoints bound in ``protocol``, the last one
    from clients A and B; the ``earlier`` forwarders' endpoints are kept alive meanwhile."""
    bind_all = not name.startswith(OURS) or args.bind_all
    extras = Extras(count - 1)
    sockets: tuple[socket.socket, ...] = ()
    try:
        forwarder = Forwarder.start(name, command, started, env)
        forwarder.take_sockets(args.buffer)
        sockets = spread_clients(forwarder, args.buffer)
        keys = KeySet(count)

        def keep_earlier_alive() -> None:
            for m in earlier:
                m.keep_alive()

        populate(forwarder, keys, extras, bind_all, protocol, keep_earlier_alive)
        vni = allocate(forwarder.api, keys.request_bodies(count - 1, count))[0]
        outcome = Binder(
            forwarder.udp, forwarder.server_key, keys, [(count - 1, vni)], sockets, protocol
        ).run(window=1, retry=0.5, timeout=10)
        if outcome.done != 1:
            raise RuntimeError(f"{name}: the measured endpoint does not relay")
        if name.startswith(OURS):
            check_ours(forwarder, count, "before")
        for sock in sockets:
            sock.connect(forwarder.udp)
    except BaseException:
        extras.close()
        for sock in sockets:
            sock.close()
        raise
    return Measured(name, forwarder, sockets, vni, extras, expires=True)


def start_c(name: str, binary: Path, args, started: list[Forwarder]) -> Measured:
    """Start a C forwarder between two new client sockets."""
    sockets = (client_socket(args.buffer), client_socket(args.buffer))
    try:
        ports = [str(s.getsockname()[1]) for s in sockets]
        forwarder = Forwarder.start(name, [str(binary), "0", *ports], started)
        forwarder.take_sockets(args.buffer)
        for sock in sockets:
            sock.connect(forwarder.udp)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Measured(name, forwarder, sockets, 1, Extras(0), expires=False)


def run_count(
    count: int,
    args,
    binaries: tuple[Path, Path],
    references: list,
    ours_flags: list[str],
    cells: dict[int, Cell],
    progress: Progress,
) -> None:
    """Start every forwarder with ``count`` endpoints (ours with ``ours_flags`` and each
    ``--ours-flags`` variant), measure them side by side at every size, check that ours
    and the references still serve all they were given, and stop them."""
    started: list[Forwarder] = []
    measured: list[Measured] = []
    try:
        print("  C recvmmsg/sendmmsg x64 (no endpoints)")
        measured.append(start_c(C, binaries[0], args, started))
        print("  C recvmmsg/sendmmsg x64 with UDP GRO and GSO (no endpoints)")
        measured.append(start_c(C_GSO, binaries[1], args, started))
        for variant in args.ours_flags:
            name = f"{OURS} {variant}" if variant else OURS
            flags = [*ours_flags, *variant.split()]
            print(f"  {name} (relayfleet relay), clients in protocol version 1")
            measured.append(
                start_relay(name, ours_command(*flags), count, args, started, 1, measured)
            )
        for reference in references:
            if reference.missing:
                print(f"  {reference.missing}")
                continue
            settings = " ".join(f"{k}={v}" for k, v in reference.env) or "as built"
            print(f"  {reference.name} ({settings})")
            measured.append(
                start_relay(
                    reference.name,
                    reference.command(),
                    count,
                    args,
                    started,
                    reference.protocol,
                    measured,
                    reference.environment(),
                )
            )
        for m in measured:
            m.forwarder.pause()
        if count >= SETTLE_AT:
            progress.note(f"settling: one capacity pass at {args.sizes[0]} B, not reported")
            capacities(measured, b"x" * (args.sizes[0] - geneve.HEADER_LEN), args)
        for size in args.sizes:
            progress.cell(f"{len(measured)} forwarders, {count:,} endpoint(s), {size} B")
            measure_size(measured, size, cells[size], args)
        for m in measured:
            m.forwarder.resume()
        for m in measured:
            if m.name.startswith(OURS):
                check_ours(m.forwarder, count, "after")
            check_alive(m.forwarder, m.extras)
    finally:
        stop_all(started)
        for m in measured:
            m.close()


# -- report --------------------------------------------------------------------


def print_results(results: dict[int, dict[int, Cell]], args) -> None:
    """One row per forwarder and cell: capacity, per CPU-second, ours / it, latency."""
    print()
    print(
        f"capacity: packets/s (median of {args.rounds} rounds), loss over all rounds, busy = "
        "forwarder CPU time / drain time; per CPU-s = packets / forwarder CPU time "
        "(schedstat), robust to other load on a shared machine; µs user+kernel = the "
        "forwarder's CPU per packet in user space and in the kernel (utime, stime); ours/it "
        "above 1: ours is faster"
    )
    print(
        "latency: one way A -> B in µs, p50 / p99 / p99.9, at a fixed offered load "
        + (
            f"of {args.latency_rate:,.0f} packets/s"
            if args.latency_rate
            else f"({args.latency_load:.0%} of the C forwarder's packets per CPU-second)"
        )
        + "; loopback = the same sockets without a forwarder"
    )
    rows = [
        [
            "endpoints", "bytes", "forwarder", "packets/s", "loss", "busy", "per CPU-s",
            "µs user+kernel", "ours/it", "ours/it per CPU-s", "latency at /s",
            "latency p50/p99/p99.9",
        ]
    ]  # fmt: skip
    for count, cells in results.items():
        for size, cell in cells.items():
            ours = cell.capacity.get(OURS) or cell.capacity.get(f"{OURS} {args.ours_flags[0]}")
            for name in [*cell.capacity, LOOPBACK_PAIR]:
                figures = cell.capacity.get(name)
                delay = cell.latency.get(name)
                row = [f"{count:,}", str(size), name]
                if figures:
                    row += [
                        f"{figures['rate']:,.0f}",
                        f"{figures['loss']:.2f}%",
                        f"{figures['busy']:.0f}%",
                        f"{figures['per_cpu']:,.0f}",
                        f"{figures['user_us']:.2f}+{figures['system_us']:.2f}",
                        ratio(ours and ours["rate"], figures["rate"]),
                        ratio(ours and ours["per_cpu"], figures["per_cpu"]),
                    ]
                else:
                    row += ["-"] * 7
                row.append(f"{cell.load:,.0f}")
                row.append(
                    f"{delay['p50']:.0f} / {delay['p99']:.0f} / {delay['p999']:.0f}"
                    if delay
                    else "-"
                )
                rows.append(row)
    table(rows, left=3)
    runs = [
        (d["late"], d["loss"], d.get("waited", 0.0), name, count, size)
        for count, cells in results.items()
        for size, cell in cells.items()
        for name, d in cell.latency.items()
    ]
    if not runs:
        return
    late = max(runs)
    waited = max(runs, key=lambda run: run[2])
    print(
        f"  most sends late: {late[0]:.2f}% ({late[3]}, {late[4]:,} endpoints, {late[5]} bytes); "
        f"most lost: {max(r[1] for r in runs):.2f}%; longest wait of a forwarder for its CPU: "
        f"{waited[2]:.1f} ms ({waited[3]}, {waited[4]:,} endpoints, {waited[5]} bytes)"
    )


def main(args: argparse.Namespace) -> None:
    pin(0, BENCH_CPU)
    # large enough for a whole round of queued packets at up to ~4 KiB truesize each
    args.buffer = min(max(args.packets * 4096, 16 << 20), 1 << 30)
    ours_flags = ["--bind-lifetime", OURS_BIND_LIFETIME]
    if args.bind_all:
        ours_flags += RAISED_LIMITS
    references = [REFERENCE_V0, *REFERENCE_V1_VARIANTS]
    if args.references is not None:
        references = [r for r in references if r.name in args.references]
    args.ours_flags = args.ours_flags or [""]
    print(
        f"data plane, loopback: sizes {', '.join(map(str, args.sizes))} bytes (Geneve header "
        f"included), {', '.join(f'{n:,}' for n in args.endpoints)} endpoint(s) allocated; "
        f"forwarder on CPU {FORWARDER_CPU}, load on CPU {BENCH_CPU}"
    )
    print(
        f"capacity: {args.packets:,} packets x {args.rounds} rounds; SIGSTOP the forwarder, "
        f"pre-load its receive queues ("
        + (f"GSO trains of {args.trains}" if args.trains else "single datagrams")
        + f"; SO_RCVBUFFORCE {args.buffer >> 20} MiB "
        "on every socket of every forwarder), SIGCONT, time until the clients got them all; "
        "median of the rounds"
    )
    print(
        f"latency: {args.latency_packets:,} packets A -> B on a fixed schedule, busy-polling "
        "sender and receiver in one loop on the load CPU; first tenth is warm-up"
    )
    print(
        f"endpoints: ours with {' '.join(ours_flags)}, bound in protocol version 1; "
        + (
            f"every extra endpoint bound (handshake limits raised to {RAISED_LIMIT}: "
            f"{BIND_POOL} sockets bind them all)"
            if args.bind_all
            else f"{OURS_BOUND_EXTRAS} extra endpoints bound, the others only allocated"
        )
        + "; references: every extra endpoint bound (their 30 s bind lifetime is fixed), "
        "v1.84.0 in version 0, v1.102.5 in version 1"
    )
    print(
        "references v1.102.5: GOMAXPROCS=1 (one SO_REUSEPORT socket) or 2 (two sockets, "
        "clients A and B hashed to different ones), UDP GRO on (its default) or off "
        "(TS_DEBUG_DISABLE_UDP_GRO=1); all on the one forwarder CPU"
    )
    results: dict[int, dict[int, Cell]] = {}
    forwarders = 2 + len(args.ours_flags) + sum(not r.missing for r in references)
    progress = Progress("bench.dataplane", len(args.endpoints) * len(args.sizes))
    with tempfile.TemporaryDirectory() as directory:
        binaries = build_program("forwarder", directory), build_program("forwarder_gso", directory)
        for count in args.endpoints:
            cells = results[count] = {size: Cell() for size in args.sizes}
            print(f"\n{count:,} endpoint(s) allocated, {forwarders} forwarders")
            run_count(count, args, binaries, references, ours_flags, cells, progress)
    print_results(results, args)


def _numbers(text: str) -> list[int]:
    try:
        values = [int(float(part.replace("_", ""))) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--endpoints",
        type=_numbers,
        default=[1, 1000],
        help="comma-separated endpoint counts, the measured endpoint included; each gets its "
        "own forwarder processes (default 1,1000; 1000000 works, allocation takes minutes)",
    )
    parser.add_argument(
        "--sizes",
        type=_numbers,
        default=[64, 200, 1400],
        help=f"comma-separated datagram sizes in bytes, Geneve header included, {MIN_SIZE}..2048 "
        "(default 64,200,1400)",
    )
    parser.add_argument(
        "--packets", type=int, default=100_000, help="packets per capacity round (default 100000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=9, help="capacity rounds after the warm-up (default 9)"
    )
    parser.add_argument(
        "--latency-packets",
        type=int,
        default=20_000,
        help="packets per latency run, the first tenth being warm-up (default 20000)",
    )
    parser.add_argument(
        "--latency-load",
        type=float,
        default=0.2,
        help="latency offered load as a fraction of the C forwarder's packets per CPU-second "
        "(its capacity with a core to itself) at the same size (default 0.2)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="latency offered load in packets/s, instead of --latency-load",
    )
    parser.add_argument(
        "--bind-all",
        action="store_true",
        help="bind every extra endpoint on ours too (its handshake limits are then raised); "
        "by default ours binds 16 and the others stay allocated",
    )
    parser.add_argument(
        "--trains",
        type=int,
        default=0,
        help="pre-load GSO trains of N datagrams (one sendmsg with UDP_SEGMENT each, "
        "2 <= N <= 64; fewer where N of the size pass 65507 bytes: 46 of 1400) instead of "
        "single datagrams (default 0: single)",
    )
    parser.add_argument(
        "--ours-flags",
        action="append",
        default=[],
        metavar="FLAGS",
        help='extra relay flags for ours, e.g. "--udp-gso off --udp-gro off"; repeat to '
        'run ours once per value ("" as built); the first is the "ours" of the ratios',
    )
    parser.add_argument(
        "--references",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        metavar="NAME,NAME",
        help="only these references, by name (ref v1.84.0, ref v1.102.5, "
        "ref v1.102.5 GRO off, ref v1.102.5 2 sockets, ref v1.102.5 2 sockets GRO off); "
        "default all",
    )
    options = parser.parse_args()
    if any(size < MIN_SIZE or size > 2048 for size in options.sizes):
        parser.error(f"--sizes must be between {MIN_SIZE} and 2048")
    if options.packets < 10 or options.rounds < 1 or min(options.endpoints) < 1:
        parser.error("--packets >= 10, --rounds >= 1, --endpoints >= 1")
    if options.trains and not 2 <= options.trains <= 64:
        parser.error("--trains: 2..64 datagrams")
    if options.latency_packets < 100 or not 0 < options.latency_load <= 1:
        parser.error("--latency-packets >= 100, 0 < --latency-load <= 1")
    stop_on_sigterm()
    main(options)
