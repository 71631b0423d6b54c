"""Through a tailnet: throughput and CPU per byte of our peer relay beside tailscaled's own.

    .venv/bin/python -m bench.tailnet [--megabytes 200] [--rounds 3] [--fast-path off,auto]
                                      [--path-timeout 180] [--transfer-timeout 300] [--keep DIR]

Needs root and the binaries of scripts/build-tailnet (Headscale, tailscaled and tailscale in
.dev/bin). A few minutes: most of it is waiting for the clients to move to the next relay.

Why: issue 18 asks for the throughput and the CPU per byte of our relay as a tailnet's peer
relay against tailscaled's own peer relay, in the same bed and the same run.

How, in one run and one bed (tests/support/tailnet.py, as tests/tailnet):
  1. Headscale, and unmodified tailscaled clients a and b (tag:client) in namespaces with no
     path to each other but DERP and the relay hosts; the policy grants tag:client the relay
     capability toward tag:relay.
  2. One phase per relay, one relay running at a time, each on a relay host of its own so
     that its address tells which relay carries the path: ours (`relayfleet relay` joining
     the tailnet, one worker) with each --fast-path value asked for, then tailscaled's
     peer relay (`tailscale set --relay-server-port`). Each relay is tagged tag:relay, so
     it is granted as it joins; the previous phase's relay is stopped first (SIGTERM). A
     phase starts once `tailscale ping` a->b and b->a both say `via
     peer-relay(<this relay's address>:<port>:...)`, within --path-timeout.
  3. Each of --rounds rounds (the path checked again first): --megabytes MB (10^6 bytes)
     over TCP from a to b's tailnet address (tests.support.tailnet.send_over_the_tailnet,
     bounded by --transfer-timeout). Measured over the transfer: wall time; the relay's CPU
     (utime + stime of its process and its threads, plus any child's, from /proc: `ip netns
     exec` execs the relay, and the sum over the process tree holds either way); the two
     clients' tailscaled CPU the same way; the machine's busy CPU (/proc/stat). After the
     round, one `tailscale ping` a->b says whether the path was still through the relay
     ("on path").
  4. Printed: MB/s and relay CPU-µs per MB, best and median of the rounds, per relay, and
     the ratios ours / tailscaled's relay.

Reading the figures: the clients' tailscaled (WireGuard and TUN, in user space), the bench's
own sender and receiver and the relay all share the machine's cores, so MB/s is the whole
bed's rate, bound by whatever is busiest (usually the clients), not the relay's capacity;
CPU per MB is the relay's own cost. With `--fast-path auto` the relay process sees no data
once the endpoint is bound: the kernel relays it in softirq context, charged to no process,
so its relay CPU leaves that work out (the machine's CPU has it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import CLOCK_TICK, machine_busy_seconds, stop_on_sigterm
from bench.report import Progress, ratio, table
from tests.support import netns
from tests.support import tailnet as bed
from tests.support.paths import RELAYFLEET
from tests.support.tailnet import Host, Node, Tailnet, TailnetError, send_over_the_tailnet

MB = 1_000_000
OUR_PORT = 40001
METRICS_PORT = 9109
FORWARDED = "relayfleet_relay_forwarded_bytes_total"
REFERENCE_PORT = 40000
REFERENCE = "tailscaled v1.102.5"
FAST_PATHS = ("off", "auto")
READY_TIMEOUT = 60.0
PING_TIMEOUT = 20.0
# --fast-path auto credits the kernel's counters to the relay's every second or so.
COUNTER_SETTLE = 5.0


def ours_label(fast_path: str) -> str:
    return f"ours, --fast-path {fast_path}"


# --- CPU from /proc -------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (by each process's parent in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s process tree: each live process's utime + stime (all its
    threads), plus cutime + cstime (its children that have ended and been waited for)."""
    total = 0
    for member in process_tree(pid):
        fields = _stat(member)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICK


# --- the figures ------------------------------------------------------------------------


