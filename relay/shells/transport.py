"""The UDP shell around the relay core: batched receive and send, and nothing else.

The relay is limited by the kernel's per-datagram work, not by Python, only
if Python pays its fixed costs per batch rather than per datagram. So the
socket is read with ``recvmmsg`` and written with ``sendmmsg`` (through
ctypes), up to :data:`BATCH` datagrams per system call, into buffers laid out
once at start:

* each received datagram lands in its own slot of one anonymous mapping;
* a relayed datagram is sent from that same slot: user space never copies it;
* an answer the core makes (a challenge) is copied into an answer slot and
  goes out in the same ``sendmmsg`` as what the read relays;
* a source address is the kernel's ``sockaddr`` bytes, which the core only
  compares and hands back as a destination; :func:`relay.protocol.addresses.format_address`
  turns them into text for status and the API.

The single datagrams of a read go to :meth:`RelayCore.handle_batch` together:
the slots, their sizes (the mmsghdrs' ``msg_len``, read in place) and their
sources (unpacked in one ``struct`` call), with one clock reading per wake-up,
and whether they are all of one size and of one header (compared in place: a
busy endpoint's read makes no int per datagram for either). The core relays
most of a busy batch inline (a datagram like one it relayed just before, from
the same source), so on this path the interpreter's work per datagram is a few
operations, and what the shell does with the result is paid per destination:
a group's iovecs are copied in at once. No logging, no awaiting, no locks here.

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
* When to receive with GRO (``--udp-gro auto``, the default): a socket with
  ``UDP_GRO`` on costs the kernel more per single datagram (about a tenth of a
  200-byte datagram's relaying on loopback, docs/performance.md), and GRO only
  pays where the kernel can coalesce: datagrams of one source arriving back to
  back, as a GSO send or a busy peer behind a NIC gives them. So the socket
  starts without it, and every :data:`GRO_AUTO_CHECK_EVERY`-th full read looks
  at whether its datagrams come from one source back to back
  (:func:`back_to_back`); the first that does turns ``UDP_GRO`` on for the
  socket's life. Never off again: a train the kernel coalesced before the
  switch would then be read as one datagram, without its segment size.
  ``--udp-gro on`` receives with GRO from the start, ``off`` never.
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
import struct
from array import array
from collections.abc import Callable, Sequence
from operator import eq, itemgetter

from relay.protocol.core import RelayCore

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
BATCH = 128
"""Datagrams per read, as v1.102.5 reads: a batch's fixed costs (two system calls
through ctypes, a few dozen interpreted steps, a GSO send per destination) are
shared by twice as many datagrams as at 64 (docs/performance.md, 2026-12-04)."""
SLOT_BYTES = 65536
"""Room for a whole GRO train; the mapping is virtual memory until a slot is used
(a single datagram touches one page of its slot)."""
BATCHES_PER_WAKEUP = 8
"""Reads per wake-up before other callbacks (timers, the agent) get their turn."""
GRO_AUTO_CHECK_EVERY = 8
"""Under ``--udp-gro auto``, full reads (:data:`BATCH` datagrams) between two looks at
whether a read's datagrams come back to back from one source: a look costs about
20 ns per datagram, the kernel's GRO about 170 ns at 200 bytes."""
GRO_MODES = ("auto", "on", "off")

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
"""The kernel's UDP_MAX_SEGMENTS on older kernels (newer ones take 128)."""
GSO_MAX_BYTES = 65535 - 20 - 8
"""The largest UDP payload of one IPv4 datagram, the tighter of the two families."""
SEND_MESSAGES = 1024
"""sendmmsg entries (and iovecs) queued before a send: the kernel's UIO_MAXIOV."""
ANSWER_BYTES = 256
"""Room for one answer the core makes (a version 1 challenge is 160 bytes) in the
answer slots, from which answers are sent with what the batch relays."""
ANSWER_SLOTS = BATCH
"""Answers queued before a send: one per datagram of a read of single datagrams."""
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


_IOVEC = struct.Struct("@PN")
"""An :class:`_IoVec` as bytes."""


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


def back_to_back(sources: Sequence[bytes]) -> bool:
    """Whether at least half the datagrams of a read share their source with the one before:
    what UDP GRO would have coalesced into trains."""
    return 2 * sum(map(eq, sources, sources[1:])) >= len(sources)


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


