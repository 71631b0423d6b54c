"""Handshakes per second on two CPUs: ours with --workers 1 and 2 beside the v1.102.5 reference.

    .venv/bin/python -m bench.handshakes_workers [--endpoints 5000] [--rounds 3]
                                                 [--sockets 256] [--window 256]
                                                 [--forwarders NAME,NAME]

Why: issue 17 item 3, "Handshakes spread over the workers too ... Handshakes/s
>= 1.0x the v1.102.5 reference on the same cores". bench/handshakes.py (part
1) gives every server one CPU; this bench gives the server both, as
bench/workers.py does for the data plane:
  - ours, 1 worker / 2 workers: `relayfleet relay --workers 1|2`, a Redis
    store (one redis-server for the run, emptied between relays),
    --report-status off, its handshake limits raised to 1e9 (bench/handshakes.py
    "limits raised"), clients in protocol version 1; with 2 workers the BPF
    program steers each datagram, control and data, to worker VNI % 2;
  - the v1.102.5 reference (.dev/bin/refserver-v1) with GOMAXPROCS=2 (two
    SO_REUSEPORT sockets), UDP GRO on (its default) and off
    (bench/processes.py REFERENCE_V1_VARIANTS).
Same method as part 1 of bench/handshakes.py (bench/binder.py): every bind
sealed in advance, both clients' bind -> challenge -> answer of --endpoints
endpoints with at most --window in flight from a pool of --sockets sockets,
an endpoint complete when a data packet its first client sends after both
answers comes out at its second client; handshakes/s = 2 x endpoints /
(last relayed data packet - first bind). The reference's two sockets are
read by two goroutines, so the data packet (sent on one client's socket
after both answers) can overtake the other client's answer and be dropped
(ours steers both clients of an endpoint to one worker's queue): for it,
an endpoint is sent again after --reference-retry s (0.1) instead of
--retry (1). Each server's UDP sockets (each
worker's) get a 4 MiB receive queue.

CPUs: the load generator (this script; its answers must be sealed as the
challenges come, so it cannot all be done in advance) is pinned to CPU 0;
the server (ours' parent, its workers, and redis-server; the reference) may
run on CPUs 0 and 1. So the server has CPU 1 to itself and shares CPU 0 with
the client: "client busy" near 100% means the client set the pace. Per
round, from schedstat: each process's CPU time / wall time (parent, each
worker, redis), the server's total ("server CPUs", 2.00 = both CPUs all
along), the time its threads were runnable without a CPU ("waited"), and
handshakes per CPU-second of the server (ours: its relay processes; "incl.
redis" adds redis-server's CPU).

Every forwarder is set up first: started, 100 warm-up endpoints allocated
and bound, then held stopped (SIGSTOP). Then --rounds rounds in turn: round r
of every forwarder before round r + 1 of any, the others stopped meanwhile,
so that a slow minute of the machine falls on all of them (a round of one
server swings by up to 30% here). A round resumes the server, allocates
--endpoints fresh endpoints just before binding them (the reference drops an
allocation not bound within 30 s), and stops it again; the median round is
reported. Ours: a worker that exited fails the run, and
/metrics must show every measured endpoint bound. Then the ratios of issue
17 item 3: ours 2 workers / ours 1 worker, and ours 2 workers / the
reference with GOMAXPROCS=2 at its better of GRO on and off (target 1.0),
by handshakes/s and per CPU-second.
Needs root (pidfd_getfd, SO_RCVBUFFORCE), redis-server, and .dev/bin/refserver-v1.
Bounded: --endpoints x --rounds handshakes per forwarder, a --timeout per
round; every process it starts is stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.binder import Binder
from bench.clients import KeySet, allocate
from bench.handshakes import METRIC_DROPS, SERVER_BUFFER, WARMUP
from bench.processes import (
    BENCH_CPU,
    RAISED_LIMITS,
    REFERENCE_V1_VARIANTS,
    Forwarder,
    affinity,
    ours_command,
    pin,
    scheduled_ns,
    stop_all,
    stop_on_sigterm,
)
from bench.report import Progress, ratio, table
from bench.sockets import POOL_BUFFER, client_socket
from bench.workers import (
    OURS_1,
    OURS_2,
    Group,
    load_average,
    print_logs,
    reference_label,
    start_group,
    verdict,
)

TARGET = 1.0
SERVER_CPUS = {0, 1}
REFERENCES_2 = [r for r in REFERENCE_V1_VARIANTS if ("GOMAXPROCS", "2") in r.env]
FORWARDERS = {
    "ours1": OURS_1,
    "ours2": OURS_2,
    **{
        "ref2" + ("-gro-off" if "GRO off" in reference_label(r) else ""): reference_label(r)
        for r in REFERENCES_2
    },
}


# -- pure helpers (tests/test_bench_handshakes_workers.py) --------------------------------


def median_round(rounds: Sequence[dict]) -> dict:
    """The round of median handshakes/s (the lower middle one of an even number)."""
    if not rounds:
        raise ValueError("no rounds")
    ordered = sorted(rounds, key=lambda r: r["rate"])
    return ordered[(len(ordered) - 1) // 2]


def round_figures(
    handshakes: int, elapsed: float, cpu_ns: dict[str, int], client_cpu: float
) -> dict:
    """One round's figures from its handshakes, seconds and each process's CPU ns
    (keys "parent", "worker 0", ..., "redis"; the server = all but redis)."""
    elapsed = max(elapsed, 1e-9)
    server = sum(ns for name, ns in cpu_ns.items() if name != "redis") / 1e9
    redis = cpu_ns.get("redis", 0) / 1e9
    return {
        "rate": handshakes / elapsed,
        "elapsed": elapsed,
        "server_cpus": server / elapsed,
        "per_cpu": handshakes / max(server, 1e-9),
        "per_cpu_redis": handshakes / max(server + redis, 1e-9),
        "processes": {name: ns / 1e9 / elapsed for name, ns in cpu_ns.items()},
        "client_busy": client_cpu / elapsed,
    }


def ratio_lines(results: dict[str, dict]) -> list[tuple[str, float | None, float | None]]:
    """(what, handshakes/s ratio, per CPU-second ratio) of issue 17 item 3: 2 workers / 1 worker,
    then 2 workers / the best reference with GOMAXPROCS=2 (by handshakes/s), named."""
    ours_2, ours_1 = results.get(OURS_2), results.get(OURS_1)
    lines: list[tuple[str, float | None, float | None]] = []

    def divide(a: dict | None, b: dict | None, key: str) -> float | None:
        return a[key] / b[key] if a and b and b[key] else None

    lines.append(
        ("2 workers / 1 worker", divide(ours_2, ours_1, "rate"), divide(ours_2, ours_1, "per_cpu"))
    )
    references = [(r["rate"], name) for name, r in results.items() if "GOMAXPROCS=2" in name]
    if references:
        name = max(references)[1]
        best = results[name]
        label = name.removeprefix("ref v1.102.5 ")
        lines.append(
            (
                f"2 workers / ref {label} (its better)",
                divide(ours_2, best, "rate"),
                divide(ours_2, best, "per_cpu"),
            )
        )
    return lines


# -- running ---------------------------------------------------------------------------------


def process_ns(forwarder: Group, redis_pid: int | None) -> dict[str, int]:
    """CPU ns so far of each process of the server: its parent (or only process), each worker,
    and redis-server behind ours."""
    found = {"parent" if forwarder.workers else "process": scheduled_ns(forwarder.process.pid)[0]}
    for index, pid in enumerate(forwarder.workers):
        found[f"worker {index}"] = scheduled_ns(pid)[0]
    if redis_pid is not None:
        found["redis"] = scheduled_ns(redis_pid)[0]
    return found


def rate_limited(forwarder: Forwarder) -> float:
    return forwarder.metrics().get(f'{METRIC_DROPS}rate_limited"}}', 0.0)


@dataclass
class Measured:
    """A server warmed up for the rounds, held stopped (SIGSTOP) between its rounds."""

    forwarder: Group
    keys: KeySet
    pool: list[socket.socket]
    """its clients' sockets (its own: a late datagram of another server stays out)"""
    retry: float
    redis_pid: int | None
    limited_before: float
    rounds: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.forwarder.name

    @property
    def ours(self) -> bool:
        return self.name.startswith("ours")


