"""UDP sockets of the benches: the clients' own, and duplicates of a forwarder's.

A bench gives every forwarder's socket the same receive queue (SO_RCVBUFFORCE
on a pidfd_getfd duplicate, as root), so that none loses packets to a smaller
queue, and reads queue use and drops (SO_MEMINFO) to time a drain.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from collections.abc import Sequence

from relay.shells.transport import SOL_UDP, UDP_SEGMENT

LOOPBACK = "127.0.0.1"
CLIENT_BUFFER = 4 << 20
POOL_BUFFER = 1 << 20
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32  # past rmem_max/wmem_max, as root
SO_MEMINFO = 55  # getsockopt: u32[9]; [0] receive memory in use, [8] drops
SYS_PIDFD_GETFD = 438  # same number on every architecture
SO_TIMESTAMPNS = 35  # each datagram carries its arrival time (CLOCK_REALTIME, struct timespec)

_libc = ctypes.CDLL(None, use_errno=True)


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
    """Duplicates of every IPv4 UDP socket of process ``pid`` bound to ``port`` (pidfd_getfd):
    the benches' clients are IPv4."""
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
            if (
                sock.family == socket.AF_INET
                and sock.type == socket.SOCK_DGRAM
                and sock.getsockname()[1] == port
            ):
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
    return drain_stamped(sock)[0]


def segment_control(size: int) -> list[tuple[int, int, bytes]]:
    """The control message of a GSO send (``sendmsg``) whose datagrams are ``size`` bytes."""
    return [(SOL_UDP, UDP_SEGMENT, struct.pack("H", size))]


def stamp_arrivals(sock: socket.socket) -> None:
    """Have the kernel note on each datagram ``sock`` receives when it arrived."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def drain_stamped(sock: socket.socket) -> tuple[int, int]:
    """Read and count every datagram waiting on ``sock`` (see :func:`stamp_arrivals`): (their
    number, the last one's arrival in ns of CLOCK_REALTIME, as ``time.time_ns()``; 0 if none)."""
    count, last = 0, []
    sock.setblocking(False)
    try:
        while True:
            last = sock.recvmsg(65536, 64)[1]
            count += 1
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    for level, kind, data in last:
        if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
            seconds, nanoseconds = struct.unpack("qq", data)
            return count, seconds * 1_000_000_000 + nanoseconds
    return count, 0


def wait_drained(queue: Sequence[socket.socket], timeout: float = 10.0) -> None:
    """Wait until the forwarder's receive queues are empty (or ``timeout`` s passed)."""
    deadline = time.monotonic() + timeout
    while any(meminfo(sock)[0] for sock in queue) and time.monotonic() < deadline:
        time.sleep(0.0005)
