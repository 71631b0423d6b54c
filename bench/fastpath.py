"""Kernel fast path: packets relayed per second of the relaying core, kernel vs C vs ours.

    .venv/bin/python -m bench.fastpath [--packets 1000000] [--sizes 64,200,1400] [--rounds 1]
                                       [--max-loss 0.001] [--search-steps 7]

Needs root, nft and ip (scripts/build-test-deps installs them). About 2 minutes.

Why: issue 7's optional kernel fast path must relay at least twice what the
C recvmmsg/sendmmsg forwarder (bench/c/forwarder.c, the practical limit of
user space) does on one core. This runs, from one script on one machine:
  (a) C: the C forwarder, user space;
  (b) ours, user space: `relayfleet relay --fast-path off`;
  (c) ours, kernel: `relayfleet relay --fast-path auto` (nftables rules,
      relay/fastpath/rules.py), once the measured endpoint is bound.

How:
  1. Three network namespaces (tests/support/netns.py): client a, the relay, client
     b, joined by veth pairs. Packets cross real devices, which the kernel
     path needs (it hooks a device's ingress) and loopback would hide.
  2. All relaying work goes to CPU 1, the load to CPU 0: the forwarder
     process is pinned to CPU 1, and receive packet steering (RPS) on the
     relay's two devices hands every packet arriving there to CPU 1, so the
     kernel's part (the socket delivery for (a) and (b), the rules for (c))
     runs there too. Client b's device counts and drops the relayed packets
     at its ingress (an nftables counter), so delivering to b costs nothing
     in any case.
  3. Ours: allocate through the API, both clients bind (RelayClient); for (c)
     wait until /metrics shows the endpoint in the kernel.
     Every forwarder's socket gets the same forced --buffer (SO_RCVBUFFORCE
     on a pidfd_getfd duplicate, as bench.dataplane does).
  4. Load: a C sender (bench/c/sender.c) in client a's namespace, pinned to
     CPU 0, sends data packets of the endpoint's VNI from a's bound address
     with sendmmsg, batches of 64, unpaced or at a fixed rate.
  5. Throughput, RFC 2544 style: the highest offered rate relayed with at
     most --max-loss lost. First one unpaced round of --packets packets; if
     it loses nothing, the sender is the limit (printed as such). Otherwise
     --search-steps rounds of about a second each search the rate, between
     0 and the rate the unpaced round offered.
     net.core.netdev_max_backlog is raised to --backlog for the run and
     restored after: at its default (1000) the bursts that RPS hands to CPU 1
     overflow CPU 1's input queue while it is mostly idle.
  6. Per round: packets counted at b, loss, wall time from the first send to
     the last arrival, and CPU 1's busy time: a spinner at SCHED_IDLE on CPU 1
     gets whatever nothing else wants, so busy = wall time - its spins /
     its spins per second on the idle machine (this kernel's tick-based
     accounting misses most softirq work on an otherwise idle CPU, so
     /proc/stat cannot say). Packets per CPU-second of CPU 1 is the
     comparable figure: the forwarder's capacity on one core, also where the
     sender on CPU 0 cannot fill that core (the kernel path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from bench.c import build_program
from bench.processes import (
    BENCH_CPU,
    FORWARDER_CPU,
    NO_API_LIMITS,
    RELAYFLEET,
    Forwarder,
    stop_on_sigterm,
)
from bench.report import Progress, table
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from tests.support import netns
from tests.support.waiting import wait_until_sync

C, USER, KERNEL = "C (user space)", "ours, user space", "ours, kernel fast path"
FLOOR = "arrival only"
FLOOR_PORT = 7000
SINK_TABLE = "bench_sink"
BACKLOG_SYSCTL = Path("/proc/sys/net/core/netdev_max_backlog")
SETTLE = 0.3
ROUND_DEADLINE = 60.0


class IdleMeter:
    """How much of CPU 1 nothing else wanted: a spinning counter at SCHED_IDLE priority.

    /proc/stat cannot tell: with tick-based accounting and idle ticks off,
    softirq work done on an otherwise idle CPU is mostly never sampled. Any
    other work on CPU 1 (softirqs included) takes the CPU from the spinner, so
    busy time = wall time - spins / (spins per second on an idle machine).
    """

    def __init__(self, binary: Path, directory: str) -> None:
        self._file = Path(directory) / "spins"
        self._file.write_bytes(bytes(8))
        self._process = subprocess.Popen(["taskset", "-c", str(FORWARDER_CPU), str(binary),
                                          str(self._file)])  # fmt: skip
        self._fd = os.open(self._file, os.O_RDONLY)
        self._map = mmap.mmap(self._fd, 8, prot=mmap.PROT_READ)
        self.idle_rate = 0.0

    def spins(self) -> int:
        return struct.unpack("Q", self._map[:8])[0]

    def calibrate(self, seconds: float = 2.0) -> float:
        before, started = self.spins(), time.monotonic()
        time.sleep(seconds)
        self.idle_rate = (self.spins() - before) / (time.monotonic() - started)
        return self.idle_rate

    def start(self) -> tuple[int, float]:
        return self.spins(), time.monotonic()

    def busy_seconds(self, mark: tuple[int, float]) -> float:
        spins, started = mark
        window = time.monotonic() - started
        return max(window - (self.spins() - spins) / self.idle_rate, 1e-9)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        self._map.close()
        os.close(self._fd)


def in_namespace(hosts: netns.Hosts, namespace: str, cpu: int, *argv: str) -> list[str]:
    return ["taskset", "-c", str(cpu), *hosts.exec(namespace), *argv]


def steer_to_forwarder_cpu(hosts: netns.Hosts) -> None:
    mask = format(1 << FORWARDER_CPU, "x")
    script = " && ".join(
        f"echo {mask} > /sys/class/net/r{side}/queues/rx-0/rps_cpus" for side in "ab"
    )
    subprocess.run([*hosts.exec(hosts.relay), "sh", "-c", script], check=True)


def install_sink(hosts: netns.Hosts, sink: tuple[str, str], port: int) -> None:
    """At ``sink`` (namespace, device): count and drop the packets to ``port``."""
    namespace, device = sink
    script = (
        f"add table netdev {SINK_TABLE}\ndelete table netdev {SINK_TABLE}\n"
        f"table netdev {SINK_TABLE} {{\n counter delivered {{ }}\n"
        f' chain in {{ type filter hook ingress device "{device}" priority 0; policy accept;\n'
        f'  meta protocol ip udp dport {port} counter name "delivered" drop\n }}\n}}\n'
    )
    subprocess.run([*hosts.exec(namespace), "nft", "-f", "-"], input=script, text=True, check=True)


def delivered(hosts: netns.Hosts, sink: tuple[str, str]) -> int:
    text = subprocess.run(
        [*hosts.exec(sink[0]), "nft", "-j", "list", "counter", "netdev",
         SINK_TABLE, "delivered"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for item in json.loads(text)["nftables"]:
        if "counter" in item:
            return item["counter"]["packets"]
    raise RuntimeError("no sink counter")


class Setup:
    """A forwarder in the relay namespace (none: "arrival only") with a bound pair whose
    a-side socket is freed for the sender."""

    def __init__(self, hosts: netns.Hosts, name: str, forwarder: Forwarder | None) -> None:
        self.hosts, self.name, self.forwarder = hosts, name, forwarder
        self.ready = forwarder.ready if forwarder else {"udp_port": FLOOR_PORT}
        self.sink = (hosts.clients["b"], "cb")
        self.vni = 1
        self.a_port = self.b_port = 0
        self.b_socket: socket.socket | None = None

    @property
    def api_port(self) -> int:
        return int(self.ready["api"].rsplit(":", 1)[1])

    def metric(self, name: str) -> float:
        _, text = self.hosts.relay_http(self.api_port, "GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(f"relayfleet_relay_{name} "):
                return float(line.split()[1])
        raise RuntimeError(f"no metric {name}")

    def enlarge_buffers(self, size: int) -> None:
        """The same forced receive and send buffers for every forwarder's socket."""
        if self.forwarder is not None:
            self.forwarder.take_sockets(size)

    def stop(self) -> None:
        if self.b_socket is not None:
            self.b_socket.close()
        if self.forwarder is not None:
            self.forwarder.stop()


