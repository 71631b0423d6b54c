"""The UDP shell around the relay core: batched receive and send, and nothing else.

The relay is limited by the kernel's per-datagram work, not by Python, only
if Python pays its fixed costs per batch rather than per datagram. So the
socket is read with ``recvmmsg`` and written with ``sendmmsg`` (through
ctypes), up to :data:`BATCH` datagrams per system call, into buffers laid out
once at start:

* each received datagram lands in its own slot of one anonymous mapping;
* a relayed datagram is sent from that same slot: user space never copies it;
* a source address is the kernel's ``sockaddr`` bytes, which the core only
  compares and hands back as a destination; :func:`relay.protocol.addresses.format_address`
  turns them into text for status and the API.

Each datagram goes to :meth:`RelayCore.handle` as a memoryview of its slot,
with one clock reading per wake-up. No logging, no awaiting, no locks here.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import socket
from collections.abc import Callable

from relay.protocol.core import RelayCore

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
BATCH = 64
SLOT_BYTES = 65536
BATCHES_PER_WAKEUP = 16

_MSG_DONTWAIT = 0x40
_RETRY_LATER = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_sendto = _libc.sendto
_sendto.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint32,
]
_sendto.restype = ctypes.c_ssize_t


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket; ``::`` also takes IPv4 (dual stack)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _address_of(buffer: object) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class _Messages:
    """``count`` mmsghdrs, each with one iovec and its own ``name_len``-byte address slot."""

    def __init__(self, count: int, name_len: int) -> None:
        self.headers = (_MMsgHdr * count)()
        self.iovecs = (_IoVec * count)()
        self.names = ctypes.create_string_buffer(count * name_len)
        names_at = ctypes.addressof(self.names)
        for i in range(count):
            header = self.headers[i].msg_hdr
            header.msg_name = names_at + i * name_len
            header.msg_namelen = name_len
            header.msg_iov = ctypes.addressof(self.iovecs[i])
            header.msg_iovlen = 1
        self.address = ctypes.addressof(self.headers)
        self.iovec_words = memoryview(self.iovecs).cast("B").cast("Q")
        self.header_words = memoryview(self.headers).cast("B").cast("I")
        self.names_view = memoryview(self.names).cast("B")


class BatchedUdpTransport:
    """Reads datagrams in batches, feeds them to the core, sends what it answers.

    Counts what the kernel refused: ``send_errors`` (datagrams not sent) and
    ``receive_errors`` (failed reads other than "nothing to read").
    """

    def __init__(self, sock: socket.socket, core: RelayCore, clock: Callable[[], float]) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._handle = core.handle
        self._clock = clock
        self.name_len = 28 if sock.family == socket.AF_INET6 else 16
        self.send_errors = 0
        self.receive_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

        self._slots = mmap.mmap(-1, BATCH * SLOT_BYTES)
        self._slots_view = memoryview(self._slots)
        slots_at = _address_of(self._slots)
        self._slot_starts = [i * SLOT_BYTES for i in range(BATCH)]
        self._slot_addresses = [slots_at + start for start in self._slot_starts]
        self._name_slices = [
            slice(i * self.name_len, (i + 1) * self.name_len) for i in range(BATCH)
        ]

        self._received = _Messages(BATCH, self.name_len)
        for i in range(BATCH):
            self._received.iovecs[i].iov_base = self._slot_addresses[i]
            self._received.iovecs[i].iov_len = SLOT_BYTES
        self._sending = _Messages(BATCH, self.name_len)
        header_words = ctypes.sizeof(_MMsgHdr) // 4
        length_word = _MMsgHdr.msg_len.offset // 4
        self._length_words = [i * header_words + length_word for i in range(BATCH)]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self._sock.close()

    def _on_readable(self) -> None:
        received = self._received
        header_words = received.header_words
        length_words = self._length_words
        slot_starts = self._slot_starts
        slot_addresses = self._slot_addresses
        name_slices = self._name_slices
        slots = self._slots_view
        send_iovecs = self._sending.iovec_words
        send_names = self._sending.names_view
        handle = self._handle
        now = self._clock()
        for _ in range(BATCHES_PER_WAKEUP):
            count = _recvmmsg(self._fd, received.address, BATCH, _MSG_DONTWAIT, None)
            if count <= 0:
                if count < 0 and ctypes.get_errno() not in _RETRY_LATER:
                    self.receive_errors += 1
                return
            names = received.names.raw
            queued = 0
            for i in range(count):
                start = slot_starts[i]
                size = header_words[length_words[i]]
                datagram = slots[start : start + size]
                answer = handle(datagram, names[name_slices[i]], now)
                if answer is None:
                    continue
                payload, destination = answer
                if payload is datagram:
                    send_iovecs[2 * queued] = slot_addresses[i]
                    send_iovecs[2 * queued + 1] = size
                    send_names[name_slices[queued]] = destination
                    queued += 1
                else:
                    self._send_one(payload, destination)
            if queued:
                self._send_queued(queued)
            if count < BATCH:
                return

    def _send_queued(self, queued: int) -> None:
        header_size = ctypes.sizeof(_MMsgHdr)
        first = 0
        while first < queued:
            sent = _sendmmsg(
                self._fd, self._sending.address + first * header_size, queued - first, 0
            )
            if sent < 0:
                if ctypes.get_errno() in _RETRY_LATER:
                    self.send_errors += queued - first
                    return
                self.send_errors += 1
                first += 1
            else:
                first += sent

    def _send_one(self, payload: bytes, destination: bytes) -> None:
        if _sendto(self._fd, payload, len(payload), 0, destination, len(destination)) < 0:
            self.send_errors += 1


def ipv6_available() -> bool:
    """Whether this host can open an IPv6 UDP socket."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
