"""Data-plane capacity: forwarded packets/s and loss, ours beside the reference and a C forwarder.

    .venv/bin/python bench/dataplane.py [--packets 100000] [--size 200] [--rounds 5]
                                        [--endpoints 1]

Why: issue 7 asks for a user-space data plane limited by the kernel, not by
Python. This measures, in one run on loopback, three forwarders side by side:
  (a) ours: `relayfleet relay` (memory store);
  (b) the reference Go server, .dev/bin/refserver (scripts/build-go-helpers);
  (c) a minimal C forwarder (recvmmsg/sendmmsg, batches of 64, source checked
      against the two client addresses it is given), compiled here with gcc
      into a temporary directory: the practical limit of user space.
and prints each one's packets/s, loss, and ratio to ours.

How (capacity, so that the Python load generator is not the bottleneck):
  1. Start the forwarder pinned to one core (CPU 1); this script runs on CPU 0.
     For (a) and (b): allocate `--endpoints` endpoints through the HTTP API
     (the measured one last), bind every one of them with the Python client
     (relay/client.py), and check that the measured one relays both ways.
  2. Enlarge the forwarder's UDP receive buffer so a whole round fits in it:
     the script takes a duplicate of the forwarder's socket (pidfd_getfd, as
     root) and sets SO_RCVBUFFORCE, the same size for all three (the reference
     never sets one, ours asks for 4 MiB). The two client sockets get large
     SO_RCVBUF/SO_SNDBUF the same way.
  3. Each round: SIGSTOP the forwarder, send `--packets` data packets into its
     receive queue (half from client A, half from client B, alternating), then
     SIGCONT it and poll (SO_MEMINFO) the clients' receive queues until all
     packets arrived, or no packet arrived for 0.5 s, or 30 s passed. The
     clients do not read during the round; they drain and count afterwards.
     Rate = packets received / (last arrival - SIGCONT); loss = packets not
     received / packets sent (drops in the forwarder's queue included).
  4. One warm-up round (a tenth of the packets), then `--rounds` rounds; the
     median rate and the total loss are reported.
Draining a full queue is the best case for a batched reader: this is the
ceiling of each forwarder on one core, kernel work of sending included (the
loopback delivery runs on the sender's core), not its latency.
Bounded: packets x rounds per forwarder, a deadline per round; every process
is stopped at the end, also on errors (SIGCONT, SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from relay import geneve
from relay.client import RelayClient
from relay.keys import DiscoPrivateKey, DiscoPublicKey
from relay.server_endpoint import ServerEndpoint

ROOT = Path(__file__).resolve().parents[1]
RELAYFLEET = str(Path(sys.executable).parent / "relayfleet")
REFSERVER = ROOT / ".dev" / "bin" / "refserver"
LOOPBACK = "127.0.0.1"
FORWARDER_CPU, BENCH_CPU = 1, 0
ROUND_DEADLINE = 30.0
QUIET = 0.5
BIND_CHUNK = 200
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32  # past rmem_max/wmem_max, as root
SO_MEMINFO = 55  # getsockopt: u32[9]; [0] receive memory in use, [8] drops
SYS_PIDFD_GETFD = 438  # same number on every architecture

FORWARDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SIZE 2048

/* forwarder PORT A_PORT B_PORT: relays every datagram from 127.0.0.1:A_PORT
   to 127.0.0.1:B_PORT and back; drops anything from elsewhere. */
int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: forwarder PORT A_PORT B_PORT\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buffer = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    struct sockaddr_in b = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    me.sin_addr.s_addr = a.sin_addr.s_addr = b.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        perror("bind");
        return 1;
    }
    socklen_t length = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &length);
    printf("{\"udp_port\": %d}\n", ntohs(me.sin_port));
    fflush(stdout);

    static char data[BATCH][SIZE];
    static struct iovec in_iov[BATCH], out_iov[BATCH];
    static struct sockaddr_in source[BATCH];
    static struct mmsghdr in[BATCH], out[BATCH];
    for (int i = 0; i < BATCH; i++) {
        in_iov[i] = (struct iovec){data[i], SIZE};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &source[i];
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++)
            in[i].msg_hdr.msg_namelen = sizeof source[i];
        int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        int m = 0;
        for (int i = 0; i < n; i++) {
            struct sockaddr_in *to;
            in_addr_t ip = source[i].sin_addr.s_addr;
            if (source[i].sin_port == a.sin_port && ip == a.sin_addr.s_addr)
                to = &b;
            else if (source[i].sin_port == b.sin_port && ip == b.sin_addr.s_addr)
                to = &a;
            else
                continue;
            out_iov[m] = (struct iovec){data[i], in[i].msg_len};
            out[m].msg_hdr = (struct msghdr){
                .msg_name = to, .msg_namelen = sizeof *to, .msg_iov = &out_iov[m], .msg_iovlen = 1};
            m++;
        }
        for (int sent = 0; sent < m;) {
            int r = sendmmsg(fd, out + sent, m - sent, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                break; /* dropped, counted as loss by the bench */
            }
            sent += r;
        }
    }
}
"""