def set_up(
    name: str,
    command: list[str],
    env: dict[str, str] | None,
    workers: int,
    redis_pid: int | None,
    args,
    started: list[Forwarder],
    directory: Path,
) -> Measured:
    """Start one server on both CPUs, bind the warm-up endpoints, and stop it (SIGSTOP)."""
    ours = name.startswith("ours")
    with affinity(SERVER_CPUS):
        log = directory / f"{name.replace(' ', '-')}.log"
        forwarder = start_group(name, command, started, log, workers, env)
    forwarder.take_sockets(SERVER_BUFFER)
    keys = KeySet(WARMUP + args.rounds * args.endpoints)
    pool = [client_socket(POOL_BUFFER) for _ in range(args.sockets)]
    try:
        vnis = allocate(forwarder.api, keys.request_bodies(0, WARMUP))
        udp, key = forwarder.udp, forwarder.server_key
        warmup = Binder(udp, key, keys, list(enumerate(vnis)), pool, protocol=1).run()
        if warmup.done != WARMUP:
            raise RuntimeError(f"{name}: {WARMUP - warmup.done} warm-up endpoints did not bind")
    except BaseException:
        for sock in pool:
            sock.close()
        raise
    print(f"  {name}: {WARMUP} warm-up endpoints bound (load average {load_average()})")
    measured = Measured(
        forwarder,
        keys,
        pool,
        args.retry if ours else args.reference_retry,
        redis_pid,
        rate_limited(forwarder) if ours else 0.0,
    )
    forwarder.pause()
    return measured


