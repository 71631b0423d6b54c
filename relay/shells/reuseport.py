"""Several worker processes on one UDP port, each endpoint's datagrams always to the same one.

A relay endpoint's state (its two bound clients, their handshakes) lives in
the worker that handles its VNI, so every datagram with that VNI, data or
control, from either client, must reach that worker; the kernel's default
SO_REUSEPORT spreading hashes the source address and would split an
endpoint's two clients between workers. So the parent process opens the
group's sockets (:func:`open_worker_sockets`), hands socket ``i`` to worker
``i`` and keeps every one open, so that the group's order never changes
when a worker dies; and it attaches a classic BPF reuseport program that
returns :func:`worker_for_vni` of the datagram's Geneve VNI as the index of
the socket in the group.

What the kernel does (found on Linux 6.18 by trying; tests/relay/shells/test_reuseport.py
checks the first three points, over IPv4 and IPv6):

* For UDP the program sees the UDP payload at offset 0 (the kernel pulls the
  UDP header before running it), so the VNI is the word at offset 4,
  shifted right by 8.
* A datagram shorter than 8 bytes makes that load fail, which ends a classic
  BPF program with 0: it goes to socket 0. The relay drops such datagrams
  anyway (docs/protocol.md).
* A socket's index is the order in which it joined the group by binding.
* The program belongs to the group, not to a socket: attached to any bound
  member it steers the whole group; attached to the first socket before its
  bind it works as well, but attached to any other socket before its bind it
  gives that socket a group of its own, and its bind then fails with
  EADDRINUSE. So it is attached to the first socket once bound.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from relay.shells.transport import unbound_udp_socket

SO_ATTACH_REUSEPORT_CBPF = 51

BPF_LD = 0x00
BPF_ALU = 0x04
BPF_RET = 0x06
BPF_W = 0x00
BPF_ABS = 0x20
BPF_RSH = 0x70
BPF_MOD = 0x90
BPF_K = 0x00
BPF_A = 0x10

LOAD_WORD = BPF_LD | BPF_W | BPF_ABS
SHIFT_RIGHT = BPF_ALU | BPF_RSH | BPF_K
MODULO = BPF_ALU | BPF_MOD | BPF_K
RETURN_A = BPF_RET | BPF_A
RETURN_K = BPF_RET | BPF_K

VNI_WORD_OFFSET = 4
"""Bytes 4-7 of the Geneve header: the 24-bit VNI and a reserved byte."""
VNI_SHIFT = 8

_INSTRUCTION = struct.Struct("=HBBI")
"""struct sock_filter: code, jt, jf, k, in native byte order."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")


def worker_for_vni(vni: int, workers: int) -> int:
    """The index of the worker (and of its socket in the group) that owns ``vni``."""
    return vni % workers


def vni_steering_program(workers: int) -> bytes:
    """The classic BPF instructions computing :func:`worker_for_vni` of a datagram's VNI."""
    _check_workers(workers)
    if workers == 1:
        instructions = [(RETURN_K, 0, 0, 0)]
    else:
        instructions = [
            (LOAD_WORD, 0, 0, VNI_WORD_OFFSET),
            (SHIFT_RIGHT, 0, 0, VNI_SHIFT),
            (MODULO, 0, 0, workers),
            (RETURN_A, 0, 0, 0),
        ]
    return b"".join(_INSTRUCTION.pack(*instruction) for instruction in instructions)


def attach_vni_steering(sock: socket.socket, workers: int) -> None:
    """Attach :func:`vni_steering_program` to the reuseport group of ``sock``.

    Raises OSError if the kernel refuses (``sock`` without SO_REUSEPORT, a
    kernel without SO_ATTACH_REUSEPORT_CBPF).
    """
    program = vni_steering_program(workers)
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _INSTRUCTION.size, ctypes.addressof(instructions))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError as error:
        raise OSError(
            error.errno,
            f"the kernel refused the VNI steering program for {workers} workers "
            f"(SO_ATTACH_REUSEPORT_CBPF): {error.strerror}",
        ) from error


def open_worker_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """``workers`` bound, non-blocking UDP sockets sharing (``host``, ``port``), VNI-steered.

    Socket ``i`` receives the datagrams of the VNIs that :func:`worker_for_vni`
    gives to worker ``i``. Port 0 binds the first socket to an ephemeral port
    and the others to that same one. Socket options are those of
    :func:`relay.shells.transport.open_udp_socket`. If any step fails, every
    socket opened is closed and the OSError raised.
    """
    _check_workers(workers)
    sockets: list[socket.socket] = []
    try:
        for i in range(workers):
            sock = unbound_udp_socket(host, reuseport=True)
            sockets.append(sock)
            sock.bind((host, port))
            if i == 0:
                port = sock.getsockname()[1]
                attach_vni_steering(sock, workers)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def probe_vni_steering() -> None:
    """Raises OSError where this kernel (or its seccomp policy) refuses a steered group: two
    sockets on a free loopback port, with the program attached, then closed."""
    for sock in open_worker_sockets("127.0.0.1", 0, 2):
        sock.close()
