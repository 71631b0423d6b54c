"""What bench/dataplane.py and bench/handshakes.py share: forwarder processes, sockets, keys,
fast allocation through the HTTP API and windowed bind handshakes over UDP.

Not a script. Both benches import it from their own folder, so each still runs
on its own as ``.venv/bin/python bench/X.py``.

* Processes: every forwarder runs pinned to CPU 1 (Go sizes GOMAXPROCS from
  that: one core each), the bench on CPU 0; each prints one JSON ready line.
  :meth:`Forwarder.stop` always ends it (SIGCONT, SIGTERM, then SIGKILL).
* Keys: a million endpoints need a million distinct key pairs, not two million
  keys. :class:`KeySet` makes pair i from ~sqrt(2 N) keys, so the client
  side's X25519 work stays small; the servers still derive their shared keys
  per endpoint (the reference at allocation, ours at the first handshake
  message), so what they are measured doing is unchanged.
* Allocation: POST /v0/relay/endpoint over a few keep-alive connections with
  HTTP/1.1 pipelining (a batch of requests written at once, then their
  responses read in order), on uvloop; the client costs a few microseconds
  per allocation, so the server's rate is what is measured.
* Binding: :class:`Binder` runs both clients' bind -> challenge -> answer for
  many endpoints with a window of endpoints in flight, from a pool of client
  sockets (client side i of endpoint e uses socket (2e + i) mod pool size).
  An endpoint counts as done when a data packet sent by its first client,
  after both answers, comes out at its second client: the server relays it
  only once both answers were taken, and it sits behind them in the server's
  one receive queue. An endpoint not done within ``retry`` seconds gets both
  binds (and the data packet) again; a bound client ignores the extra bind.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from nacl import bindings
from nacl.exceptions import CryptoError

from relay.protocol import disco, geneve

ROOT = Path(__file__).resolve().parents[1]
RELAYFLEET = str(Path(sys.executable).parent / "relayfleet")
REFSERVER = ROOT / ".dev" / "bin" / "refserver"
LOOPBACK = "127.0.0.1"
FORWARDER_CPU, BENCH_CPU = 1, 0
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32  # past rmem_max/wmem_max, as root
SO_MEMINFO = 55  # getsockopt: u32[9]; [0] receive memory in use, [8] drops
SYS_PIDFD_GETFD = 438  # same number on every architecture
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
CLIENT_BUFFER = 4 << 20
POOL_BUFFER = 1 << 20
RAISED_LIMIT = "1e9"
RAISED_LIMITS = (
    "--handshake-rate", RAISED_LIMIT,
    "--handshake-burst", RAISED_LIMIT,
    "--handshake-total-rate", RAISED_LIMIT,
)  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)


# -- sockets -----------------------------------------------------------------


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like an exception, so every ``finally`` stops its processes."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


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


def client_socket(buffer: int = CLIENT_BUFFER) -> socket.socket:
    """A UDP socket on an ephemeral loopback port with ``buffer``-byte queues."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_buffers(sock, buffer)
    sock.bind((LOOPBACK, 0))
    return sock


def drain(sock: socket.socket) -> int:
    """Read and count every datagram waiting on ``sock``."""
    count = 0
    sock.setblocking(False)
    try:
        while True:
            sock.recv(65536)
            count += 1
    except BlockingIOError:
        return count
    finally:
        sock.setblocking(True)


# -- the C forwarder -----------------------------------------------------------

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

/* forwarder PORT A_PORT B_PORT [A_IP B_IP]: relays every datagram from A_IP:A_PORT
   to B_IP:B_PORT and back; drops anything from elsewhere. Without IPs: loopback
   only; with them: bound to any address. */