def one_round(measured: Measured, number: int, args) -> dict:
    """Round ``number`` (from 0) of one server: resume it, allocate --endpoints fresh endpoints,
    time their binds, stop it again; the round's figures."""
    forwarder = measured.forwarder
    forwarder.resume()
    first = WARMUP + number * args.endpoints
    vnis = allocate(forwarder.api, measured.keys.request_bodies(first, first + args.endpoints))
    endpoints = list(zip(range(first, first + args.endpoints), vnis, strict=True))
    binder = Binder(
        forwarder.udp, forwarder.server_key, measured.keys, endpoints, measured.pool, protocol=1
    )
    before = process_ns(forwarder, measured.redis_pid)
    waited_before = forwarder.scheduled_ns()[1]
    outcome = binder.run(window=args.window, retry=measured.retry, timeout=args.timeout)
    after = process_ns(forwarder, measured.redis_pid)
    waited = forwarder.scheduled_ns()[1] - waited_before
    forwarder.pause()
    figures = round_figures(
        2 * outcome.done,
        outcome.elapsed,
        {p: after[p] - before[p] for p in after},
        outcome.client_cpu,
    )
    figures.update(
        done=outcome.done, retries=outcome.retries, waited=waited / 1e9 / figures["elapsed"]
    )
    print(
        f"    {measured.name}, round {number + 1}: {figures['rate']:,.0f} handshakes/s, "
        f"{outcome.done:,}/{args.endpoints:,} done in {figures['elapsed']:.2f} s, "
        f"server CPUs {figures['server_cpus']:.2f}, client busy "
        f"{100 * figures['client_busy']:.0f}%, retries {outcome.retries:,}",
        flush=True,
    )
    return figures


def result_of(measured: Measured) -> dict:
    """The median round, with every round's rate; ours resumed and checked: no worker exited,
    /metrics shows every measured endpoint bound."""
    result = median_round(measured.rounds)
    result["rounds"] = [r["rate"] for r in measured.rounds]
    result["done_all"] = sum(r["done"] for r in measured.rounds)
    result["limited"] = None
    if not measured.ours:
        return result
    forwarder, name = measured.forwarder, measured.name
    forwarder.resume()
    restarts = forwarder.restarted_workers()
    if restarts:
        raise RuntimeError(f"{name}: a worker exited:\n" + "\n".join(restarts))
    if forwarder.workers:
        time.sleep(2.5)  # the parent's sums of the workers' metrics are up to 1 s old
    result["limited"] = rate_limited(forwarder) - measured.limited_before
    bound = forwarder.metrics()['relayfleet_relay_endpoints{state="bound"}']
    expected = WARMUP + result["done_all"]
    print(f"  {name} /metrics: {bound:,.0f} endpoints bound (expected {expected:,})")
    if bound != expected:
        raise RuntimeError(f"{name}: {bound:,.0f} endpoints bound, not {expected:,}")
    return result


def print_results(results: dict[str, dict], args) -> None:
    print()
    print(
        f"handshakes/s, median of {args.rounds} rounds of {args.endpoints:,} endpoints x 2 "
        "clients (all rounds in brackets); per CPU-s = handshakes / the server's CPU time "
        "(ours: parent and workers; incl. redis: with redis-server's); server CPUs = its CPU "
        "time / wall time; processes = each one's; waited = its threads' time runnable "
        "without a CPU / wall time; client busy = this script's (pinned to CPU 0)"
    )
    rows = [
        [
            "server", "handshakes/s", "rounds", "per CPU-s", "incl. redis", "server CPUs",
            "processes", "waited", "client busy", "retries", "rate-limited",
        ]
    ]  # fmt: skip
    for name, r in results.items():
        processes = ", ".join(f"{p} {100 * share:.0f}%" for p, share in r["processes"].items())
        rows.append(
            [
                name,
                f"{r['rate']:,.0f}",
                "/".join(f"{rate:,.0f}" for rate in r["rounds"]),
                f"{r['per_cpu']:,.0f}",
                f"{r['per_cpu_redis']:,.0f}" if "redis" in r["processes"] else "-",
                f"{r['server_cpus']:.2f}",
                processes,
                f"{r['waited']:.2f}",
                f"{100 * r['client_busy']:.0f}%",
                f"{r['retries']:,}",
                "-" if r["limited"] is None else f"{r['limited']:,.0f}",
            ]
        )
    table(rows, left=1)
    print()
    print(f"issue 17 item 3: ours 2 workers >= {TARGET}x the reference with GOMAXPROCS=2")
    for what, rate, per_cpu in ratio_lines(results):
        against = f" ({verdict(rate, TARGET)} against {TARGET})" if "ref" in what else ""
        per_cpu_text = f"{ratio(per_cpu, 1)} per CPU-second"
        print(f"  {what}: {ratio(rate, 1)} handshakes/s{against}, {per_cpu_text}")