def round_figures(
    size: int,
    seconds: float,
    relay_cpu: float,
    clients_cpu: float,
    machine_cpu: float,
    on_path: bool,
    relayed: float | None = None,
) -> dict:
    """One round's figures: MB/s, CPU-µs per MB (relay, clients, machine), the relay's share
    of one core over the transfer, and the bytes the relay counted per byte sent (None when
    it has no counter)."""
    megabytes = size / MB
    return {
        "relayed": None if relayed is None else relayed / size,
        "mb_s": megabytes / seconds,
        "relay_us_mb": relay_cpu * 1e6 / megabytes,
        "relay_busy": relay_cpu / seconds,
        "clients_us_mb": clients_cpu * 1e6 / megabytes,
        "machine_us_mb": machine_cpu * 1e6 / megabytes,
        "on_path": on_path,
    }


def summary(rounds: list[dict]) -> dict:
    """Best and median of the rounds: the highest MB/s, the lowest CPU per MB, each figure's
    median (the lower middle one of an even count, so it is a value measured), and how many
    rounds ended on the relay's path."""
    if not rounds:
        raise ValueError("no rounds")

    def median(key: str) -> float:
        return statistics.median_low(r[key] for r in rounds)

    return {
        "mb_s_best": max(r["mb_s"] for r in rounds),
        "relay_us_mb_best": min(r["relay_us_mb"] for r in rounds),
        **{f"{key}_median": median(key) for key in
           ("mb_s", "relay_us_mb", "relay_busy", "clients_us_mb", "machine_us_mb")},
        "on_path": f"{sum(1 for r in rounds if r['on_path'])}/{len(rounds)}",
        "relayed_median": None if any(r["relayed"] is None for r in rounds) else median("relayed"),
    }  # fmt: skip


FIGURES_HEADER = [
    "relay", "MB/s best", "MB/s median", "relay CPU-µs/MB best", "relay CPU-µs/MB median",
    "relay busy", "clients CPU-µs/MB", "machine CPU-µs/MB", "relayed/sent", "on path",
]  # fmt: skip
RATIOS_HEADER = [
    f"ours / {REFERENCE}", "MB/s best", "MB/s median", "relay CPU/MB best",
    "relay CPU/MB median",
]  # fmt: skip


def figures_rows(results: dict[str, dict]) -> list[list[str]]:
    """The figures table (header first), one row per relay measured, in ``results``' order."""
    rows = [FIGURES_HEADER]
    for name, s in results.items():
        rows.append([
            name, f"{s['mb_s_best']:.1f}", f"{s['mb_s_median']:.1f}",
            f"{s['relay_us_mb_best']:,.0f}", f"{s['relay_us_mb_median']:,.0f}",
            f"{s['relay_busy_median']:.0%}", f"{s['clients_us_mb_median']:,.0f}",
            f"{s['machine_us_mb_median']:,.0f}",
            "-" if s["relayed_median"] is None else f"{s['relayed_median']:.2f}", s["on_path"],
        ])  # fmt: skip
    return rows


def ratio_rows(results: dict[str, dict]) -> list[list[str]]:
    """Ours / the reference for each of our rows ("-" where the reference was not measured)."""
    reference = results.get(REFERENCE)
    rows = [RATIOS_HEADER]
    for name, s in results.items():
        if name == REFERENCE:
            continue
        rows.append([name] + [
            ratio(s[key], reference[key] if reference else None)
            for key in ("mb_s_best", "mb_s_median", "relay_us_mb_best", "relay_us_mb_median")
        ])  # fmt: skip
    return rows


def print_results(results: dict[str, dict], megabytes: int, rounds: int) -> None:
    print(f"{megabytes} MB over TCP a -> b through the tailnet, {rounds} round(s) per relay")
    table(figures_rows(results), left=1)
    print()
    table(ratio_rows(results), left=1)
    print()
    tick = 1e6 / CLOCK_TICK
    print(f"CPU is read from /proc in ticks of {tick / 1000:.0f} ms: "
          f"{tick / megabytes:,.0f} CPU-µs/MB per round at {megabytes} MB.")  # fmt: skip


# --- the bed ------------------------------------------------------------------------------