def start(hosts: netns.Hosts, name: str, argv: list[str]) -> Setup:
    """``argv`` in the relay namespace, pinned to the forwarder CPU (bench/processes.py)."""
    return Setup(hosts, name, Forwarder.start(name, [*hosts.exec(hosts.relay), *argv], []))


def arrival_floor(hosts: netns.Hosts) -> Setup:
    """No forwarder: the packets are counted and dropped as they arrive at the relay's device.
    What CPU 1 spends on that, any relay spends too."""
    setup = Setup(hosts, FLOOR, None)
    setup.sink = (hosts.relay, "ra")
    setup.a_port, setup.b_port = FLOOR_PORT, FLOOR_PORT
    return setup


def start_c(hosts: netns.Hosts, binary: Path) -> Setup:
    a, b = hosts.udp_socket("a"), hosts.udp_socket("b")
    a_port, b_port = a.getsockname()[1], b.getsockname()[1]
    a.close()
    setup = start(hosts, C, [str(binary), "0", str(a_port), str(b_port),
                             netns.CLIENT_IP["a"], netns.CLIENT_IP["b"]])  # fmt: skip
    setup.a_port, setup.b_port, setup.b_socket = a_port, b_port, b
    return setup


def start_ours(hosts: netns.Hosts, name: str, fast_path: str) -> Setup:
    setup = start(hosts, name, [
        RELAYFLEET, "relay", "--listen", "0.0.0.0", "--port", "0",
        "--api-listen", "127.0.0.1:0", *NO_API_LIMITS, "--log-level", "warning",
        "--fast-path", fast_path,
    ])  # fmt: skip
    keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
    status, text = hosts.relay_http(
        setup.api_port, "POST", "/v0/relay/endpoint", {"DiscoKeys": [str(k.public) for k in keys]}
    )
    if status != 200:
        raise RuntimeError(f"allocation: {status} {text}")
    allocation = json.loads(text)
    server = DiscoPublicKey.parse(allocation["ServerDisco"])
    setup.vni = allocation["VNI"]
    sockets = [hosts.udp_socket("a"), hosts.udp_socket("b")]
    for key, sock, side in zip(keys, sockets, "ab", strict=True):
        client = RelayClient(key, server, setup.vni, protocol=0)
        relay = (netns.RELAY_SIDE[side], setup.ready["udp_port"])
        sock.settimeout(5)
        sock.sendto(client.bind(), relay)
        challenge, _ = sock.recvfrom(2048)
        sock.sendto(client.answer(challenge), relay)
    setup.a_port, setup.b_port = (s.getsockname()[1] for s in sockets)
    sockets[0].close()
    setup.b_socket = sockets[1]
    if fast_path != "off":
        wait_until_sync(
            lambda: setup.metric("fast_path_endpoints") == 1,
            "the endpoint in the kernel",
            timeout=10,
        )
    return setup