def main(args: argparse.Namespace) -> None:
    from tests.support.redis_server import RedisServer

    before = load_average()
    print(
        f"handshakes on 2 CPUs, loopback, protocol version 1: the server on CPUs 0-1, this "
        f"script (the clients) pinned to CPU {BENCH_CPU}; {args.endpoints:,} endpoints x "
        f"{args.rounds} rounds (+ {WARMUP} warm-up), at most {args.window} in flight, "
        f"{args.sockets} client sockets, retry after {args.retry} s (reference: "
        f"{args.reference_retry} s); UDP receive queues "
        f"{SERVER_BUFFER >> 20} MiB; load average before: {before}"
    )
    print(
        "ours: relayfleet relay --workers 1 or 2, Redis store, --report-status off, handshake "
        "limits raised to 1e9; reference v1.102.5: GOMAXPROCS=2, UDP GRO on or off"
    )
    pin(0, BENCH_CPU)
    started: list[Forwarder] = []
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-handshakes-workers-") as temporary:
        directory = Path(temporary)
        (directory / "redis").mkdir()
        redis = None
        runs: list[tuple[str, list[str], dict[str, str] | None, int]] = []
        try:
            if {OURS_1, OURS_2} & set(args.forwarders):
                redis = RedisServer(directory / "redis")
                with affinity(SERVER_CPUS):
                    redis.start()
                for name, count in ((OURS_1, 1), (OURS_2, 2)):
                    if name in args.forwarders:
                        flags = (
                            "--store", redis.url(), "--report-status", "off",
                            "--workers", str(count), "--name", name.replace(" ", "-"),
                            "--steady-state-lifetime", "6h", "--log-level", "info",
                            *RAISED_LIMITS,
                        )  # fmt: skip
                        runs.append((name, ours_command(*flags), None, count))
            for reference in REFERENCES_2:
                label = reference_label(reference)
                if label not in args.forwarders:
                    continue
                if reference.missing:
                    print(f"  {label}: {reference.missing}")
                    continue
                runs.append((label, reference.command(), reference.environment(), 1))
            progress = Progress("bench.handshakes_workers", len(runs) + args.rounds)
            measured: list[Measured] = []
            try:
                for name, command, env, count in runs:
                    progress.cell(f"setting up {name}")
                    redis_pid = redis.process.pid if name.startswith("ours") and redis else None
                    measured.append(
                        set_up(name, command, env, count, redis_pid, args, started, directory)
                    )
                for number in range(args.rounds):
                    progress.cell(f"round {number + 1}/{args.rounds}")
                    for m in measured:
                        m.rounds.append(one_round(m, number, args))
                for m in measured:
                    results[m.name] = result_of(m)
            except BaseException:
                print_logs(started)
                raise
            finally:
                for m in measured:
                    for sock in m.pool:
                        sock.close()
        finally:
            stop_all(started)
            if redis is not None:
                redis.stop()
    print_results(results, args)
    print(f"\nload average before: {before}; after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.handshakes_workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--endpoints",
        type=int,
        default=5000,
        help="endpoints whose two clients bind in each round (default 5000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
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
        "--reference-retry",
        type=float,
        default=0.1,
        help="--retry for the reference (default 0.1): its two sockets are read by two "
        "goroutines, so an endpoint's data packet (one client's socket) may overtake the other "
        "client's answer (the other socket) and be dropped; with 1 s it waits for the retry",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="give up a round after this (s)"
    )
    parser.add_argument(
        "--forwarders",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(FORWARDERS),
        metavar="NAME,NAME",
        help=f"only these, by short name: {', '.join(FORWARDERS)} (default all)",
    )
    options = parser.parse_args()
    if options.endpoints < 1 or options.sockets < 2 or options.window < 1 or options.rounds < 1:
        parser.error("--endpoints >= 1, --sockets >= 2, --window >= 1, --rounds >= 1")
    unknown = [name for name in options.forwarders if name not in FORWARDERS]
    if unknown:
        parser.error(f"--forwarders: unknown {', '.join(unknown)}; known: {', '.join(FORWARDERS)}")
    options.forwarders = [FORWARDERS[name] for name in options.forwarders]
    stop_on_sigterm()
    main(options)