@dataclass
class Relay:
    """A relay under test: its name, host, port and the pid whose process tree it is."""

    name: str
    host: Host
    port: int
    pid: int
    stop: Callable[[], None] = field(repr=False)
    forwarded: Callable[[], float] | None = field(default=None, repr=False)

    def says(self, out: str) -> bool:
        """Whether a ``tailscale ping`` output went through this relay."""
        return any(
            f"via peer-relay({address}:{self.port}:" in out
            for address in self.host.addresses.values()
        )


def ping(tailnet: Tailnet, source: Node, target: Node) -> str:
    return tailnet.tailscale(source, "ping", "--c=1", "--timeout=5s", target.ip,
                             timeout=PING_TIMEOUT, check=False)  # fmt: skip


def wait_for_path(tailnet: Tailnet, a: Node, b: Node, relay: Relay, timeout: float) -> None:
    """Until ``tailscale ping`` a->b and b->a both go through ``relay``."""
    for source, target in ((a, b), (b, a)):
        tailnet.wait_for(
            lambda source=source, target=target: relay.says(ping(tailnet, source, target)),
            f"{source.name}'s ping to {target.name} to go via peer-relay({relay.name})",
            timeout=timeout, interval=2,
        )  # fmt: skip


def start_ours(tailnet: Tailnet, directory: Path, fast_path: str) -> Relay:
    """Our relay joining the tailnet from a relay host of its own, ready (its JSON line)."""
    host = tailnet.add_relay_host(f"o{fast_path[:3]}")
    keys = directory / f"ours-{fast_path}"
    keys.mkdir(parents=True)
    (keys / "auth-key").write_text(tailnet.preauth_key("tag:relay") + "\n")
    addrs = [arg for address in host.addresses.values() for arg in ("--addr", address)]
    name = f"our-relay-{fast_path}"
    process = tailnet.spawn(name, host.namespace, [
        RELAYFLEET, "relay", "--listen", "0.0.0.0", "--port", str(OUR_PORT), *addrs,
        "--api-listen", "off", "--metrics-listen", f"127.0.0.1:{METRICS_PORT}",
        "--fast-path", fast_path,
        "--workers", "1", "--key-file", str(keys / "relay-keys"),
        "--tailnet-login-server", bed.LOGIN_SERVER,
        "--tailnet-auth-key-file", str(keys / "auth-key"),
        "--tailnet-key-file", str(keys / "tailnet-keys"), "--tailnet-hostname", name,
    ])  # fmt: skip

    def ready() -> bool:
        if not process.running():
            raise TailnetError(f"{name} exited\n{process.tail()}")
        for line in process.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    if json.loads(line).get("ready"):
                        return True
                except ValueError:
                    continue
        return False

    tailnet.wait_for(ready, f"{name}'s ready line", timeout=READY_TIMEOUT)
    return Relay(
        ours_label(fast_path),
        host,
        OUR_PORT,
        process.popen.pid,
        process.stop,
        lambda: forwarded_bytes(host),
    )


def forwarded_bytes(host: Host) -> float:
    """Our relay's forwarded-bytes counter (its /metrics, read inside its namespace)."""
    with netns.inside(host.namespace):
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{FORWARDED} "):
            return float(line.split()[-1])
    return 0.0


def start_reference(tailnet: Tailnet) -> Relay:
    """tailscaled's own peer relay on a relay host of its own."""
    host = tailnet.add_relay_host("ref")
    node = tailnet.start_node("ref-relay", host, ["tag:relay"])
    tailnet.tailscale(node, "set", f"--relay-server-port={REFERENCE_PORT}")
    return Relay(REFERENCE, host, REFERENCE_PORT, node.process.popen.pid, node.process.stop)


def relayed_since(relay: Relay, before: float, size: int) -> float | None:
    """Bytes the relay's counter grew by since ``before``: once it reaches ``size``, or what
    it says after :data:`COUNTER_SETTLE` s; None for a relay without the counter."""
    if relay.forwarded is None:
        return None
    deadline = time.monotonic() + COUNTER_SETTLE
    while (relayed := relay.forwarded() - before) < size and time.monotonic() < deadline:
        time.sleep(0.2)
    return relayed