int main(int argc, char **argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: forwarder PORT A_PORT B_PORT [A_IP B_IP]\n");
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
    if (argc == 6) {
        me.sin_addr.s_addr = htonl(INADDR_ANY);
        if (inet_pton(AF_INET, argv[4], &a.sin_addr) != 1
            || inet_pton(AF_INET, argv[5], &b.sin_addr) != 1) {
            fprintf(stderr, "bad IPv4 address\n");
            return 2;
        }
    }
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


def compile_forwarder(directory: str) -> Path:
    source = Path(directory) / "forwarder.c"
    binary = Path(directory) / "forwarder"
    source.write_text(FORWARDER_C)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


# -- processes ---------------------------------------------------------------


def pin_to_forwarder_cpu() -> None:
    if (os.cpu_count() or 1) > FORWARDER_CPU:
        os.sched_setaffinity(0, {FORWARDER_CPU})


def pin_to_bench_cpu() -> None:
    if (os.cpu_count() or 1) > FORWARDER_CPU:
        os.sched_setaffinity(0, {BENCH_CPU})


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def scheduled_ns(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for a CPU) of all threads of ``pid`` (schedstat)."""
    running = waiting = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()
        except OSError:
            continue
        running += int(fields[0])
        waiting += int(fields[1])
    return running, waiting


def ours_command(*extra: str) -> list[str]:
    """``relayfleet relay`` on loopback, memory store, ephemeral ports, plus ``extra`` flags."""
    return [
        RELAYFLEET, "relay", "--listen", LOOPBACK, "--port", "0",
        "--api-listen", "127.0.0.1:0", "--addr", LOOPBACK, "--log-level", "warning", *extra,
    ]  # fmt: skip


def reference_command() -> list[str]:
    return [str(REFSERVER), "--port", "0", "--api-listen", "127.0.0.1:0", "--addr", LOOPBACK]


@dataclass
class Forwarder:
    """A forwarder process pinned to the forwarder CPU, with what its ready line said."""

    name: str
    process: subprocess.Popen
    ready: dict
    sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, command: list[str], started: list[Forwarder]) -> Forwarder:
        """Start ``command`` and wait for its JSON ready line; it is appended to ``started``."""
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=pin_to_forwarder_cpu,
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

    @property
    def api(self) -> str:
        return self.ready["api"]

    @property
    def server_key(self) -> bytes:
        return bytes.fromhex(self.ready["server_disco"].removeprefix("discokey:"))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def scheduled_ns(self) -> tuple[int, int]:
        return scheduled_ns(self.process.pid)

    def take_sockets(self, buffer: int) -> None:
        """Hold duplicates of the forwarder's UDP sockets and give them ``buffer``-byte queues."""
        self.sockets = forwarder_sockets(self.process.pid, self.ready["udp_port"])
        for sock in self.sockets:
            set_buffers(sock, buffer)

    def metrics(self) -> dict[str, float]:
        """``relayfleet relay``'s /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://{self.api}/metrics", timeout=30) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped."""
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
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


def stop_all(started: list[Forwarder]) -> None:
    while started:
        started.pop().stop()


# -- keys ----------------------------------------------------------------------


class KeySet:
    """Distinct client key pairs for ``count`` endpoints, from about sqrt(2 count) keys.

    Pair i is (key a, key b) with a < b, enumerated b = 1, 2, ... and a = 0 .. b-1.
    """

    def __init__(self, count: int) -> None:
        size = 2
        while size * (size - 1) // 2 < count:
            size += 1
        self.count = count
        self.private = [os.urandom(32) for _ in range(size)]
        self.public = [bindings.crypto_scalarmult_base(k) for k in self.private]
        self._texts = [b'"discokey:' + k.hex().encode() + b'"' for k in self.public]
        self._shared: dict[bytes, list[bytes | None]] = {}

    def pair(self, index: int) -> tuple[int, int]:
        """The two key numbers of endpoint ``index``."""
        b = (1 + math.isqrt(1 + 8 * index)) // 2
        return index - b * (b - 1) // 2, b

    def request_body(self, index: int) -> bytes:
        a, b = self.pair(index)
        return b'{"DiscoKeys":[' + self._texts[a] + b"," + self._texts[b] + b"]}"

    def shared(self, key: int, server_key: bytes) -> bytes:
        """The NaCl precomputed key of client key ``key`` with the server (cached)."""
        cache = self._shared.setdefault(server_key, [None] * len(self.private))
        value = cache[key]
        if value is None:
            value = cache[key] = bindings.crypto_box_beforenm(server_key, self.private[key])
        return value


# -- allocation through the HTTP API -------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_VNI = re.compile(rb'"VNI":\s*(\d+)')


def allocate(
    api: str, keys: KeySet, first: int, stop: int, connections: int = 8, depth: int = 32
) -> array:
    """Allocate endpoints ``first`` .. ``stop``-1 of ``keys``; their VNIs, in that order.

    ``connections`` keep-alive connections, each with up to ``depth`` pipelined requests.
    """
    vnis = array("I", bytes(4 * (stop - first)))
    host, port = api.rsplit(":", 1)
    head = f"POST /v0/relay/endpoint HTTP/1.1\r\nHost: {api}\r\n".encode()
    head += b"Content-Type: application/json\r\nContent-Length: "
    position = first

    def take() -> range:
        nonlocal position
        start, position = position, min(stop, position + depth)
        return range(start, position)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while batch := take():
                requests = []
                for index in batch:
                    body = keys.request_body(index)
                    requests.append(b"%s%d\r\n\r\n%s" % (head, len(body), body))
                writer.write(b"".join(requests))
                for index in batch:
                    response = await reader.readuntil(b"\r\n\r\n")
                    length = _CONTENT_LENGTH.search(response)
                    if length is None:
                        raise RuntimeError(f"{api}: response without Content-Length")
                    body = await reader.readexactly(int(length.group(1)))
                    vni = _VNI.search(body)
                    if response[9:12] != b"200" or vni is None:
                        raise RuntimeError(f"{api}: allocation refused: {response[:12]!r} {body!r}")
                    vnis[index - first] = int(vni.group(1))
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    uvloop.run(run())
    return vnis


# -- bind handshakes -------------------------------------------------------------

_BIND_PLAIN = disco.marshal(disco.BindUDPRelayEndpoint())
_NONCE = slice(geneve.HEADER_LEN + disco.NONCE_OFFSET, geneve.HEADER_LEN + disco.BOX_OFFSET)
_BOX = geneve.HEADER_LEN + disco.BOX_OFFSET
_DONE_PAYLOAD = b"bound?"


def control_prefix(keys: KeySet, key: int, vni: int) -> bytes:
    """Geneve control header, disco magic and sender key of client key ``key`` for ``vni``."""
    return geneve.control_header(vni) + disco.MAGIC + keys.public[key]


def bind_datagram(keys: KeySet, key: int, vni: int, server_key: bytes) -> bytes:
    """A BindUDPRelayEndpoint from client key ``key`` for ``vni``, sealed to the server."""
    nonce = os.urandom(disco.NONCE_LEN)
    box = bindings.crypto_box_afternm(_BIND_PLAIN, nonce, keys.shared(key, server_key))
    return control_prefix(keys, key, vni) + nonce + box


def forged_bind(keys: KeySet, key: int, vni: int) -> bytes:
    """A bind as long as a real one, with client key ``key`` as sender and a box of noise."""
    return control_prefix(keys, key, vni) + os.urandom(disco.NONCE_LEN + len(_BIND_PLAIN) + 16)


@dataclass
class BindOutcome:
    """What a :class:`Binder` run did; ``elapsed`` runs from the first bind to the last relay."""

    endpoints: int
    done: int
    elapsed: float
    retries: int
    client_cpu: float
    missing: list[int]


class Binder:
    """Both clients' bind handshakes for ``endpoints`` [(key-set index, VNI), ...].

    Every bind datagram is sealed when the binder is made, so a run times the
    handshakes, not the clients' preparation.
    """

    def __init__(
        self,
        server: tuple[str, int],
        server_key: bytes,
        keys: KeySet,
        endpoints: Sequence[tuple[int, int]],
        sockets: Sequence[socket.socket],
    ) -> None:
        if len(sockets) < 2:
            raise ValueError("the two clients of an endpoint need two sockets")
        self.server = server
        self.sockets = sockets
        self.endpoints = endpoints
        self.by_vni = {vni: slot for slot, (_, vni) in enumerate(endpoints)}
        if len(self.by_vni) != len(endpoints):
            raise ValueError("two endpoints share a VNI")
        self.clients: list[tuple[tuple[bytes, bytes], tuple[bytes, bytes]]] = []
        self.binds: list[tuple[bytes, bytes]] = []
        for index, vni in endpoints:
            a, b = keys.pair(index)
            self.clients.append(
                (
                    (control_prefix(keys, a, vni), keys.shared(a, server_key)),
                    (control_prefix(keys, b, vni), keys.shared(b, server_key)),
                )
            )
            self.binds.append(
                (bind_datagram(keys, a, vni, server_key), bind_datagram(keys, b, vni, server_key))
            )

    def run(self, window: int = 256, retry: float = 1.0, timeout: float = 60.0) -> BindOutcome:
        """Bind every endpoint, at most ``window`` in flight; give up after ``timeout`` s."""
        server = self.server
        sockets = self.sockets
        pool = len(sockets)
        by_vni = self.by_vni
        clients = self.clients
        binds = self.binds
        count = len(self.endpoints)
        answered = bytearray(count)
        datas = [geneve.data_header(vni) + _DONE_PAYLOAD for _, vni in self.endpoints]
        in_flight: dict[int, float] = {}
        open_box = bindings.crypto_box_open_afternm
        seal_box = bindings.crypto_box_afternm
        urandom = os.urandom
        clock = time.perf_counter
        selector = selectors.EpollSelector()
        for number, sock in enumerate(sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, number)
        cpu_before = time.process_time()
        started = last = clock()
        deadline = started + timeout
        next_slot = done = retries = 0
        try:
            while (in_flight or next_slot < count) and clock() < deadline:
                now = clock()
                while len(in_flight) < window and next_slot < count:
                    first, second = binds[next_slot]
                    sockets[client_of(next_slot, 0, pool)].sendto(first, server)
                    sockets[client_of(next_slot, 1, pool)].sendto(second, server)
                    in_flight[next_slot] = now
                    next_slot += 1
                for key, _ in selector.select(0.005):
                    sock = key.fileobj
                    number = key.data
                    while True:
                        try:
                            datagram = sock.recv(4096)
                        except BlockingIOError:
                            break
                        if len(datagram) < geneve.HEADER_LEN:
                            continue
                        slot = by_vni.get(int.from_bytes(datagram[4:7], "big"))
                        if slot is None:
                            continue
                        if not datagram[1] & geneve.CONTROL_BIT:
                            if in_flight.pop(slot, None) is not None:
                                done += 1
                                last = clock()
                            continue
                        side = 0 if client_of(slot, 0, pool) == number else 1
                        prefix, shared = clients[slot][side]
                        try:
                            plain = open_box(datagram[_BOX:], datagram[_NONCE], shared)
                        except CryptoError:
                            continue
                        if plain[0] != disco.TYPE_CHALLENGE or len(plain) < 34:
                            continue
                        nonce = urandom(24)
                        answer = bytes((disco.TYPE_ANSWER, 0)) + plain[2:34]
                        sock.sendto(prefix + nonce + seal_box(answer, nonce, shared), server)
                        answered[slot] |= 1 << side
                        if answered[slot] == 3:
                            sockets[client_of(slot, 0, pool)].sendto(datas[slot], server)
                now = clock()
                while in_flight:
                    slot, sent_at = next(iter(in_flight.items()))
                    if now - sent_at < retry:
                        break
                    del in_flight[slot]
                    first, second = binds[slot]
                    sockets[client_of(slot, 0, pool)].sendto(first, server)
                    sockets[client_of(slot, 1, pool)].sendto(second, server)
                    if answered[slot] == 3:
                        sockets[client_of(slot, 0, pool)].sendto(datas[slot], server)
                    in_flight[slot] = now
                    retries += 1
        finally:
            selector.close()
            for sock in sockets:
                sock.setblocking(True)
        missing = sorted(in_flight) + list(range(next_slot, count))
        return BindOutcome(
            count, done, last - started, retries, time.process_time() - cpu_before, missing
        )


def client_of(slot: int, side: int, pool: int) -> int:
    """The pool socket that client ``side`` (0 or 1) of the ``slot``-th endpoint of a run uses."""
    return (2 * slot + side) % pool


def refresh(
    server: tuple[str, int],
    sockets: Sequence[socket.socket],
    runs: Sequence[Sequence[int]],
    queue: Sequence[socket.socket],
    batch: int = 4096,
) -> int:
    """One data packet from each client of every endpoint bound by earlier :class:`Binder` runs.

    ``runs`` holds each run's VNIs in slot order, so both clients' last-seen
    times move on and a steady-state lifetime starts again. After each ``batch``
    of sends it waits until ``queue`` (the forwarder's sockets) has drained and
    empties ``sockets``. Returns the packets sent.
    """
    pool = len(sockets)
    sent = 0
    for vnis in runs:
        for slot, vni in enumerate(vnis):
            datagram = geneve.data_header(vni) + _DONE_PAYLOAD
            for side in (0, 1):
                sockets[client_of(slot, side, pool)].sendto(datagram, server)
            sent += 2
            if sent % batch < 2:
                wait_drained(queue)
                for sock in sockets:
                    drain(sock)
    wait_drained(queue)
    for sock in sockets:
        drain(sock)
    return sent


def wait_drained(queue: Sequence[socket.socket], timeout: float = 10.0) -> None:
    """Wait until the forwarder's receive queues are empty (or ``timeout`` s passed)."""
    deadline = time.monotonic() + timeout
    while any(meminfo(sock)[0] for sock in queue) and time.monotonic() < deadline:
        time.sleep(0.0005)


def table(rows: list[list[str]], left: int = 0) -> None:
    """Print columns two spaces apart: the first ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))]