_libc = ctypes.CDLL(None, use_errno=True)


# -- sockets -----------------------------------------------------------------


def set_buffers(sock: socket.socket, size: int) -> None:
    """SO_RCVBUF/SO_SNDBUF of ``size``, past rmem_max/wmem_max when root allows it."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def meminfo(sock: socket.socket) -> tuple[int, int]:
    """(receive memory in use, drops) of a socket."""
    values = struct.unpack("9I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))
    return values[0], values[8]


def forwarder_sockets(pid: int, port: int) -> list[socket.socket]:
    """Duplicates of every UDP socket of process ``pid`` bound to ``port`` (pidfd_getfd)."""
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                error = ctypes.get_errno()
                raise OSError(error, f"pidfd_getfd: {os.strerror(error)} (needs root or ptrace)")
            sock = socket.socket(fileno=fd)
            if sock.type == socket.SOCK_DGRAM and sock.getsockname()[1] == port:
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    if not found:
        raise RuntimeError(f"no UDP socket on port {port} in process {pid}")
    return found


def client_socket(buffer: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_buffers(sock, buffer)
    sock.bind((LOOPBACK, 0))
    return sock


def drain(sock: socket.socket) -> int:
    count = 0
    sock.setblocking(False)
    try:
        while True:
            sock.recv(4096)
            count += 1
    except BlockingIOError:
        return count
    finally:
        sock.setblocking(True)


# -- processes ---------------------------------------------------------------


def pin_to_forwarder_cpu() -> None:
    if os.cpu_count() and os.cpu_count() > FORWARDER_CPU:
        os.sched_setaffinity(0, {FORWARDER_CPU})


@dataclass
class Forwarder:
    name: str
    process: subprocess.Popen
    ready: dict
    sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, command: list[str], started: list[Forwarder]) -> Forwarder:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=pin_to_forwarder_cpu,  # Go sizes GOMAXPROCS from it: one core each
        )
        forwarder = cls(name, process, {})
        started.append(forwarder)
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} did not start (exit {process.wait(10)})")
        forwarder.ready = json.loads(line)
        return forwarder

    @property
    def udp(self) -> tuple[str, int]:
        return LOOPBACK, self.ready["udp_port"]

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while (
            Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not stop")
            time.sleep(0.001)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


# -- allocation and binding over the protocol --------------------------------


def allocate(api: str, keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> ServerEndpoint:
    request = urllib.request.Request(
        f"http://{api}/v0/relay/endpoint",
        data=json.dumps({"DiscoKeys": [str(k) for k in keys]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return ServerEndpoint.from_json(json.loads(response.read()))


def bind_all(
    forwarder: Forwarder, sockets: tuple[socket.socket, socket.socket], count: int
) -> list[tuple[RelayClient, RelayClient]]:
    """Allocate ``count`` endpoints and bind both clients of each from ``sockets``."""
    keys = [(DiscoPrivateKey.generate(), DiscoPrivateKey.generate()) for _ in range(count)]
    with ThreadPoolExecutor(16) as pool:
        endpoints = list(
            pool.map(
                lambda pair: allocate(forwarder.ready["api"], (pair[0].public, pair[1].public)),
                keys,
            )
        )
    pairs = [
        (RelayClient(a, e.server_disco, e.vni), RelayClient(b, e.server_disco, e.vni))
        for (a, b), e in zip(keys, endpoints, strict=True)
    ]
    for sock in sockets:
        sock.settimeout(1.0)
    for start in range(0, count, BIND_CHUNK):
        chunk = pairs[start : start + BIND_CHUNK]
        for side, sock in enumerate(sockets):
            clients = {pair[side].vni: pair[side] for pair in chunk}
            for client in clients.values():
                sock.sendto(client.bind(), forwarder.udp)
            for _ in clients:
                try:
                    challenge = sock.recv(4096)
                except TimeoutError:
                    break
                client = clients[geneve.decode(challenge).vni]
                sock.sendto(client.answer(challenge), forwarder.udp)
    return pairs


def check_relaying(forwarder: Forwarder, sockets, pairs) -> int:
    """How many endpoints relay a data packet from A to B (the bound ones)."""
    a, b = sockets
    for client_a, _ in pairs:
        a.sendto(client_a.data(b"check"), forwarder.udp)
    received = 0
    b.settimeout(1.0)
    try:
        while received < len(pairs):
            b.recv(4096)
            received += 1
    except TimeoutError:
        pass
    return received


# -- measurement -------------------------------------------------------------


def one_round(forwarder, sockets, datagrams, packets: int) -> tuple[float, int]:
    """Pre-load ``packets`` while the forwarder is stopped; (packets/s, received)."""
    a, b = sockets
    for sock in sockets:
        drain(sock)
    forwarder.pause()
    queue_drops = sum(meminfo(s)[1] for s in forwarder.sockets)
    for i in range(packets):
        if i & 1:
            b.send(datagrams[1])
        else:
            a.send(datagrams[0])
    overflow = sum(meminfo(s)[1] for s in forwarder.sockets) - queue_drops
    target = sum(meminfo(s)[0] for s in forwarder.sockets)  # truesize of all queued packets
    started = time.perf_counter()
    forwarder.resume()
    last, last_change = -1, started
    while True:
        now = time.perf_counter()
        arrived = meminfo(a)[0] + meminfo(b)[0]
        if arrived != last:
            last, last_change = arrived, now
        if arrived >= target or now - last_change > QUIET or now - started > ROUND_DEADLINE:
            break
        time.sleep(0.0001)
    received = drain(a) + drain(b)
    if overflow:
        print(f"    note: {overflow} packets overflowed {forwarder.name}'s receive queue")
    elapsed = max(last_change - started, 1e-9)
    return received / elapsed, received


def measure(forwarder, sockets, datagrams, args) -> dict:
    connect_to = forwarder.udp
    for sock in sockets:
        sock.connect(connect_to)
    one_round(forwarder, sockets, datagrams, max(args.packets // 10, 1))  # warm-up
    rates, received = [], 0
    for _ in range(args.rounds):
        rate, got = one_round(forwarder, sockets, datagrams, args.packets)
        rates.append(rate)
        received += got
    sent = args.packets * args.rounds
    return {
        "rate": statistics.median(rates),
        "low": min(rates),
        "high": max(rates),
        "loss": 100.0 * (sent - received) / sent,
    }


def run_relay(name: str, command: list[str], args, started: list) -> dict:
    sockets = (client_socket(args.buffer), client_socket(args.buffer))
    try:
        forwarder = Forwarder.start(name, command, started)
        forwarder.sockets = forwarder_sockets(forwarder.process.pid, forwarder.ready["udp_port"])
        for sock in forwarder.sockets:
            set_buffers(sock, args.buffer)
        extra = args.endpoints - 1
        if extra:
            helpers = (client_socket(args.buffer), client_socket(args.buffer))
            try:
                began = time.monotonic()
                pairs = bind_all(forwarder, helpers, extra)
                bound = check_relaying(forwarder, helpers, pairs)
                print(
                    f"  {name}: {extra} extra endpoints allocated, {bound} bound "
                    f"({time.monotonic() - began:.1f} s)"
                )
            finally:
                for sock in helpers:
                    sock.close()
        (pair,) = bind_all(forwarder, sockets, 1)
        if check_relaying(forwarder, sockets, [pair]) != 1:
            raise RuntimeError(f"{name}: the measured endpoint does not relay")
        payload = b"x" * (args.size - geneve.HEADER_LEN)
        return measure(forwarder, sockets, (pair[0].data(payload), pair[1].data(payload)), args)
    finally:
        for sock in sockets:
            sock.close()


def run_c(binary: Path, args, started: list) -> dict:
    sockets = (client_socket(args.buffer), client_socket(args.buffer))
    try:
        ports = [str(s.getsockname()[1]) for s in sockets]
        forwarder = Forwarder.start("C forwarder", [str(binary), "0", *ports], started)
        forwarder.sockets = forwarder_sockets(forwarder.process.pid, forwarder.ready["udp_port"])
        for sock in forwarder.sockets:
            set_buffers(sock, args.buffer)
        datagram = geneve.data_header(1) + b"x" * (args.size - geneve.HEADER_LEN)
        return measure(forwarder, sockets, (datagram, datagram), args)
    finally:
        for sock in sockets:
            sock.close()


def compile_forwarder(directory: str) -> Path:
    source = Path(directory) / "forwarder.c"
    binary = Path(directory) / "forwarder"
    source.write_text(FORWARDER_C)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def main(args: argparse.Namespace) -> None:
    if os.cpu_count() and os.cpu_count() > FORWARDER_CPU:
        os.sched_setaffinity(0, {BENCH_CPU})
    # large enough for a whole round of queued packets at ~1.2 KiB truesize each
    args.buffer = min(max(args.packets * 4096, 16 << 20), 1 << 30)
    print(
        f"data plane, loopback: {args.packets:,} packets x {args.rounds} rounds, "
        f"{args.size}-byte datagrams (Geneve header included), {args.endpoints:,} endpoint(s) "
        f"allocated and bound; forwarder on CPU {FORWARDER_CPU}, load on CPU {BENCH_CPU}"
    )
    print(
        "method: SIGSTOP the forwarder, pre-load its receive queue (SO_RCVBUFFORCE "
        f"{args.buffer >> 20} MiB on every forwarder), SIGCONT, time until the clients got "
        "them all; median of the rounds"
    )
    results: dict[str, dict] = {}
    started: list[Forwarder] = []
    ours = [
        RELAYFLEET, "relay", "--listen", LOOPBACK, "--port", "0",
        "--api-listen", "127.0.0.1:0", "--addr", LOOPBACK, "--log-level", "warning",
    ]  # fmt: skip
    reference = [str(REFSERVER), "--port", "0", "--api-listen", "127.0.0.1:0", "--addr", LOOPBACK]
    try:
        with tempfile.TemporaryDirectory() as directory:
            binary = compile_forwarder(directory)
            results["ours (relayfleet relay)"] = run_relay("ours", ours, args, started)
            started.pop().stop()
            if REFSERVER.exists():
                results["reference Go server"] = run_relay("reference", reference, args, started)
                started.pop().stop()
            else:
                print("  reference: .dev/bin/refserver missing (run scripts/build-go-helpers)")
            results["C recvmmsg/sendmmsg x64"] = run_c(binary, args, started)
            started.pop().stop()
    finally:
        for forwarder in started:
            forwarder.stop()
    base = results["ours (relayfleet relay)"]["rate"]
    print()
    print(
        f"  {'forwarder':<26}{'packets/s':>12}{'(min-max of rounds)':>24}{'loss %':>9}{'ratio':>8}"
    )
    for name, figures in results.items():
        spread = f"{figures['low']:,.0f}-{figures['high']:,.0f}"
        print(
            f"  {name:<26}{figures['rate']:>12,.0f}{spread:>24}"
            f"{figures['loss']:>9.2f}{figures['rate'] / base:>8.2f}"
        )
    print("  (ratio = packets/s / ours; the C forwarder has no endpoints or handshake)")


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000, help="packets per round")
    parser.add_argument("--size", type=int, default=200, help="datagram bytes, header included")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--endpoints",
        type=int,
        default=1,
        help="endpoints allocated and bound, measured one included",
    )
    options = parser.parse_args()
    if options.size < geneve.HEADER_LEN + 1 or options.size > 2048:
        parser.error("--size must be between 9 and 2048")
    if options.packets < 10 or options.rounds < 1 or options.endpoints < 1:
        parser.error("--packets >= 10, --rounds >= 1, --endpoints >= 1")
    signal.signal(signal.SIGTERM, _terminate)
    main(options)
