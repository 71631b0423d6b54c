"""Handshakes per second, and the data plane during a flood of binds: ours beside the references.

    .venv/bin/python -m bench.handshakes [--part all|handshakes|flood]
                                         [--endpoints 2000] [--sockets 256] [--window 256]
                                         [--data-rate 20000] [--duration 5]
                                         [--flood-rates 50000,0] [--flood-sockets 64]

Full scale, for docs/performance.md: the defaults; about a minute.

Why: issue 7 asks for handshakes per second and for the data-plane rate during
a flood of control packets, ours beside the reference Go server from the same
run; issue 14 adds the reference of today's clients. The references
(scripts/build-go-helpers, bench/processes.py REFERENCES) are tailscale.com
v1.84.0 (.dev/bin/refserver), bound in protocol version 0, and v1.102.5
(.dev/bin/refserver-v1), bound in version 1, with GOMAXPROCS=1 (one socket)
and UDP GRO on (its default) and off. Ours is bound in version 0 ("ours
(default limits)", "ours (limits raised)") and in version 1 as today's clients
bind ("ours, v1 clients"); ratios are printed against every reference. Every
handshake message costs the relay public-key crypto (version 1 adds a MAC),
and the design says control packets must not starve data; ours limits
handshake messages per source and in total (relay/protocol/ratelimit.py), the
references have no limit.

Both parts run on loopback with the server pinned to CPU 1 and this script
(and the flooder) on CPU 0, and give each server's UDP socket the same 4 MiB
receive buffer (SO_RCVBUFFORCE through a pidfd_getfd duplicate; the
reference never sets one, ours asks for 4 MiB), so that neither loses
packets to a smaller queue. From schedstat, summed over the server's threads:
busy = its CPU time / wall time, waited = time it was ready to run but had
no CPU / wall time (other processes on its core; above 100% when several
threads waited). Figures per CPU-second divide by the server's CPU time and
so hold up when other work shares the machine.

Part 1, handshakes per second (--part handshakes), for ours with its default
limits, ours with its limits raised to 1e9, ours with version 1 clients (with
either limits), and the references:
  1. allocate 100 warm-up endpoints and --endpoints measured ones through the
     HTTP API (pipelined keep-alive connections, bench/clients.py), and
     bind the warm-up ones;
  2. seal every bind datagram in advance, then complete both clients' 3-way
     handshakes (bind -> challenge -> answer) of all measured endpoints with
     at most --window endpoints in flight, client i of endpoint e on socket
     (2e + i) mod --sockets of a pool, so that each source sends a few
     messages only and per-source limits do not bind;
  3. an endpoint is complete when a data packet its first client sends after
     both answers comes out at its second client (relayed only once both
     answers were taken: it is queued behind them); an endpoint not complete
     after --retry seconds gets its binds (and data packet) again.
  Handshakes/s = 2 x endpoints / (last relayed data packet - first bind);
  the ratios are ours / each reference. For ours, /metrics tells how many
  messages the rate limits dropped (its total bucket starts full, 10 000
  messages, so a short run may never meet it). Client busy near 100% would
  mean the client, not the server, set the pace.

Part 2, data during a flood (--part flood), for ours (default limits; binds in
version 0, then in version 1) and the references (binds in their version):
  1. bind one endpoint between clients A and B (in the run's version); A sends
     data packets to B through the server at --data-rate on a fixed schedule
     for --duration seconds, B counts what arrives (until 0.3 s after the
     last send);
  2. the same again, once per --flood-rates, while a separate process
     (forked, on CPU 0 at nice 10, so that the data sender keeps its
     schedule) floods the server with binds at that rate (0: as fast as it
     can) from --flood-sockets sockets. Each flood socket owns one endpoint
     allocated just before its run and sends, alternately, a valid bind of
     that endpoint's first client (the server opens it and seals a challenge
     every time, as the protocol says for a repeated bind from the same
     address) and a forged bind: the second client's real public key with a
     box of random bytes (the server must try to open it); the flooder never
     reads the challenges;
  3. relayed/s = packets B got / --duration; flood/quiet = relayed/s with
     the flood / without (1.00: the flood did not slow data down). For ours,
     /metrics tells what it dropped during the run, by reason: flood messages
     the limits dropped before any crypto (rate_limited), forged boxes it
     tried (undecryptable), and any other reason that counted.
Bounded: --endpoints handshakes per server and a --timeout; --duration per
data run; the flooder stops with its run (after --duration + 10 s at most).
Every process is stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from bench.binder import Binder, bind_datagram, forged_bind
from bench.clients import KeySet, allocate
from bench.processes import (
    BENCH_CPU,
    FORWARDER_CPU,
    RAISED_LIMIT,
    RAISED_LIMITS,
    REFERENCE_V0,
    REFERENCE_V1,
    REFERENCE_V1_GRO_OFF,
    Forwarder,
    Reference,
    ours_command,
    pin,
    stop_all,
    stop_on_sigterm,
)
from bench.report import Progress, ratio, table
from bench.sockets import POOL_BUFFER, client_socket, drain
from relay.protocol import geneve

SERVER_BUFFER = 4 << 20
WARMUP = 100
FLOOD_NICE = 10
FLOOD_GRACE = 10.0
DATA_TAIL = 0.3
DATA_PAYLOAD = 192
METRIC_DROPS = 'relayfleet_relay_dropped_packets_total{reason="'
OURS_DEFAULT, OURS_RAISED = "ours (default limits)", "ours (limits raised)"
OURS_V1, OURS_V1_RAISED = "ours, v1 clients", "ours, v1 clients (limits raised)"
REFERENCES = (REFERENCE_V0, REFERENCE_V1, REFERENCE_V1_GRO_OFF)


@dataclass(frozen=True)
class Server:
    """A server of one run: its name in the tables, how to start it, its clients' version."""

    name: str
    command: list[str]
    protocol: int
    env: dict[str, str] | None = None

    @property
    def ours(self) -> bool:
        return self.name.startswith("ours")