def measure(tailnet: Tailnet, a: Node, b: Node, relay: Relay, args: argparse.Namespace,
            progress: Progress) -> list[dict]:  # fmt: skip
    rounds = []
    size = args.megabytes * MB
    clients = (a.process.popen.pid, b.process.popen.pid)
    for number in range(1, args.rounds + 1):
        progress.cell(f"{relay.name}, round {number}")
        wait_for_path(tailnet, a, b, relay, args.path_timeout)
        forwarded_before = relay.forwarded() if relay.forwarded else 0.0
        relay_before = tree_cpu_seconds(relay.pid)
        clients_before = sum(tree_cpu_seconds(pid) for pid in clients)
        machine_before = machine_busy_seconds()
        started = time.monotonic()
        received = send_over_the_tailnet(a, b, size, deadline=args.transfer_timeout)
        seconds = time.monotonic() - started
        machine = machine_busy_seconds() - machine_before
        clients_cpu = sum(tree_cpu_seconds(pid) for pid in clients) - clients_before
        relay_cpu = tree_cpu_seconds(relay.pid) - relay_before
        relayed = relayed_since(relay, forwarded_before, size)
        if received != size:
            raise TailnetError(f"b received {received} of {size} bytes through {relay.name}")
        on_path = relay.says(ping(tailnet, a, b))
        rounds.append(
            round_figures(size, seconds, relay_cpu, clients_cpu, machine, on_path, relayed)
        )
        progress.note(f"{relay.name}: {rounds[-1]['mb_s']:.1f} MB/s, "
                      f"{rounds[-1]['relay_us_mb']:,.0f} relay CPU-µs/MB")  # fmt: skip
    return rounds


def run(args: argparse.Namespace, directory: Path) -> dict[str, dict]:
    phases = len(args.fast_path) + (0 if args.no_reference else 1)
    progress = Progress("bench.tailnet", phases * args.rounds)
    results: dict[str, dict] = {}
    with Tailnet(directory) as tailnet:
        progress.note("bed: Headscale, clients a and b")
        tailnet.grant_relay("tag:relay")
        a = tailnet.start_node("a", tailnet.hosts["a"], ["tag:client"])
        b = tailnet.start_node("b", tailnet.hosts["b"], ["tag:client"])
        starts = [
            lambda fp=fp: start_ours(tailnet, directory / "keys", fp) for fp in args.fast_path
        ]
        if not args.no_reference:
            starts.append(lambda: start_reference(tailnet))
        for start in starts:
            relay = start()
            progress.note(f"{relay.name}: waiting for a <-> b to go through it")
            try:
                results[relay.name] = summary(measure(tailnet, a, b, relay, args, progress))
            finally:
                relay.stop()
    return results


def _fast_paths(text: str) -> list[str]:
    values = list(dict.fromkeys(part for part in text.split(",") if part))
    for value in values:
        if value not in FAST_PATHS:
            raise argparse.ArgumentTypeError(f"{value!r}: each must be one of {FAST_PATHS}")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument(
        "--megabytes",
        type=_positive,
        default=200,
        help="MB (10^6 bytes) sent a -> b per round (default 200)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="transfers per relay; best and median printed (default 3)",
    )
    parser.add_argument(
        "--fast-path",
        type=_fast_paths,
        default=list(FAST_PATHS),
        help="our relay once per value, comma-separated (default off,auto)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="leave tailscaled's relay out (ratios then print '-')",
    )
    parser.add_argument(
        "--path-timeout",
        type=float,
        default=180.0,
        help="seconds for the clients to go through a relay (default 180)",
    )
    parser.add_argument(
        "--transfer-timeout",
        type=float,
        default=300.0,
        help="seconds a transfer may take (default 300)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the bed's files and logs in this new directory",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if not args.fast_path and args.no_reference:
        parser.error("nothing to measure")
    why = bed.unavailable()
    if why is not None:
        sys.exit(f"bench.tailnet: {why}")
    stop_on_sigterm()
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        results = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-tailnet-") as directory:
            results = run(args, Path(directory))
    print_results(results, args.megabytes, args.rounds)


if __name__ == "__main__":
    main()