def one_round(
    setup: Setup, sender: Path, size: int, packets: int, meter: IdleMeter, rate: float = 0
) -> dict:
    hosts = setup.hosts
    install_sink(hosts, setup.sink, setup.b_port)
    mark = meter.start()
    started = time.monotonic()
    sending = subprocess.run(
        in_namespace(hosts, hosts.clients["a"], BENCH_CPU, str(sender),
                     netns.CLIENT_IP["a"], str(setup.a_port), netns.RELAY_SIDE["a"],
                     str(setup.ready["udp_port"]), str(setup.vni), str(size), str(packets),
                     str(int(rate))),
        check=True, capture_output=True, text=True, timeout=ROUND_DEADLINE,
    )  # fmt: skip
    send_seconds = float(sending.stdout.split()[1])
    count, last_change = delivered(hosts, setup.sink), time.monotonic()
    while time.monotonic() - last_change < SETTLE and time.monotonic() - started < ROUND_DEADLINE:
        time.sleep(0.05)
        now = delivered(hosts, setup.sink)
        if now != count:
            count, last_change = now, time.monotonic()
    elapsed = last_change - started
    busy = meter.busy_seconds(mark)
    return {
        "offered": packets / send_seconds,
        "rate": count / elapsed,
        "loss": 1 - count / packets,
        "busy": busy / elapsed,
        "per_cpu_second": count / busy,
    }


def lossless(setup: Setup, sender: Path, size: int, args, meter: IdleMeter) -> dict:
    """The highest offered rate relayed with at most --max-loss lost (RFC 2544 style).

    First unpaced: if that loses nothing, the sender is the limit and its
    round stands. Otherwise a binary search between 0 and the unpaced
    delivery rate, --search-steps rounds of about one second each.
    """
    best = one_round(setup, sender, size, args.packets, meter)
    best["sender_limited"] = best["loss"] <= args.max_loss
    if best["sender_limited"]:
        return best
    low, high, best = 0.0, best["offered"], None
    for _ in range(args.search_steps):
        rate = (low + high) / 2
        result = one_round(setup, sender, size, max(int(rate), 50_000), meter, rate)
        if result["loss"] <= args.max_loss:
            low, best = rate, result
        else:
            high = rate
    if best is None:
        raise RuntimeError(f"{setup.name}: loss above {args.max_loss:.2%} at every rate tried")
    best["sender_limited"] = False
    return best