def servers(ours: list[Server]) -> list[Server]:
    """``ours``, then every reference whose binary is built (the others are named as missing)."""
    found = list(ours)
    for reference in REFERENCES:
        if reference.missing:
            print(f"  {reference.missing}")
        else:
            found.append(reference_server(reference))
    return found


def reference_server(reference: Reference) -> Server:
    return Server(reference.name, reference.command(), reference.protocol, reference.environment())


def drops(forwarder: Forwarder) -> dict[str, float]:
    """Ours' dropped datagrams so far, by reason (/metrics)."""
    return {
        name.removeprefix(METRIC_DROPS).removesuffix('"}'): value
        for name, value in forwarder.metrics().items()
        if name.startswith(METRIC_DROPS)
    }


# -- part 1: handshakes per second ---------------------------------------------


def handshake_rate(server: Server, args, started: list[Forwarder]) -> dict:
    """Bind --endpoints endpoints as fast as the server takes them; the figures of the run."""
    name = server.name
    forwarder = Forwarder.start(name, server.command, started, server.env)
    forwarder.take_sockets(SERVER_BUFFER)
    pool = [client_socket(POOL_BUFFER) for _ in range(args.sockets)]
    try:
        keys = KeySet(WARMUP + args.endpoints)
        vnis = allocate(forwarder.api, keys.request_bodies(0, WARMUP + args.endpoints))
        endpoints = list(zip(range(len(vnis)), vnis, strict=True))
        udp, key, protocol = forwarder.udp, forwarder.server_key, server.protocol
        warmup = Binder(udp, key, keys, endpoints[:WARMUP], pool, protocol).run()
        if warmup.done != WARMUP:
            raise RuntimeError(f"{name}: {WARMUP - warmup.done} warm-up endpoints did not bind")
        binder = Binder(udp, key, keys, endpoints[WARMUP:], pool, protocol)
        ours = server.ours
        before = drops(forwarder) if ours else {}
        scheduled = forwarder.scheduled_ns()
        outcome = binder.run(window=args.window, retry=args.retry, timeout=args.timeout)
        after = forwarder.scheduled_ns()
        running, waited = after[0] - scheduled[0], after[1] - scheduled[1]
        limited = (
            drops(forwarder).get("rate_limited", 0) - before.get("rate_limited", 0)
            if ours
            else None
        )
    finally:
        for sock in pool:
            sock.close()
        stop_all(started)
    handshakes = 2 * outcome.done
    elapsed = max(outcome.elapsed, 1e-9)
    return {
        "done": outcome.done,
        "rate": handshakes / elapsed,
        "per_cpu": handshakes / max(running, 1) * 1e9,
        "elapsed": elapsed,
        "retries": outcome.retries,
        "server_busy": 100 * running / 1e9 / elapsed,
        "server_waited": 100 * waited / 1e9 / elapsed,
        "client_busy": 100 * outcome.client_cpu / elapsed,
        "limited": limited,
    }


