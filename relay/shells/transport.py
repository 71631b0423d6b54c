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

Trains (issue 17): Python's per-datagram cost is paid once per train where the
kernel allows it.

* Send (UDP GSO): a batch's relayed datagrams are grouped by destination,
  each group in the order received (datagrams for different destinations
  may pass one another, never two for the same one); a group's datagrams of
  one size (the last may be shorter) go out as one ``sendmmsg`` entry with a
  ``UDP_SEGMENT`` control message, their slots gathered by several iovecs
  (no copy); at most :data:`GSO_MAX_SEGMENTS` segments and
  :data:`GSO_MAX_BYTES` bytes per entry.
* Receive (UDP GRO): the socket takes ``UDP_GRO`` and each received message
  has room for its control message; a coalesced train (its ``gso_size``
  below its length) goes to :meth:`RelayCore.handle_train`, which checks
  every segment, and what it relays goes out as GSO sends straight from the
  slot.
* Fallback: where the kernel refuses ``UDP_GRO`` or has no ``UDP_SEGMENT``
  (the probes below), that half stays off; a GSO send refused with EIO or
  EINVAL (a device without checksum offload, ``SO_NO_CHECK``) turns GSO off
  for the socket and is sent again datagram by datagram. ``--udp-gso off``
  and ``--udp-gro off`` turn either off from the start.
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

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
"""The kernel's UDP_MAX_SEGMENTS on older kernels (newer ones take 128)."""
GSO_MAX_BYTES = 65535 - 20 - 8
"""The largest UDP payload of one IPv4 datagram, the tighter of the two families."""
SEND_MESSAGES = 1024
"""sendmmsg entries (and iovecs) queued before a send: the kernel's UIO_MAXIOV."""
_CONTROL_SPACE = 24  # CMSG_SPACE(sizeof(int)): a 16-byte cmsghdr and the value, aligned
_SEGMENT_CONTROL_LEN = 18  # CMSG_LEN(sizeof(uint16_t))
# an mmsghdr in 64-bit words: msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control,
# msg_controllen, msg_flags, msg_len; the words written per entry:
_HEADER_WORDS = 8
_IOV, _IOVLEN, _CONTROLLEN = 2, 3, 5
_GSO_REFUSED = (errno.EIO, errno.EINVAL)

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
_sendto_at = _libc["sendto"]  # a function pointer of its own: raw addresses, not bytes
_sendto_at.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint32,
]
_sendto_at.restype = ctypes.c_ssize_t