def main(args: argparse.Namespace) -> None:
    stop_on_sigterm()
    if reason := netns.unavailable():
        raise SystemExit(f"bench.fastpath: {reason}")
    hosts = netns.Hosts.create(f"b{os.getpid()}")
    results: dict[str, dict[int, dict]] = {}
    backlog = BACKLOG_SYSCTL.read_text()
    try:
        BACKLOG_SYSCTL.write_text(str(args.backlog))
        steer_to_forwarder_cpu(hosts)
        with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as stack:
            forwarder = build_program("forwarder", directory)
            sender = build_program("sender", directory)
            meter = IdleMeter(build_program("spinner", directory), directory)
            stack.callback(meter.close)
            print(f"CPU {FORWARDER_CPU} idle: {meter.calibrate():,.0f} spins/s")
            setups = (
                (FLOOR, lambda: arrival_floor(hosts)),
                (C, lambda: start_c(hosts, forwarder)),
                (USER, lambda: start_ours(hosts, USER, "off")),
                (KERNEL, lambda: start_ours(hosts, KERNEL, "auto")),
            )
            progress = Progress("bench.fastpath", len(setups) * len(args.sizes))
            for name, make in setups:
                setup = make()
                setup.enlarge_buffers(args.buffer)
                try:
                    for size in args.sizes:
                        progress.cell(f"{name}, {size} B, {args.rounds} round(s)")
                        one_round(setup, sender, size, args.packets // 10, meter)  # warm-up
                        rounds = [
                            lossless(setup, sender, size, args, meter) for _ in range(args.rounds)
                        ]
                        row = results.setdefault(name, {})[size] = {
                            key: statistics.median(r[key] for r in rounds) for key in rounds[0]
                        }
                        print(
                            f"  {name}, {size} B: {row['rate']:,.0f} pkt/s, loss "
                            f"{row['loss']:.2%}, CPU {FORWARDER_CPU} busy {row['busy']:.0%}, "
                            f"{row['per_cpu_second']:,.0f} per CPU-second"
                            + (" (sender-limited)" if row["sender_limited"] else ""),
                            flush=True,
                        )
                finally:
                    setup.stop()
    finally:
        BACKLOG_SYSCTL.write_text(backlog)
        hosts.close()
    print()
    print(
        f"Packets relayed per CPU-second of CPU {FORWARDER_CPU}, at the highest rate with loss "
        f"<= {args.max_loss:.2%} (median of {args.rounds}):"
    )
    rows = [["bytes", FLOOR, C, USER, KERNEL, "kernel/C", "ours user/C"]]
    for size in args.sizes:
        floor, c, user, kernel = (
            results[n][size]["per_cpu_second"] for n in (FLOOR, C, USER, KERNEL)
        )
        rows.append([str(size), f"{floor:,.0f}", f"{c:,.0f}", f"{user:,.0f}", f"{kernel:,.0f}",
                     f"{kernel / c:.2f}", f"{user / c:.2f}"])  # fmt: skip
    table(rows)
    print()
    print(
        f"CPU {FORWARDER_CPU} time per packet above '{FLOOR}' (the packet's arrival at the "
        "relay's device, which every relay pays), in ns:"
    )
    rows = [["bytes", f"{FLOOR} (ns)", C, USER, KERNEL, "C/kernel", "C/ours user"]]
    for size in args.sizes:
        floor, c, user, kernel = (
            1e9 / results[n][size]["per_cpu_second"] for n in (FLOOR, C, USER, KERNEL)
        )
        rows.append([str(size), f"{floor:.0f}", f"{c - floor:.0f}", f"{user - floor:.0f}",
                     f"{kernel - floor:.0f}", f"{(c - floor) / (kernel - floor):.2f}",
                     f"{(c - floor) / (user - floor):.2f}"])  # fmt: skip
    table(rows)
    print()
    print(
        f"That rate in packets/s, its loss and CPU {FORWARDER_CPU} busy "
        f"(the sender on CPU {BENCH_CPU} is the limit where busy < 100%):"
    )
    rows = [["bytes", "forwarder", "pkt/s", "loss", "busy", "limit"]]
    for size in args.sizes:
        for name in (FLOOR, C, USER, KERNEL):
            row = results[name][size]
            limit = "sender" if row["sender_limited"] else "forwarder"
            rows.append([str(size), name, f"{row['rate']:,.0f}", f"{row['loss']:.2%}",
                         f"{row['busy']:.0%}", limit])  # fmt: skip
    table(rows)


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--packets", type=int, default=1_000_000, help="packets of the unpaced round"
    )
    parser.add_argument("--max-loss", type=float, default=0.001, help="loss allowed (fraction)")
    parser.add_argument("--search-steps", type=int, default=7, help="rounds of the rate search")
    parser.add_argument("--sizes", type=_sizes, default=[64, 200, 1400], help="datagram sizes")
    parser.add_argument("--rounds", type=int, default=1, help="searches per cell (median)")
    parser.add_argument(
        "--buffer",
        type=int,
        default=16 << 20,
        help="receive and send buffer bytes forced on every forwarder's socket",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=100_000,
        help="net.core.netdev_max_backlog during the run (restored after): with the default "
        "1000, bursts handed to CPU 1 overflow its queue long before it is busy",
    )
    main(parser.parse_args())