def part_handshakes(args, started: list[Forwarder]) -> None:
    print(
        f"handshakes: {args.endpoints:,} endpoints x 2 clients, bind -> challenge -> answer, "
        f"at most {args.window} endpoints in flight, {args.sockets} client sockets, retry after "
        f"{args.retry} s; done = a data packet relayed after both answers"
    )
    runs = servers(
        [
            Server(OURS_DEFAULT, ours_command(), 0),
            Server(OURS_RAISED, ours_command(*RAISED_LIMITS), 0),
            Server(OURS_V1, ours_command(), 1),
            Server(OURS_V1_RAISED, ours_command(*RAISED_LIMITS), 1),
        ]
    )
    progress = Progress("bench.handshakes", len(runs))
    results = {}
    for server in runs:
        progress.cell(f"handshakes/s of {server.name}, {args.endpoints:,} endpoints")
        results[server.name] = (server, handshake_rate(server, args, started))
    rows = [
        [
            "server", "version", "handshakes/s", "per CPU-s", "done", "seconds", "retries",
            "server busy", "waited", "client busy", "rate-limited",
        ]
    ]  # fmt: skip
    for name, (server, r) in results.items():
        rows.append(
            [
                name,
                str(server.protocol),
                f"{r['rate']:,.0f}",
                f"{r['per_cpu']:,.0f}",
                f"{r['done']:,}/{args.endpoints:,}",
                f"{r['elapsed']:.2f}",
                f"{r['retries']:,}",
                f"{r['server_busy']:.0f}%",
                f"{r['server_waited']:.0f}%",
                f"{r['client_busy']:.0f}%",
                "-" if r["limited"] is None else f"{r['limited']:,.0f}",
            ]
        )
    table(rows, left=1)
    references = [(name, r) for name, (server, r) in results.items() if not server.ours]
    for name, (server, ours) in results.items():
        for reference, theirs in references if server.ours else ():
            print(
                f"  {name} / {reference}: {ratio(ours['rate'], theirs['rate'])} "
                f"handshakes/s, {ratio(ours['per_cpu'], theirs['per_cpu'])} per CPU-second"
            )
    print(
        f"  (version: the clients' protocol version; ours' default limits: per source 50/s, "
        f"burst 200; total 10 000/s; raised: all {RAISED_LIMIT}. rate-limited = handshake "
        "messages ours dropped for them)"
    )


# -- part 2: data during a flood -------------------------------------------------


def offered_load(
    forwarder: Forwarder, a: socket.socket, b: socket.socket, datagram: bytes, args
) -> dict:
    """A sends ``datagram`` at --data-rate for --duration s on a fixed schedule; B counts."""
    total = int(args.data_rate * args.duration)
    drain(b)
    sent = received = 0
    scheduled = forwarder.scheduled_ns()
    start = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * args.data_rate) + 1)
        while sent < due:
            a.send(datagram)
            sent += 1
        received += drain(b)
        time.sleep(0.0002)
    sending = time.perf_counter() - start
    tail = time.perf_counter() + DATA_TAIL
    while received < sent and time.perf_counter() < tail:
        received += drain(b)
        time.sleep(0.001)
    after = forwarder.scheduled_ns()
    return {
        "sent_rate": sent / sending,
        "relayed": received / args.duration,
        "loss": 100.0 * (sent - received) / sent,
        "busy": 100 * (after[0] - scheduled[0]) / 1e9 / sending,
        "waited": 100 * (after[1] - scheduled[1]) / 1e9 / sending,
    }