def _received_words(headers: ctypes.Array, offset: int, format: str) -> memoryview:
    """The field at byte ``offset`` of each mmsghdr of ``headers``, of struct ``format``:
    read in place, an int made only for an item looked at."""
    width = struct.calcsize(format)
    words = memoryview(headers).cast("B").cast(format)
    return words[offset // width :: ctypes.sizeof(_MMsgHdr) // width]


_REPEATED: dict[int, array] = {}


def _repeated(value: int, count: int) -> array:
    """``count`` times ``value`` as unsigned 64-bit words (a few sizes recur: kept)."""
    words = _REPEATED.get(value)
    if words is None or len(words) < count:
        if len(_REPEATED) >= 256:
            _REPEATED.clear()
        words = _REPEATED[value] = array("Q", [value]) * max(count, GSO_MAX_SEGMENTS)
    return words[:count]


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
        self.iovec_bytes = memoryview(self.iovecs).cast("B")
        self.iovec_words = self.iovec_bytes.cast("Q")
        self.names_view = memoryview(self.names).cast("B")
        self.segment_sizes = memoryview(self.controls).cast("B").cast("H")
        """The uint16 of entry ``i`` is at ``i * _CONTROL_SPACE // 2 + 8``."""
        self.name_slices = [slice(i * name_len, (i + 1) * name_len) for i in range(count)]

    def open_entry(
        self, entry: int, iovec: int, iovecs: int, segment: int, destination: bytes
    ) -> None:
        """Entry ``entry`` sends ``iovecs`` iovecs from number ``iovec`` on to ``destination``,
        as one UDP_SEGMENT send of ``segment``-byte segments, or as one datagram where
        ``segment`` is 0."""
        words = self.header_words
        o = entry * _HEADER_WORDS
        words[o + _IOV] = self.iovecs_at + 16 * iovec
        words[o + _IOVLEN] = iovecs
        if segment:
            words[o + _CONTROLLEN] = _CONTROL_SPACE
            self.segment_sizes[entry * (_CONTROL_SPACE // 2) + 8] = segment
        else:
            words[o + _CONTROLLEN] = 0
        self.names_view[self.name_slices[entry]] = destination

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
    say whether each is on now: asked for, and not refused by the kernel;
    ``gro_waiting``, that GRO is off until reads show trains would come
    (``gro="auto"``, :func:`back_to_back`).
    """

    def __init__(
        self,
        sock: socket.socket,
        core: RelayCore,
        clock: Callable[[], float],
        gso: bool = True,
        gro: str = "auto",
    ) -> None:
        if gro not in GRO_MODES:
            raise ValueError(f"gro: {gro!r}, not one of {', '.join(GRO_MODES)}")
        self._sock = sock
        self._fd = sock.fileno()
        self._handle_batch = core.handle_batch
        self._handle_train = core.handle_train
        self._clock = clock
        self.name_len = 28 if sock.family == socket.AF_INET6 else 16
        self.send_errors = 0
        self.receive_errors = 0
        self.gso_sends = 0
        self.trains_received = 0
        self.gso = gso and udp_gso_supported(sock)
        self.gro = gro == "on" and enable_udp_gro(sock)
        self.gro_waiting = gro == "auto"
        self._full_reads = 0
        """Full reads while ``gro_waiting``."""
        self._loop: asyncio.AbstractEventLoop | None = None

        self._slots = mmap.mmap(-1, BATCH * SLOT_BYTES)
        self._slots_view = memoryview(self._slots)
        self._slot_headers = self._slots_view.cast("Q")[:: SLOT_BYTES // 8]
        """Each slot's first 8 bytes (a Geneve header), compared in place."""
        slots_at = _address_of(self._slots)
        self._slot_starts = [i * SLOT_BYTES for i in range(BATCH)]
        self._slot_addresses = [slots_at + start for start in self._slot_starts]
        self._slot_iovecs = [_IOVEC.pack(address, 0) for address in self._slot_addresses]
        """Each slot's iovec for sending, its length 0 (written per send): a group's are
        gathered and written in one copy."""

        self._received = _Messages(BATCH, self.name_len)
        for i in range(BATCH):
            self._received.iovecs[i].iov_base = self._slot_addresses[i]
            self._received.iovecs[i].iov_len = SLOT_BYTES
        headers = self._received.headers
        self._received_sizes = _received_words(headers, _MMsgHdr.msg_len.offset, "I")
        """Each received message's msg_len, in place: a read's sizes are its first ``count``."""
        self._received_controls = _received_words(headers, _MsgHdr.msg_controllen.offset, "Q")
        """Each received message's msg_controllen, as the kernel wrote it (GRO reads)."""
        self._sources = [struct.Struct(f"{self.name_len}s" * count) for count in range(BATCH + 1)]
        """Unpacks the source addresses of ``count`` received datagrams."""
        self._controls = ctypes.create_string_buffer(BATCH * _CONTROL_SPACE)
        self._control_words = memoryview(self._controls).cast("B").cast("i")
        self._received_layout = (ctypes.c_char * ctypes.sizeof(self._received.headers))()
        """The headers as laid out, copied back over those a GRO read filled in (each
        msg_controllen)."""
        if self.gro:
            self._lay_out_controls()
        self._sending = _SendQueue(self.name_len)
        self._queued = self._used = 0
        """The send queue's entries and iovecs taken."""
        self._answers = ctypes.create_string_buffer(ANSWER_SLOTS * ANSWER_BYTES)
        self._answers_view = memoryview(self._answers).cast("B")
        self._answers_at = ctypes.addressof(self._answers)
        self._answers_taken = 0
        """Answer slots holding a queued answer; all free again once the queue is sent."""

    def _lay_out_controls(self) -> None:
        """Give each received message room for its UDP_GRO control message."""
        controls_at = ctypes.addressof(self._controls)
        for i in range(BATCH):
            header = self._received.headers[i].msg_hdr
            header.msg_control = controls_at + i * _CONTROL_SPACE
            header.msg_controllen = _CONTROL_SPACE
        ctypes.memmove(self._received_layout, self._received.address, len(self._received_layout))

    def _turn_gro_on(self) -> bool:
        """Turn UDP_GRO on for good (``gro="auto"``, trains seen coming); whether it is on."""
        self.gro_waiting = False
        self.gro = enable_udp_gro(self._sock)
        if self.gro:
            self._lay_out_controls()
        return self.gro

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
        gro = self.gro
        now = self._clock()
        for _ in range(BATCHES_PER_WAKEUP):
            count = _recvmmsg(self._fd, received.address, BATCH, _MSG_DONTWAIT, None)
            if count <= 0:
                if count < 0 and ctypes.get_errno() not in _RETRY_LATER:
                    self.receive_errors += 1
                return
            sources = self._sources[count].unpack_from(received.names)
            sizes = self._received_sizes[:count]
            self._queued = self._used = 0
            if gro:
                controls = self._received_controls[:count]
                if any(controls):
                    first = 0
                    for i in range(count):
                        train = self._train_size(i, sizes[i]) if controls[i] else 0
                        if train:
                            if first < i:  # what came before goes first
                                self._relay_batch(first, i, sizes, sources, now)
                            self._relay_train(i, sizes[i], train, sources[i], now)
                            first = i + 1
                    if first < count:
                        self._relay_batch(first, count, sizes, sources, now)
                else:
                    self._relay_batch(0, count, sizes, sources, now)
                # the kernel wrote each msg_controllen: room for the next read's
                ctypes.memmove(
                    received.address, self._received_layout, count * ctypes.sizeof(_MMsgHdr)
                )
            else:
                self._relay_batch(0, count, sizes, sources, now)
                if count == BATCH and self.gro_waiting:
                    self._full_reads += 1
                    if not self._full_reads % GRO_AUTO_CHECK_EVERY and back_to_back(sources):
                        gro = self._turn_gro_on()
            if self._queued:
                self._send_queued(self._queued)
            if count < BATCH:
                return

    def _train_size(self, i: int, size: int) -> int:
        """The segment size of received message ``i`` if it is a GRO train, else 0."""
        c = i * (_CONTROL_SPACE // 4)
        words = self._control_words
        if words[c + 2] == SOL_UDP and words[c + 3] == UDP_GRO and 0 < words[c + 4] < size:
            return words[c + 4]
        return 0

    def _relay_batch(
        self, first: int, stop: int, sizes: memoryview, sources: tuple[bytes, ...], now: float
    ) -> None:
        """Let the core act on received slots ``first:stop`` (single datagrams), queue its
        answers and what it relays."""
        if first or stop < len(sizes):
            sizes, sources = sizes[first:stop], sources[first:stop]
        headers = self._slot_headers[first:stop]
        # both compared in place: no int made
        one_size, one_header = sizes[1:] == sizes[:-1], headers[1:] == headers[:-1]
        relayed, answers = self._handle_batch(
            self._slots_view, SLOT_BYTES, first, sizes, sources, now, one_size, one_header
        )
        if answers:
            self._queue_answers(answers)
        if relayed:
            self._queue_groups(relayed, sizes, first, one_size)

    def _queue_groups(
        self, relayed: dict[bytes, list[int]], sizes: memoryview, first: int, one_size: bool
    ) -> None:
        """Queue relayed datagrams (by destination, in the order received; datagram ``k``
        is in slot ``first + k`` and holds ``sizes[k]`` bytes, every one ``sizes[0]``
        if ``one_size``): each destination's datagrams in entries of one size, the last
        of an entry maybe shorter, as UDP_SEGMENT wants them, within the kernel's limits."""
        addresses = self._slot_addresses[first:] if first else self._slot_addresses
        slot_iovecs = self._slot_iovecs[first:] if first else self._slot_iovecs
        sending = self._sending
        iovecs = sending.iovec_words
        for destination, group in relayed.items():
            if len(group) == 1:  # its own entry, as _queue_one_by_one would make, without the call
                k = group[0]
                queued, used = self._queued, self._used
                if queued == SEND_MESSAGES or used == SEND_MESSAGES:
                    self._send_queued(queued)
                    queued = used = 0
                sending.open_entry(queued, used, 1, 0, destination)
                iovecs[2 * used] = addresses[k]
                iovecs[2 * used + 1] = sizes[k]
                self._queued, self._used = queued + 1, used + 1
                continue
            if not self.gso:
                self._queue_one_by_one(destination, group, sizes, addresses)
                continue
            pick = itemgetter(*group)
            if one_size:
                self._queue_segments(destination, pick(slot_iovecs), sizes[0], sizes[0])
                continue
            lengths = pick(sizes)
            segment, last = lengths[0], lengths[-1]
            same = lengths.count(segment)
            if same == len(group) or (same == len(group) - 1 and last < segment):
                self._queue_segments(destination, pick(slot_iovecs), segment, last)
            else:  # sizes that change within the group
                self._queue_one_by_one(destination, group, sizes, addresses)

    def _queue_segments(
        self, destination: bytes, slot_iovecs: tuple[bytes, ...], segment: int, last: int
    ) -> None:
        """Queue the datagrams of ``slot_iovecs`` (their slots' iovecs) for ``destination``,
        each ``segment`` bytes long but the last, which is ``last`` (at most ``segment``):
        as few entries as the kernel's limits allow. The entries' iovecs follow one
        another, so the group's are copied in at once and their lengths written in one
        strided write (a group is one read's, so it fits an empty queue)."""
        sending = self._sending
        queued, used = self._queued, self._used
        n = len(slot_iovecs)
        per_entry = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
        entries = -(-n // per_entry)  # rounded up
        if queued + entries > SEND_MESSAGES or used + n > SEND_MESSAGES:
            self._send_queued(queued)
            queued = used = 0
        width = _IOVEC.size
        sending.iovec_bytes[width * used : width * (used + n)] = b"".join(slot_iovecs)
        iovecs = sending.iovec_words
        iovecs[2 * used + 1 : 2 * (used + n) : 2] = _repeated(segment, n)
        if last != segment:
            iovecs[2 * (used + n) - 1] = last
        for at in range(used, used + n, per_entry):
            m = min(per_entry, used + n - at)
            sending.open_entry(queued, at, m, segment if m > 1 else 0, destination)
            if m > 1:
                self.gso_sends += 1
            queued += 1
        self._queued, self._used = queued, used + n

    def _queue_one_by_one(
        self,
        destination: bytes,
        group: list[int],
        sizes: memoryview,
        addresses: list[int],
    ) -> None:
        """Queue the datagrams ``group`` for ``destination`` one at a time, each joining
        the open entry while it keeps UDP_SEGMENT's shape (a shorter one is its last)."""
        sending = self._sending
        words, iovecs = sending.header_words, sending.iovec_words
        segment_sizes = sending.segment_sizes
        queued, used = self._queued, self._used
        limit = GSO_MAX_SEGMENTS if self.gso else 1
        segment = segments = total = 0  # of the open entry; segment 0: none open
        for k in group:
            size = sizes[k]
            if (
                size <= segment
                and segments < limit
                and total + size <= GSO_MAX_BYTES
                and used < SEND_MESSAGES
            ):
                # one more segment of the open entry; a shorter one is its last
                iovecs[2 * used] = addresses[k]
                iovecs[2 * used + 1] = size
                used += 1
                segments += 1
                total += size
                o = (queued - 1) * _HEADER_WORDS
                words[o + _IOVLEN] = segments
                if segments == 2:
                    words[o + _CONTROLLEN] = _CONTROL_SPACE
                    segment_sizes[(queued - 1) * (_CONTROL_SPACE // 2) + 8] = segment
                    self.gso_sends += 1
                if size < segment:
                    segment = 0
                continue
            if queued == SEND_MESSAGES or used == SEND_MESSAGES:
                self._send_queued(queued)
                queued = used = 0
            sending.open_entry(queued, used, 1, 0, destination)
            iovecs[2 * used] = addresses[k]
            iovecs[2 * used + 1] = size
            used += 1
            queued += 1
            segment, segments, total = size, 1, size
        self._queued, self._used = queued, used

    def _relay_train(self, i: int, size: int, segment: int, source: bytes, now: float) -> None:
        """Slot ``i`` holds a GRO train of ``segment``-byte datagrams: let the core check
        each, queue what it relays as GSO entries (one iovec each, at most
        :data:`GSO_MAX_SEGMENTS` segments and :data:`GSO_MAX_BYTES` bytes), and its
        answers."""
        self.trains_received += 1
        queued, used = self._queued, self._used
        start = self._slot_starts[i]
        runs, answers = self._handle_train(
            self._slots_view[start : start + size],
            segment,
            source,
            now,
        )
        sending = self._sending
        iovecs = sending.iovec_words
        base = self._slot_addresses[i]
        per_send = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment)) if self.gso else 1
        chunk = per_send * segment
        for run_start, run_stop, destination in runs:
            for at in range(run_start, run_stop, chunk):
                if queued == SEND_MESSAGES or used == SEND_MESSAGES:
                    self._send_queued(queued)
                    queued = used = 0
                length = min(chunk, run_stop - at)
                sending.open_entry(queued, used, 1, segment if length > segment else 0, destination)
                if length > segment:
                    self.gso_sends += 1
                iovecs[2 * used] = base + at
                iovecs[2 * used + 1] = length
                used += 1
                queued += 1
        self._queued, self._used = queued, used
        if answers:
            self._queue_answers(answers)

    def _queue_answers(self, answers: list[tuple[bytes, bytes]]) -> None:
        """Queue the core's answers (challenges), one entry each, copied into answer slots:
        they go out in the read's sendmmsg with what it relays, not a system call each."""
        sending = self._sending
        iovecs = sending.iovec_words
        view = self._answers_view
        queued, used, taken = self._queued, self._used, self._answers_taken
        for payload, destination in answers:
            size = len(payload)
            if size > ANSWER_BYTES:
                self._send_one(payload, destination)
                continue
            if queued == SEND_MESSAGES or used == SEND_MESSAGES or taken == ANSWER_SLOTS:
                self._send_queued(queued)
                queued = used = taken = 0
            start = taken * ANSWER_BYTES
            view[start : start + size] = payload
            sending.open_entry(queued, used, 1, 0, destination)
            iovecs[2 * used] = self._answers_at + start
            iovecs[2 * used + 1] = size
            used += 1
            queued += 1
            taken += 1
        self._queued, self._used, self._answers_taken = queued, used, taken

    def _send_queued(self, queued: int) -> None:
        """Send the queue's first ``queued`` entries; its answer slots are free again."""
        self._answers_taken = 0
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