def enable_udp_gro(sock: socket.socket) -> bool:
    """Turn UDP_GRO on for ``sock``; False where the kernel refuses it."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def udp_gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT for ``sock`` (a send may still refuse it)."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def unbound_udp_socket(host: str, reuseport: bool = False) -> socket.socket:
    """A non-blocking UDP socket for ``host``'s family, with the relay's buffer sizes (and
    SO_REUSEPORT if asked: relay/shells/reuseport.py); ``::`` also takes IPv4 (dual stack)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A bound :func:`unbound_udp_socket`."""
    sock = unbound_udp_socket(host)
    try:
        sock.bind((host, port))
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


class _SendQueue:
    """:data:`SEND_MESSAGES` mmsghdrs, iovecs, address slots and UDP_SEGMENT control messages.

    Entries are filled in order, each with one or more consecutive iovecs; an
    entry of more than one segment has its control message on
    (``msg_controllen``), any other has it off.
    """

    def __init__(self, name_len: int) -> None:
        count = SEND_MESSAGES
        self.headers = (_MMsgHdr * count)()
        self.iovecs = (_IoVec * count)()
        self.names = ctypes.create_string_buffer(count * name_len)
        self.controls = ctypes.create_string_buffer(count * _CONTROL_SPACE)
        names_at = ctypes.addressof(self.names)
        controls_at = ctypes.addressof(self.controls)
        control_words = memoryview(self.controls).cast("B").cast("i")
        for i in range(count):
            header = self.headers[i].msg_hdr
            header.msg_name = names_at + i * name_len
            header.msg_namelen = name_len
            header.msg_control = controls_at + i * _CONTROL_SPACE
            words = i * _CONTROL_SPACE // 4
            control_words[words] = _SEGMENT_CONTROL_LEN  # cmsg_len (little-endian size_t)
            control_words[words + 2] = SOL_UDP
            control_words[words + 3] = UDP_SEGMENT
        self.address = ctypes.addressof(self.headers)
        self.iovecs_at = ctypes.addressof(self.iovecs)
        self.header_words = memoryview(self.headers).cast("B").cast("Q")
        self.iovec_words = memoryview(self.iovecs).cast("B").cast("Q")
        self.names_view = memoryview(self.names).cast("B")
        self.segment_sizes = memoryview(self.controls).cast("B").cast("H")
        """The uint16 of entry ``i`` is at ``i * _CONTROL_SPACE // 2 + 8``."""

    def segments(self, first: int, stop: int) -> list[tuple[int, int, int, int]]:
        """Entries ``first:stop`` as datagrams: (address, length, name, name length) each."""
        words, iovecs = self.header_words, self.iovec_words
        datagrams = []
        for i in range(first, stop):
            o = i * _HEADER_WORDS
            name, name_len = words[o], words[o + 1] & 0xFFFFFFFF
            step = self.segment_sizes[i * _CONTROL_SPACE // 2 + 8] if words[o + _CONTROLLEN] else 0
            iovec = (words[o + _IOV] - self.iovecs_at) // ctypes.sizeof(_IoVec)
            for k in range(iovec, iovec + words[o + _IOVLEN]):
                base, length = iovecs[2 * k], iovecs[2 * k + 1]
                size = step or length or 1
                datagrams.extend(
                    (base + at, min(size, length - at), name, name_len)
                    for at in range(0, length, size)
                )
        return datagrams


class BatchedUdpTransport:
    """Reads datagrams in batches, feeds them to the core, sends what it answers.

    Counts what the kernel refused: ``send_errors`` (datagrams not sent) and
    ``receive_errors`` (failed reads other than "nothing to read"); and the
    trains: ``gso_sends`` (sendmmsg entries of several segments) and
    ``trains_received`` (GRO reads of several segments). ``gso`` and ``gro``
    say whether each is on: asked for, and not refused by the kernel.
    """

    def __init__(
        self,
        sock: socket.socket,
        core: RelayCore,
        clock: Callable[[], float],
        gso: bool = True,
        gro: bool = True,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._handle = core.handle
        self._handle_train = core.handle_train
        self._clock = clock
        self.name_len = 28 if sock.family == socket.AF_INET6 else 16
        self.send_errors = 0
        self.receive_errors = 0
        self.gso_sends = 0
        self.trains_received = 0
        self.gso = gso and udp_gso_supported(sock)
        self.gro = gro and enable_udp_gro(sock)
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
        header_words = ctypes.sizeof(_MMsgHdr) // 4
        length_word = _MMsgHdr.msg_len.offset // 4
        self._length_words = [i * header_words + length_word for i in range(BATCH)]
        self._received_words = memoryview(self._received.headers).cast("B").cast("Q")
        self._controls = ctypes.create_string_buffer(BATCH * _CONTROL_SPACE)
        self._control_words = memoryview(self._controls).cast("B").cast("i")
        if self.gro:
            controls_at = ctypes.addressof(self._controls)
            for i in range(BATCH):
                header = self._received.headers[i].msg_hdr
                header.msg_control = controls_at + i * _CONTROL_SPACE
                header.msg_controllen = _CONTROL_SPACE
        # the headers as laid out, copied back over those a read filled in (msg_controllen)
        self._received_layout = (ctypes.c_char * ctypes.sizeof(self._received.headers))()
        ctypes.memmove(self._received_layout, self._received.address, len(self._received_layout))
        self._sending = _SendQueue(self.name_len)
        self._groups: dict[bytes, list[int]] = {}
        """A batch's relayed datagrams: their slot numbers by destination, in order."""
        self._send_name_slices = [
            slice(i * self.name_len, (i + 1) * self.name_len) for i in range(SEND_MESSAGES)
        ]

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
        received_words = self._received_words
        control_words = self._control_words
        length_words = self._length_words
        slot_starts = self._slot_starts
        name_slices = self._name_slices
        slots = self._slots_view
        handle = self._handle
        groups = self._groups
        gro = self.gro
        now = self._clock()
        for _ in range(BATCHES_PER_WAKEUP):
            count = _recvmmsg(self._fd, received.address, BATCH, _MSG_DONTWAIT, None)
            if count <= 0:
                if count < 0 and ctypes.get_errno() not in _RETRY_LATER:
                    self.receive_errors += 1
                return
            names = received.names.raw
            queued = used = 0  # sendmmsg entries and iovecs taken
            for i in range(count):
                start = slot_starts[i]
                size = header_words[length_words[i]]
                if gro and received_words[i * _HEADER_WORDS + _CONTROLLEN]:
                    c = i * (_CONTROL_SPACE // 4)
                    train = control_words[c + 4]
                    if (
                        control_words[c + 2] == SOL_UDP
                        and control_words[c + 3] == UDP_GRO
                        and 0 < train < size
                    ):
                        if groups:  # what came before goes first
                            queued, used = self._queue_groups(queued, used)
                        queued, used = self._relay_train(i, size, train, names, now, queued, used)
                        continue
                datagram = slots[start : start + size]
                answer = handle(datagram, names[name_slices[i]], now)
                if answer is None:
                    continue
                payload, destination = answer
                if payload is not datagram:
                    self._send_one(payload, destination)
                    continue
                group = groups.get(destination)
                if group is None:
                    groups[destination] = [i]
                else:
                    group.append(i)
            if groups:
                queued, used = self._queue_groups(queued, used)
            if gro:
                ctypes.memmove(
                    received.address, self._received_layout, count * ctypes.sizeof(_MMsgHdr)
                )
            if queued:
                self._send_queued(queued)
            if count < BATCH:
                return

    def _queue_groups(self, queued: int, used: int) -> tuple[int, int]:
        """Queue the relayed datagrams of :attr:`_groups` (slot numbers by destination, in
        the order received), and empty it: each destination's datagrams in entries of
        one size, the last of an entry maybe shorter, as UDP_SEGMENT wants them, within
        the kernel's limits; the queue's new (entries, iovecs)."""
        sending = self._sending
        words = sending.header_words
        iovecs = sending.iovec_words
        iovecs_at = sending.iovecs_at
        send_names = sending.names_view
        send_name_slices = self._send_name_slices
        segment_sizes = sending.segment_sizes
        header_words = self._received.header_words
        length_words = self._length_words
        slot_addresses = self._slot_addresses
        limit = GSO_MAX_SEGMENTS if self.gso else 1
        gso_sends = 0
        for destination, slots in self._groups.items():
            segment = segments = total = 0  # of the open entry; segment 0: none open
            for i in slots:
                size = header_words[length_words[i]]
                if (
                    size <= segment
                    and segments < limit
                    and total + size <= GSO_MAX_BYTES
                    and used < SEND_MESSAGES
                ):
                    # one more segment of the open entry; a shorter one is its last
                    iovecs[2 * used] = slot_addresses[i]
                    iovecs[2 * used + 1] = size
                    used += 1
                    segments += 1
                    total += size
                    o = (queued - 1) * _HEADER_WORDS
                    words[o + _IOVLEN] = segments
                    if segments == 2:
                        words[o + _CONTROLLEN] = _CONTROL_SPACE
                        segment_sizes[(queued - 1) * (_CONTROL_SPACE // 2) + 8] = segment
                        gso_sends += 1
                    if size < segment:
                        segment = 0
                    continue
                if queued == SEND_MESSAGES or used == SEND_MESSAGES:
                    self._send_queued(queued)
                    queued = used = 0
                o = queued * _HEADER_WORDS
                words[o + _IOV] = iovecs_at + 16 * used
                words[o + _IOVLEN] = 1
                words[o + _CONTROLLEN] = 0
                send_names[send_name_slices[queued]] = destination
                iovecs[2 * used] = slot_addresses[i]
                iovecs[2 * used + 1] = size
                used += 1
                queued += 1
                segment, segments, total = size, 1, size
        self._groups.clear()
        self.gso_sends += gso_sends
        return queued, used

    def _relay_train(
        self, i: int, size: int, segment: int, names: bytes, now: float, queued: int, used: int
    ) -> tuple[int, int]:
        """Slot ``i`` holds a GRO train of ``segment``-byte datagrams: let the core check
        each, queue what it relays as GSO entries (one iovec each, at most
        :data:`GSO_MAX_SEGMENTS` segments and :data:`GSO_MAX_BYTES` bytes), send its
        answers; the queue's new (entries, iovecs)."""
        self.trains_received += 1
        start = self._slot_starts[i]
        runs, answers = self._handle_train(
            self._slots_view[start : start + size],
            segment,
            names[self._name_slices[i]],
            now,
        )
        sending = self._sending
        words, iovecs = sending.header_words, sending.iovec_words
        base = self._slot_addresses[i]
        per_send = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment)) if self.gso else 1
        chunk = per_send * segment
        for run_start, run_stop, destination in runs:
            for at in range(run_start, run_stop, chunk):
                if queued == SEND_MESSAGES or used == SEND_MESSAGES:
                    self._send_queued(queued)
                    queued = used = 0
                length = min(chunk, run_stop - at)
                o = queued * _HEADER_WORDS
                words[o + _IOV] = sending.iovecs_at + 16 * used
                words[o + _IOVLEN] = 1
                if length > segment:
                    words[o + _CONTROLLEN] = _CONTROL_SPACE
                    sending.segment_sizes[queued * (_CONTROL_SPACE // 2) + 8] = segment
                    self.gso_sends += 1
                else:
                    words[o + _CONTROLLEN] = 0
                sending.names_view[self._send_name_slices[queued]] = destination
                iovecs[2 * used] = base + at
                iovecs[2 * used + 1] = length
                used += 1
                queued += 1
        for payload, destination in answers:
            self._send_one(payload, destination)
        return queued, used

    def _send_queued(self, queued: int) -> None:
        header_size = ctypes.sizeof(_MMsgHdr)
        first = 0
        while first < queued:
            sent = _sendmmsg(
                self._fd, self._sending.address + first * header_size, queued - first, 0
            )
            if sent >= 0:
                first += sent
                continue
            error = ctypes.get_errno()
            if error in _RETRY_LATER:
                self.send_errors += len(self._sending.segments(first, queued))
                return
            if (
                error in _GSO_REFUSED
                and self._sending.header_words[first * _HEADER_WORDS + _CONTROLLEN]
            ):
                # the device cannot segment (no checksum offload, SO_NO_CHECK): GSO off for
                # good on this socket; this and the rest of the queue go one by one
                self.gso = False
                self._send_singly(first, queued)
                return
            self.send_errors += len(self._sending.segments(first, first + 1))
            first += 1

    def _send_singly(self, first: int, stop: int) -> None:
        """Send entries ``first:stop`` one datagram per system call."""
        for address, length, name, name_len in self._sending.segments(first, stop):
            if _sendto_at(self._fd, address, length, 0, name, name_len) < 0:
                self.send_errors += 1

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