def flood(
    server: tuple[str, int], datagrams: list[bytes], rate: float, limit: float, control: Connection
) -> None:
    """The flooder process: send ``datagrams`` round robin from one socket per pair until told."""
    pin(0, BENCH_CPU)
    os.nice(FLOOD_NICE)
    sockets = []
    for _ in range(len(datagrams) // 2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sockets.append(sock)
    plan = [(sockets[i // 2], datagram) for i, datagram in enumerate(datagrams)]
    control.send("ready")
    sent = refused = 0
    start = time.perf_counter()
    while not control.poll():
        elapsed = time.perf_counter() - start
        if elapsed > limit:
            break
        due = int(elapsed * rate) + 1 if rate else sent + 256
        while sent < due:
            sock, datagram = plan[sent % len(plan)]
            try:
                sock.sendto(datagram, server)
            except BlockingIOError:
                refused += 1
            sent += 1
        if rate:
            time.sleep(0.0002)
    control.send((sent - refused, time.perf_counter() - start))


def flood_run(
    forwarder: Forwarder, server: Server, keys: KeySet, first: int, rate: float, sockets, args
) -> dict:
    """Offered load on the bound pair while a flooder sends binds at ``rate`` (0: full speed).

    The flooder's endpoints are ``first`` .. ``first`` + --flood-sockets - 1 of ``keys``,
    allocated here, just before it starts; its binds are in ``server``'s clients' version.
    """
    a, b, datagram = sockets
    flood_vnis = allocate(forwarder.api, keys.request_bodies(first, first + args.flood_sockets))
    datagrams = []
    for index, vni in enumerate(flood_vnis, start=first):
        one, other = keys.pair(index)
        names = (other, one) if server.protocol else (None, None)
        datagrams.append(bind_datagram(keys, one, vni, forwarder.server_key, names[0]))
        datagrams.append(forged_bind(keys, other, vni, names[1]))
    ours = server.ours
    before = drops(forwarder) if ours else {}
    control, child = multiprocessing.Pipe()
    flooder = multiprocessing.get_context("fork").Process(
        target=flood,
        args=(forwarder.udp, datagrams, rate, args.duration + FLOOD_GRACE, child),
        daemon=True,
    )
    flooder.start()
    try:
        if not control.poll(10) or control.recv() != "ready":
            raise RuntimeError("the flooder did not start")
        figures = offered_load(forwarder, a, b, datagram, args)
        control.send("stop")
        flood_sent, flood_seconds = control.recv() if control.poll(10) else (0, 1.0)
        flooder.join(10)
    finally:
        if flooder.is_alive():
            flooder.kill()
            flooder.join()
    after = drops(forwarder) if ours else {}
    figures["flood_rate"] = flood_sent / flood_seconds
    figures["dropped"] = {
        reason: value - before.get(reason, 0)
        for reason, value in after.items()
        if value > before.get(reason, 0)
    }
    return figures


def flood_effect(server: Server, args, started: list[Forwarder]) -> dict:
    """Relayed packets/s of one bound pair without a flood, then with each --flood-rates."""
    name = server.name
    forwarder = Forwarder.start(name, server.command, started, server.env)
    forwarder.take_sockets(SERVER_BUFFER)
    a, b = client_socket(), client_socket()
    try:
        keys = KeySet(1 + args.flood_sockets * len(args.flood_rates))
        vni = allocate(forwarder.api, keys.request_bodies(0, 1))[0]
        outcome = Binder(
            forwarder.udp, forwarder.server_key, keys, [(0, vni)], (a, b), server.protocol
        ).run(window=1, retry=0.5, timeout=10)
        if outcome.done != 1:
            raise RuntimeError(f"{name}: the data endpoint does not relay")
        for sock in (a, b):
            sock.connect(forwarder.udp)
        datagram = geneve.data_header(vni) + b"x" * DATA_PAYLOAD
        results = {"quiet": offered_load(forwarder, a, b, datagram, args)}
        for number, rate in enumerate(args.flood_rates):
            first = 1 + number * args.flood_sockets
            pair = (a, b, datagram)
            results[rate] = flood_run(forwarder, server, keys, first, rate, pair, args)
    finally:
        a.close()
        b.close()
        stop_all(started)
    return results


def part_flood(args, started: list[Forwarder]) -> None:
    rates = ", ".join(f"{rate:,.0f}/s" if rate else "full speed" for rate in args.flood_rates)
    print(
        f"data during a flood: {args.data_rate:,.0f} packets/s of "
        f"{geneve.HEADER_LEN + DATA_PAYLOAD} bytes offered A -> B for {args.duration} s, "
        f"without a flood, then with a flood of binds at {rates} from {args.flood_sockets} "
        f"sockets (valid binds and forged ones, alternately; a separate process, nice "
        f"{FLOOD_NICE}, on CPU {BENCH_CPU})"
    )
    runs = servers([Server(OURS_DEFAULT, ours_command(), 0), Server(OURS_V1, ours_command(), 1)])
    progress = Progress("bench.handshakes", len(runs))
    results = {}
    for server in runs:
        progress.cell(f"data during a flood, {server.name}: no flood, then {rates}")
        results[server.name] = (server, flood_effect(server, args, started))
    rows = [
        [
            "server", "version", "flood sent/s", "relayed/s", "flood/quiet", "loss", "data sent/s",
            "server busy", "waited", "dropped by ours",
        ]
    ]  # fmt: skip
    for name, (server, figures) in results.items():
        quiet = figures["quiet"]
        for rate, r in figures.items():
            dropped = ", ".join(f"{k} {v:,.0f}" for k, v in r.get("dropped", {}).items())
            rows.append(
                [
                    name if rate == "quiet" else "",
                    str(server.protocol) if rate == "quiet" else "",
                    "no flood" if rate == "quiet" else f"{r['flood_rate']:,.0f}",
                    f"{r['relayed']:,.0f}",
                    ratio(r["relayed"], quiet["relayed"]),
                    f"{r['loss']:.2f}%",
                    f"{r['sent_rate']:,.0f}",
                    f"{r['busy']:.0f}%",
                    f"{r['waited']:.0f}%",
                    dropped or "-",
                ]
            )
    table(rows, left=1)
    print(
        "  (flood/quiet = relayed/s with the flood / without; server busy = its CPU time / "
        "wall time, waited = time it was ready to run but had no CPU / wall time; data sent/s "
        "below the offered rate means the load generator lagged)"
    )


# -- main --------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    pin(0, BENCH_CPU)
    print(
        f"loopback; server on CPU {FORWARDER_CPU}, this script on CPU {BENCH_CPU}; every "
        f"server's UDP receive buffer set to {SERVER_BUFFER >> 20} MiB (SO_RCVBUFFORCE)"
    )
    started: list[Forwarder] = []
    try:
        if args.part in ("all", "handshakes"):
            part_handshakes(args, started)
        if args.part == "all":
            print()
        if args.part in ("all", "flood"):
            part_flood(args, started)
    finally:
        stop_all(started)


def _rates(text: str) -> list[float]:
    try:
        values = [float(part.replace("_", "")) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("expected one or more rates >= 0")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=("all", "handshakes", "flood"),
        default="all",
        help="handshakes per second, data during a flood, or both (default all)",
    )
    parser.add_argument(
        "--endpoints",
        type=int,
        default=2000,
        help="endpoints whose two clients bind in the timed run (default 2000); keep their "
        "allocation well under 30 s, the reference's fixed bind lifetime",
    )
    parser.add_argument(
        "--sockets", type=int, default=256, help="client sockets the binds come from (default 256)"
    )
    parser.add_argument(
        "--window", type=int, default=256, help="endpoints in flight at once (default 256)"
    )
    parser.add_argument(
        "--retry",
        type=float,
        default=1.0,
        help="seconds before an endpoint's binds are sent again (default 1)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="give up a handshake run after this (s)"
    )
    parser.add_argument(
        "--data-rate",
        type=float,
        default=20_000,
        help="data packets/s offered through the bound pair (default 20000)",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds of each data run (default 5)"
    )
    parser.add_argument(
        "--flood-rates",
        type=_rates,
        default=[50_000.0, 0.0],
        help="comma-separated flood rates in binds/s, one flood run each, 0 for as fast as "
        "one process can (default 50000,0)",
    )
    parser.add_argument(
        "--flood-sockets",
        type=int,
        default=64,
        help="flood sources, each with an endpoint of its own (default 64)",
    )
    options = parser.parse_args()
    if options.endpoints < 1 or options.sockets < 2 or options.window < 1:
        parser.error("--endpoints >= 1, --sockets >= 2, --window >= 1")
    if options.data_rate <= 0 or options.duration <= 0:
        parser.error("--data-rate and --duration > 0")
    if options.flood_sockets < 1:
        parser.error("--flood-sockets >= 1")
    stop_on_sigterm()
    main(options)
