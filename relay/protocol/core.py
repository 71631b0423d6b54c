"""The sans-I/O relay core: docs/protocol.md's endpoint table, bind handshake, relaying and expiry.

:class:`RelayCore` takes ``(datagram, source, now)`` and answers with at most
one ``(datagram, destination)`` to send. It opens no socket, reads no clock
and awaits nothing, so every rule is tested instantly with a fake clock and the
transports around it stay thin. Addresses are whatever hashable values the
transport uses (``sockaddr`` bytes from the UDP transport, tuples in tests);
the core only compares them.

Handshake messages cost public-key crypto, so they pass a per-source and a
total rate limit (relay/protocol/ratelimit.py) before any of it is done; a flood of
binds is dropped cheaply and counted, and data relaying goes on.

Both protocol versions are served on one socket, chosen per message by the
length of its body (docs/protocol.md "Version 1"). Version 0 ignores a client
once bound; version 1 lets a bound client run the handshake again, with a new
generation, to move its address.

Challenges are not stored: each is a keyed BLAKE2s MAC, indistinguishable
from random to a client and free of per-endpoint memory. Version 0's covers
the endpoint's identity (VNI, LamportID, client key) under the relay's
challenge secret, so it survives restarts. Version 1's covers the bind (VNI,
generation, other client's key) and its source address under a key that
changes every ``challenge_rotation`` seconds: derived from the challenge
secret and the number of the period, so that nothing is stored or lost on a
restart; the current and the previous period's keys are accepted.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import hmac
import struct
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from itertools import chain, repeat
from itertools import count as _count
from operator import itemgetter

from relay.protocol import disco, geneve
from relay.protocol.allocation import (
    DEFAULT_BIND_LIFETIME,
    DEFAULT_STEADY_STATE_LIFETIME,
    Allocation,
)
from relay.protocol.deadline_keys import deadline_key, key_deadline, key_vni
from relay.protocol.histogram import Histogram
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.protocol.ratelimit import DEFAULT_HANDSHAKE_LIMITS, HandshakeLimiter, HandshakeLimits

Address = Hashable
Send = tuple[bytes, Address]
Run = tuple[int, int, Address]
"""Bytes ``start:stop`` of a train, to send to ``destination`` as they are."""

CHALLENGE_SECRET_LEN = 32
_CHALLENGE_PERSON = b"rf-chal0"
_PERIOD_KEY_PERSON = b"rf-per1"
_CHALLENGE_V1_PERSON = b"rf-chal1"
DEFAULT_CHALLENGE_ROTATION = 120.0
SHARED_KEY_CACHE_SIZE = 65_536
HANDSHAKE_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
_DISCO_HI, _DISCO_LO = geneve.PROTOCOL_DISCO >> 8, geneve.PROTOCOL_DISCO & 0xFF
_FRAME = geneve.HEADER_LEN
_MAGIC = slice(_FRAME, _FRAME + disco.SENDER_OFFSET)
_SENDER = slice(_FRAME + disco.SENDER_OFFSET, _FRAME + disco.NONCE_OFFSET)
_CONTROL_BIT = geneve.CONTROL_BIT
_unpack_header = struct.Struct(">xBxxI").unpack_from  # (flags byte, VNI << 8 | reserved)
_BIND_FIELDS = struct.Struct(f">II{disco.KEY_LEN}s")
"""What a version 1 challenge covers of its bind: VNI, generation, the other client's key."""


_HEADERS_EVERY: dict[tuple[int, int], struct.Struct] = {}


def _headers_every(stride: int, count: int) -> struct.Struct:
    """Unpacks (flags byte, VNI word) of ``count`` headers, one every ``stride`` bytes
    (a train's segments, a batch's slots)."""
    headers = _HEADERS_EVERY.get((stride, count))
    if headers is None:
        if len(_HEADERS_EVERY) >= 256:
            _HEADERS_EVERY.clear()
        one = f"xBxxI{stride - _FRAME}x"
        headers = _HEADERS_EVERY[stride, count] = struct.Struct(">" + one * count)
    return headers


def sum_at(values: Sequence[int], indexes: Sequence[int]) -> int:
    """The sum of ``values`` at ``indexes`` (not empty), in one C call."""
    if len(indexes) == 1:
        return values[indexes[0]]
    return sum(itemgetter(*indexes)(values))


class Handshake(enum.IntEnum):
    """A client's bind handshake state: Init -> ChallengeSent -> AnswerReceived."""

    INIT = 0
    CHALLENGE_SENT = 1
    BOUND = 2

    @property
    def label(self) -> str:
        return ("Init", "ChallengeSent", "Bound")[self]


class Drop(enum.StrEnum):
    """Why a datagram was dropped; each reason has its own counter."""

    SHORT_PACKET = "short_packet"
    UNKNOWN_VNI = "unknown_vni"
    DATA_BEFORE_BOUND = "data_before_bound"
    DATA_FROM_UNKNOWN_SOURCE = "data_from_unknown_source"
    CONTROL_AFTER_BOUND = "control_after_bound"
    CONTROL_NOT_DISCO = "control_not_disco"
    SHORT_FRAME = "short_frame"
    BAD_MAGIC = "bad_magic"
    FOREIGN_KEY = "foreign_key"
    CLIENT_ALREADY_BOUND = "client_already_bound"
    UNDECRYPTABLE = "undecryptable"
    MALFORMED_MESSAGE = "malformed_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    WRONG_SOURCE = "wrong_source"
    WRONG_ANSWER = "wrong_answer"
    RATE_LIMITED = "rate_limited"
    WRONG_VNI = "wrong_vni"
    WRONG_REMOTE_KEY = "wrong_remote_key"
    ZERO_GENERATION = "zero_generation"
    WRONG_GENERATION = "wrong_generation"


class ClientState:
    """One client's side of an endpoint: its handshake, address and counters.

    ``version`` is the protocol version of its last bind message (None before
    one); ``generation`` is the version 1 handshake in progress (0: none), and
    ``bound_generation`` the one that bound it last. A bound client may have a
    handshake in progress while it re-binds, and keeps its address until that
    ends. When its handshake began is the core's to keep (``RelayCore._challenged_at``),
    for no longer than the handshake: a slot less for every client.
    """

    __slots__ = (
        "addr",
        "bound_generation",
        "bytes",
        "generation",
        "handshake",
        "last_seen",
        "packets",
        "version",
    )

    def __init__(self) -> None:
        self.handshake = Handshake.INIT
        self.version: int | None = None
        self.generation = 0
        self.bound_generation = 0
        self.addr: Address | None = None
        self.last_seen: float | None = None
        self.packets = 0
        self.bytes = 0


class _UntouchedClientState(ClientState):
    """The state of a client that has sent nothing yet; shared, so it refuses writes."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an untouched client's state is shared: Endpoint.touch() first")

    def __reduce__(self) -> str:
        """Copied (copy, deepcopy) or pickled as the one shared default it is."""
        return "_UNTOUCHED"


def _untouched() -> ClientState:
    state = ClientState()
    state.__class__ = _UntouchedClientState
    return state


_UNTOUCHED = _untouched()


class Endpoint:
    """The live state of one allocation.

    Its clients' state follows ``allocation.raw_keys`` (raw-byte order): ``_a``
    is the first key's, ``_b`` the second's, in two slots rather than a tuple
    (56 B) of them. Most allocations wait for their clients, and many never see
    one: until the first control packet for an endpoint, both slots hold one
    shared, read-only default, which saves two objects per endpoint.

    ``deadline`` is when :meth:`RelayCore.expire` next looks at the endpoint, the
    time of its one live entry in the deadline heap: its bind deadline until it
    is bound, then no later than it expires (:meth:`RelayCore.expires_at`). The
    endpoint holds that entry itself (``deadline_key``), not a float of its own;
    the core sets it when it installs the endpoint.
    """

    __slots__ = ("_a", "_b", "allocation", "bound", "bound_at", "deadline_key")

    def __init__(self, allocation: Allocation) -> None:
        self.allocation = allocation
        self._a = self._b = _UNTOUCHED
        self.bound = False
        self.bound_at: float | None = None

    @property
    def deadline(self) -> float:
        return key_deadline(self.deadline_key)

    @property
    def clients(self) -> tuple[ClientState, ClientState]:
        return self._a, self._b

    def touch(self) -> tuple[ClientState, ClientState]:
        """The clients' own state, made on first use; what the core writes to."""
        if self._a is _UNTOUCHED:
            self._a, self._b = ClientState(), ClientState()
        return self._a, self._b


class RelayCore:
    """One relay's endpoints and the protocol rules that act on them."""

    def __init__(
        self,
        private_key: DiscoPrivateKey,
        challenge_secret: bytes,
        bind_lifetime: float = DEFAULT_BIND_LIFETIME,
        steady_state_lifetime: float = DEFAULT_STEADY_STATE_LIFETIME,
        handshake_limits: HandshakeLimits = DEFAULT_HANDSHAKE_LIMITS,
        challenge_rotation: float = DEFAULT_CHALLENGE_ROTATION,
    ) -> None:
        if len(challenge_secret) != CHALLENGE_SECRET_LEN:
            raise ValueError(f"the challenge secret is {CHALLENGE_SECRET_LEN} bytes")
        if bind_lifetime <= 0 or steady_state_lifetime <= 0:
            raise ValueError("lifetimes must be positive")
        if challenge_rotation <= 0:
            raise ValueError("the challenge rotation must be positive")
        self.challenge_rotation = challenge_rotation
        self._period_keys: dict[int, bytes] = {}
        self._private_key = private_key
        self._challenge_secret = challenge_secret
        self.server_key = private_key.public
        self._server_key_raw = self.server_key.raw
        self.bind_lifetime = bind_lifetime
        self.steady_state_lifetime = steady_state_lifetime
        self._handshake_limiter = HandshakeLimiter(handshake_limits)
        self._by_vni: dict[int, Endpoint] = {}
        self._shared_keys: dict[bytes, bytes] = {}
        """Box keys shared with clients, by their raw public key."""
        self._challenged_at: dict[ClientState, float] = {}
        """When each client with a handshake in progress sent its first bind, for
        :attr:`handshake_seconds`; the entry goes when the handshake ends or its endpoint does."""
        self._deadlines: list[int] = []
        """A heap of :func:`deadline_key` entries: each endpoint's live one, and stale ones."""
        self._bound_watchers: list[list[Endpoint]] = []
        self._bound_for_store = self.watch_bound()
        self._move_watchers: list[tuple[list[Endpoint], Callable[[], None] | None]] = []
        self.last_seen_lag = 0.0
        self.bound_count = 0
        self.forwarded_packets = 0
        self.forwarded_bytes = 0
        self.handshakes_completed = 0
        self.handshakes_by_version = [0, 0]
        self.handshake_seconds = (
            Histogram(HANDSHAKE_SECONDS_BUCKETS),
            Histogram(HANDSHAKE_SECONDS_BUCKETS),
        )
        """Per protocol version (index 0 or 1): from a client's first bind to its answer."""
        self.expired = {"bind": 0, "steady_state": 0}
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)

    # -- the endpoint table ------------------------------------------------

    def install(self, allocation: Allocation, now: float | None = None) -> Endpoint:
        """Serve an allocation. Idempotent; replaces an older allocation of the same VNI.

        An allocation the store already records as bound (this relay restarted)
        has lost its handshakes: its clients get a fresh bind window from ``now``.
        """
        if allocation.client_index(self.server_key.raw) is not None:
            raise ValueError("a client disco key equals the server's disco key")
        current = self._by_vni.get(allocation.vni)
        if current is not None:
            if current.allocation.lamport_id == allocation.lamport_id:
                return current
            self._discard(current)
        endpoint = Endpoint(allocation)
        self._by_vni[allocation.vni] = endpoint
        bind_from = allocation.allocated_at
        if allocation.bound and now is not None:
            bind_from = max(bind_from, now)
        self._arm(endpoint, bind_from + self.bind_lifetime)
        return endpoint

    def _arm(self, endpoint: Endpoint, deadline: float) -> None:
        """Make ``deadline`` the endpoint's one live deadline; older heap entries go stale."""
        key = endpoint.deadline_key = deadline_key(deadline, endpoint.allocation.vni)
        heapq.heappush(self._deadlines, key)

    def remove(self, vni: int, lamport_id: int) -> bool:
        """Stop serving an allocation; False if it is not (or no longer) served."""
        endpoint = self._by_vni.get(vni)
        if endpoint is None or endpoint.allocation.lamport_id != lamport_id:
            return False
        self._discard(endpoint)
        return True

    def _discard(self, endpoint: Endpoint) -> None:
        del self._by_vni[endpoint.allocation.vni]
        for client in endpoint.clients:
            self._challenged_at.pop(client, None)
        if endpoint.bound:
            self.bound_count -= 1

    def endpoint(self, vni: int) -> Endpoint | None:
        return self._by_vni.get(vni)

    def endpoints(self) -> Iterator[Endpoint]:
        return iter(list(self._by_vni.values()))

    def __len__(self) -> int:
        return len(self._by_vni)

    def watch_bound(self) -> list[Endpoint]:
        """A list the core appends each endpoint to once both its clients are bound;
        the caller empties it as it goes (the store write-back and the kernel fast path)."""
        watcher: list[Endpoint] = []
        self._bound_watchers.append(watcher)
        return watcher

    def watch_moves(self, notify: Callable[[], None] | None = None) -> list[Endpoint]:
        """A list the core appends a bound endpoint to whenever a client re-binds from a
        new address (version 1); the caller empties it (the kernel fast path). ``notify``,
        if given, is called after each append, so the caller can act at once."""
        watcher: list[Endpoint] = []
        self._move_watchers.append((watcher, notify))
        return watcher

    def unwatch(self, watcher: list[Endpoint]) -> None:
        """Stop appending to a list from :meth:`watch_bound` or :meth:`watch_moves`."""
        self._bound_watchers = [w for w in self._bound_watchers if w is not watcher]
        self._move_watchers = [(w, n) for w, n in self._move_watchers if w is not watcher]

    def credit(self, endpoint: Endpoint, index: int, packets: int, size: int, now: float) -> None:
        """Count packets relayed for one client outside this core (by the kernel fast path).

        ``now`` becomes the client's last-seen time: the reader may learn of a
        packet up to :attr:`last_seen_lag` after it passed, and steady-state
        expiry waits that much longer so that it never comes early.
        """
        client = endpoint.touch()[index]
        client.last_seen = now
        client.packets += packets
        client.bytes += size
        self.forwarded_packets += packets
        self.forwarded_bytes += size

    def take_bound(self) -> list[Allocation]:
        """Allocations bound by both clients since the last call, for the store to record."""
        bound = [endpoint.allocation for endpoint in self._bound_for_store]
        self._bound_for_store.clear()
        return bound

    # -- expiry ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``expire`` may next have work; None when nothing is allocated."""
        return key_deadline(self._deadlines[0]) if self._deadlines else None

    def expires_at(self, endpoint: Endpoint) -> float:
        """When the endpoint expires unless a packet comes first.

        Until bound, its bind deadline; once bound, its quieter client's last
        packet plus the steady-state lifetime and :attr:`last_seen_lag`, the
        very rule :meth:`expire` applies.
        """
        if not endpoint.bound:
            return endpoint.deadline
        a, b = endpoint.clients
        return min(a.last_seen, b.last_seen) + self.steady_state_lifetime + self.last_seen_lag

    def expire(self, now: float, budget: int = 10_000) -> list[Endpoint]:
        """Remove and return endpoints whose lifetime has passed (``bound`` tells which).

        Works through at most ``budget`` deadlines, so one call never stalls
        the caller; a caller that gets ``budget`` or more back calls again.
        Each endpoint has one live deadline: its bind deadline until it is
        bound (and until reached, if the steady-state deadline is later), then
        the steady-state deadline of its quieter client, re-armed when reached
        if traffic moved it on. Entries of removed endpoints and superseded
        deadlines are skipped as they surface.
        """
        expired: list[Endpoint] = []
        heap = self._deadlines
        now_key = deadline_key(now, 0)
        while budget > 0 and heap and heap[0] < now_key:
            budget -= 1
            key = heapq.heappop(heap)
            endpoint = self._by_vni.get(key_vni(key))
            if endpoint is None or endpoint.deadline_key != key:
                continue
            if endpoint.bound:
                steady_deadline = self.expires_at(endpoint)
                if steady_deadline >= now:
                    self._arm(endpoint, steady_deadline)
                    continue
            self._discard(endpoint)
            self.expired["steady_state" if endpoint.bound else "bind"] += 1
            expired.append(endpoint)
        return expired

    # -- packets -----------------------------------------------------------

    def handle(self, datagram: bytes | memoryview, source: Address, now: float) -> Send | None:
        """Act on one received datagram; return what to send, if anything.

        A relayed datagram comes back as the very object passed in, so a
        transport can send it from where it was received.
        """
        size = len(datagram)
        if size < geneve.HEADER_LEN:
            self.drops[Drop.SHORT_PACKET] += 1
            return None
        flags, vni_word = _unpack_header(datagram)
        endpoint = self._by_vni.get(vni_word >> 8)
        if endpoint is None:
            self.drops[Drop.UNKNOWN_VNI] += 1
            return None
        if flags & _CONTROL_BIT:
            return self._handle_control(endpoint, datagram, source, now)
        if not endpoint.bound:
            self.drops[Drop.DATA_BEFORE_BOUND] += 1
            return None
        a = endpoint._a  # bound: both clients were touched
        if source == a.addr:
            sender, destination = a, endpoint._b.addr
        else:
            sender = endpoint._b
            if source != sender.addr:
                self.drops[Drop.DATA_FROM_UNKNOWN_SOURCE] += 1
                return None
            destination = a.addr
        sender.last_seen = now
        sender.packets += 1
        sender.bytes += size
        self.forwarded_packets += 1
        self.forwarded_bytes += size
        return datagram, destination

    def handle_train(
        self, train: memoryview, segment_size: int, source: Address, now: float
    ) -> tuple[list[Run], list[Send]]:
        """Act on a train: datagrams of ``segment_size`` bytes (the last may be shorter)
        received as one buffer (UDP GRO); return what to send, as :meth:`handle` would for
        each segment in turn, and count exactly as it would.

        ``runs`` are contiguous spans of the train to relay as they are, in order, each
        a whole number of segments; ``answers`` are datagrams made here (challenges).
        A data segment of the VNI, endpoint and sender of the one before it is checked
        and counted inline; any other segment (the first, another VNI, a control or
        short segment, one after such) goes through :meth:`handle` on its own.
        """
        if segment_size <= 0:
            raise ValueError("a train's segments are at least 1 byte long")
        size = len(train)
        runs: list[Run] = []
        answers: list[Send] = []
        if not size:  # an empty datagram, as handle sees it
            self.handle(train, source, now)
            return runs, answers
        unpack = _unpack_header
        control_bit = _CONTROL_BIT
        vni = -1  # the VNI whose data segments from ``source`` are relayed inline; -1: none
        sender: ClientState | None = None
        destination: Address = None
        run_start = -1
        packets = size_sum = 0
        start = 0
        full = size // segment_size
        if full >= 3 and segment_size >= _FRAME:
            # the usual train: every full segment data of one VNI, checked in one C call
            # (segments of a multiple of 8 bytes, as WireGuard pads them: their 8 header
            # bytes all alike, compared in place); the first then goes through handle, and
            # if it is relayed, the rest follow it inline
            if segment_size & 7:
                values = _headers_every(segment_size, full).unpack_from(train)
                words = values[1::2]
                usual = max(values[0::2]) < control_bit and words.count(words[0]) == full
            else:
                headers = train[: full * segment_size].cast("Q")[:: segment_size >> 3]
                usual = headers[1:] == headers[:-1]
            if usual:
                segment = train[:segment_size]
                answer = self.handle(segment, source, now)
                start = segment_size
                if answer is not None and answer[0] is segment:
                    run_start, destination = 0, answer[1]
                    vni = unpack(train)[1] >> 8
                    sender = self._sender(vni, source)
                    packets, size_sum = full - 1, (full - 1) * segment_size
                    start = full * segment_size
                elif answer is not None:
                    answers.append(answer)
        while start < size:
            stop = start + segment_size
            if stop > size:
                stop = size
            if stop - start >= _FRAME:
                flags, vni_word = unpack(train, start)
                if vni_word >> 8 == vni and not flags & control_bit:
                    packets += 1
                    size_sum += stop - start
                    start = stop
                    continue
            if run_start >= 0:  # the inline run ends here
                runs.append((run_start, start, destination))
                run_start = -1
            if packets:
                self._credit_inline(sender, packets, size_sum, now)
                packets = size_sum = 0
            segment = train[start:stop]
            answer = self.handle(segment, source, now)
            vni = -1
            if answer is not None:
                payload, to = answer
                if payload is segment:
                    # relayed: later segments like it follow inline, to the same place
                    run_start, destination = start, to
                    vni = _unpack_header(train, start)[1] >> 8
                    sender = self._sender(vni, source)
                else:
                    answers.append(answer)
            start = stop
        if run_start >= 0:
            runs.append((run_start, size, destination))
        if packets:
            self._credit_inline(sender, packets, size_sum, now)
        return runs, answers

    def handle_batch(
        self,
        slots: memoryview,
        stride: int,
        first: int,
        sizes: Sequence[int],
        sources: Sequence[Address],
        now: float,
        one_size: bool,
        one_header: bool,
    ) -> tuple[dict[Address, list[int]], list[Send]]:
        """Act on a batch of datagrams received one per slot, as :meth:`handle` would on
        each in turn, and count exactly as it would.

        Datagram ``k`` of the batch is the first ``sizes[k]`` bytes of slot
        ``first + k``, which is ``slots[(first + k) * stride:]``, from ``sources[k]``.
        ``one_size`` says whether every datagram is ``sizes[0]`` bytes long (the
        caller works that out once per read, and needs it too), ``one_header``
        whether every slot's first :data:`geneve.HEADER_LEN` bytes are the same (a
        busy endpoint's read: the caller compares them in place, and no header is
        unpacked one by one).
        ``relayed`` maps each destination to the datagrams (their ``k``) to send it
        as they are, in the order received; ``answers`` are datagrams made here
        (challenges), in order.

        A data datagram from a client of a bound endpoint is relayed here, where
        :meth:`handle` would relay it, without its call. One with the header (flags
        and VNI) and source of one relayed earlier in the batch follows it inline,
        as long as no control datagram came between them: only a control datagram
        changes where a client's data goes. Any other datagram (control, short, of
        an unknown VNI or endpoint not bound, from a stranger) goes through
        :meth:`handle`, which answers it or counts its drop.

        What one source sends from its first relayed datagram on is a run: a list
        of ``k`` that a followed datagram costs one append to, counted for its
        sender at the end of the batch (every datagram of a batch has the same
        ``now``). A destination's datagrams are its runs, merged in the order
        received where it has more than one (two of its endpoints' peers in one
        batch, or a control datagram between).
        """
        answers: list[Send] = []
        count = len(sizes)
        if count <= 1:  # nothing to follow inline (a quiet relay's wake-up: keep it short)
            relayed: dict[Address, list[int]] = {}
            if count:
                start = first * stride
                datagram = slots[start : start + sizes[0]]
                answer = self.handle(datagram, sources[0], now)
                if answer is not None:
                    if answer[0] is datagram:
                        relayed[answer[1]] = [0]
                    else:
                        answers.append(answer)
            return relayed, answers
        shortest = sizes[0] if one_size else min(sizes)
        keys: Iterable[int]
        """flags << 32 | VNI word, of each datagram in turn; -1 for a short one (its slot
        holds an older header)."""
        if one_header and shortest >= _FRAME:
            flags, word = _unpack_header(slots, first * stride)
            keys = repeat(flags << 32 | word, count)
        else:
            headers = _headers_every(stride, count).unpack_from(slots, first * stride)
            keys = words = headers[1::2]  # a batch of data datagrams only: the VNI word
            no_flags = headers[0::2].count(0) == count  # cheaper than max(): 0 is one object
            if not no_flags or shortest < _FRAME:
                keys = [
                    flags << 32 | word if size >= _FRAME else -1
                    for flags, word, size in zip(headers[0::2], words, sizes, strict=True)
                ]
        inline: dict[Address, tuple[int, list[int]]] = {}
        """By source: the key followed inline, and its run."""
        runs: list[tuple[ClientState, list[int]]] = []
        """Each run and the client that sent it."""
        by_destination: dict[Address, list[int] | list[list[int]]] = {}
        """A destination's one run, or a list of its runs (then in ``merged``)."""
        merged: set[Address] = set()
        endpoints = self._by_vni.get
        handle = self.handle
        follows = inline.get
        for k, source, key in zip(_count(), sources, keys):
            follow = follows(source)
            if follow is not None and follow[0] == key:
                follow[1].append(k)
                continue
            # the checks handle() makes on data; the count waits for the end of the batch
            if key >= 0 and not key >> 32 & _CONTROL_BIT:
                endpoint = endpoints((key & 0xFFFFFFFF) >> 8)
                if endpoint is not None and endpoint.bound:
                    a = endpoint._a
                    sender: ClientState | None = a
                    if source == a.addr:
                        destination = endpoint._b.addr
                    else:
                        sender, destination = endpoint._b, a.addr
                        if source != sender.addr:
                            sender = None
                    if sender is not None:
                        run = [k]
                        runs.append((sender, run))
                        inline[source] = (key, run)
                        held = by_destination.get(destination)
                        if held is None:
                            by_destination[destination] = run
                        elif destination in merged:
                            held.append(run)
                        else:
                            by_destination[destination] = [held, run]
                            merged.add(destination)
                        continue
            start = (first + k) * stride
            answer = handle(slots[start : start + sizes[k]], source, now)
            if answer is not None:
                answers.append(answer)
            if key >> 32 & _CONTROL_BIT:
                inline.clear()
        for sender, run in runs:
            size = sizes[0] * len(run) if one_size else sum_at(sizes, run)
            self._credit_inline(sender, len(run), size, now)
        for destination in merged:  # its runs become one list, as for every other destination
            by_destination[destination] = sorted(chain.from_iterable(by_destination[destination]))
        return by_destination, answers

    def _sender(self, vni: int, source: Address) -> ClientState:
        """The client at ``source`` of the endpoint ``vni``, which just relayed data from it."""
        endpoint = self._by_vni[vni]
        return endpoint._a if source == endpoint._a.addr else endpoint._b

    def _credit_inline(self, sender: ClientState, packets: int, size: int, now: float) -> None:
        sender.last_seen = now
        sender.packets += packets
        sender.bytes += size
        self.forwarded_packets += packets
        self.forwarded_bytes += size

    def _handle_control(
        self, endpoint: Endpoint, datagram: bytes, source: Address, now: float
    ) -> Send | None:
        datagram = bytes(datagram)
        v1 = disco.body_len(len(datagram) - _FRAME) >= disco.V1_BODY_LEN
        drop = self._check_control(endpoint, datagram, v1)
        if drop is not None:
            self.drops[drop] += 1
            return None
        sender_key = datagram[_SENDER]
        index = endpoint.allocation.client_index(sender_key)
        if index is None:
            self.drops[Drop.FOREIGN_KEY] += 1
            return None
        if not v1 and endpoint.clients[index].handshake is Handshake.BOUND:
            self.drops[Drop.CLIENT_ALREADY_BOUND] += 1
            return None
        if not self._handshake_limiter.allow(source, now):
            self.drops[Drop.RATE_LIMITED] += 1
            return None
        shared = self._shared_key(sender_key)
        try:
            payload = disco.open_frame(datagram[_FRAME:], shared)
        except disco.DiscoError:
            self.drops[Drop.UNDECRYPTABLE] += 1
            return None
        try:
            message = disco.parse(payload)
        except disco.DiscoError:
            self.drops[Drop.MALFORMED_MESSAGE] += 1
            return None
        if isinstance(message, disco.BindV1):
            return self._on_v1(endpoint, index, message, source, now, shared)
        if isinstance(message, disco.BindUDPRelayEndpoint):
            return self._on_bind(endpoint, index, source, now, shared)
        if isinstance(message, disco.BindUDPRelayEndpointAnswer):
            self._on_answer(endpoint, index, source, message.answer, now)
            return None
        self.drops[Drop.UNEXPECTED_MESSAGE] += 1
        return None

    def _check_control(self, endpoint: Endpoint, datagram: bytes, v1: bool) -> Drop | None:
        if endpoint.bound and not v1:
            return Drop.CONTROL_AFTER_BOUND
        if datagram[2] != _DISCO_HI or datagram[3] != _DISCO_LO:
            return Drop.CONTROL_NOT_DISCO
        if len(datagram) < _FRAME + disco.MIN_FRAME_LEN:
            return Drop.SHORT_FRAME
        if datagram[_MAGIC] != disco.MAGIC:
            return Drop.BAD_MAGIC
        return None

    def _on_bind(
        self, endpoint: Endpoint, index: int, source: Address, now: float, shared: bytes
    ) -> Send | None:
        client = endpoint.touch()[index]
        if client.handshake is Handshake.INIT:
            client.addr = source
            self._challenged_at[client] = now
        elif source != client.addr:
            self.drops[Drop.WRONG_SOURCE] += 1
            return None
        client.version = 0
        client.handshake = Handshake.CHALLENGE_SENT
        challenge = disco.BindUDPRelayEndpointChallenge(self.challenge(endpoint.allocation, index))
        frame = disco.seal(self._server_key_raw, shared, challenge)
        return geneve.control_header(endpoint.allocation.vni) + frame, source

    def _on_answer(
        self, endpoint: Endpoint, index: int, source: Address, answer: bytes, now: float
    ) -> None:
        client = endpoint.touch()[index]
        if client.handshake is not Handshake.CHALLENGE_SENT:
            self.drops[Drop.UNEXPECTED_MESSAGE] += 1
            return
        if source != client.addr:
            self.drops[Drop.WRONG_SOURCE] += 1
            return
        if not hmac.compare_digest(answer, self.challenge(endpoint.allocation, index)):
            self.drops[Drop.WRONG_ANSWER] += 1
            return
        self._bind_client(endpoint, index, source, now, 0)

    def _bind_client(
        self, endpoint: Endpoint, index: int, source: Address, now: float, version: int
    ) -> None:
        """A client's handshake of ``version`` is complete: it is bound at ``source``."""
        client = endpoint.touch()[index]
        moved = client.handshake is Handshake.BOUND and source != client.addr
        client.addr = source
        client.handshake = Handshake.BOUND
        client.last_seen = now
        self.handshakes_completed += 1
        self.handshakes_by_version[version] += 1
        challenged_at = self._challenged_at.pop(client, None)
        if challenged_at is not None:
            self.handshake_seconds[version].observe(now - challenged_at)
        if endpoint.bound:
            if moved:
                for watcher, notify in self._move_watchers:
                    watcher.append(endpoint)
                    if notify is not None:
                        notify()
            return
        if endpoint.clients[1 - index].handshake is Handshake.BOUND:
            endpoint.bound = True
            endpoint.bound_at = now
            self.bound_count += 1
            # A bind deadline no later than the steady-state one stays the live entry:
            # expire() finds the endpoint bound then and re-arms it, so no second entry
            # waits in the heap meanwhile (48 B).
            steady_deadline = now + self.steady_state_lifetime
            if steady_deadline < endpoint.deadline:
                self._arm(endpoint, steady_deadline)
            for watcher in self._bound_watchers:
                watcher.append(endpoint)

    def _on_v1(
        self,
        endpoint: Endpoint,
        index: int,
        message: disco.BindV1,
        source: Address,
        now: float,
        shared: bytes,
    ) -> Send | None:
        """Version 1: answer every valid bind with a challenge; bind (or move) on an answer."""
        allocation = endpoint.allocation
        remote_key = allocation.client_key(1 - index)
        if message.vni != allocation.vni:
            self.drops[Drop.WRONG_VNI] += 1
            return None
        if message.remote_key != remote_key:
            self.drops[Drop.WRONG_REMOTE_KEY] += 1
            return None
        if message.type == disco.TYPE_BIND:
            if message.generation == 0:
                self.drops[Drop.ZERO_GENERATION] += 1
                return None
            client = endpoint.touch()[index]
            client.version = 1
            client.generation = message.generation
            if client.handshake is not Handshake.BOUND:
                client.handshake = Handshake.CHALLENGE_SENT
            self._challenged_at.setdefault(client, now)
            challenge = disco.bind_v1_payload(
                disco.TYPE_CHALLENGE,
                allocation.vni,
                message.generation,
                remote_key,
                self.challenge_v1(message, source, self._period(now)),
            )
            frame = disco.seal_payload(self._server_key_raw, shared, challenge)
            return geneve.control_header(allocation.vni) + frame, source
        if message.type != disco.TYPE_ANSWER:
            self.drops[Drop.UNEXPECTED_MESSAGE] += 1
            return None
        client = endpoint.clients[index]
        if client.generation == 0 or message.generation != client.generation:
            self.drops[Drop.WRONG_GENERATION] += 1
            return None
        period = self._period(now)
        if not any(
            hmac.compare_digest(message.challenge, self.challenge_v1(message, source, p))
            for p in (period, period - 1)
        ):
            self.drops[Drop.WRONG_ANSWER] += 1
            return None
        client = endpoint.touch()[index]
        client.bound_generation, client.generation = message.generation, 0
        self._bind_client(endpoint, index, source, now, 1)
        return None

    def _period(self, now: float) -> int:
        return int(now // self.challenge_rotation)

    def challenge_v1(self, message: disco.BindV1, source: Address, period: int) -> bytes:
        """The version 1 challenge for a bind from ``source`` in rotation period ``period``."""
        key = self._period_keys.get(period)
        if key is None:
            if len(self._period_keys) >= 4:
                self._period_keys.clear()
            key = self._period_keys[period] = hashlib.blake2s(
                period.to_bytes(8, "big", signed=True),
                key=self._challenge_secret,
                person=_PERIOD_KEY_PERSON,
            ).digest()
        bind = _BIND_FIELDS.pack(message.vni, message.generation, message.remote_key)
        return hashlib.blake2s(
            bind + _address_bytes(source), key=key, person=_CHALLENGE_V1_PERSON
        ).digest()

    def _shared_key(self, raw_key: bytes) -> bytes:
        """The box key shared with the client of this raw disco key, cached: a peer uses one
        disco key for all its endpoints, and the X25519 behind it is a handshake's dearest
        step."""
        shared = self._shared_keys.get(raw_key)
        if shared is None:
            if len(self._shared_keys) >= SHARED_KEY_CACHE_SIZE:
                self._shared_keys.clear()
            client_key = DiscoPublicKey(raw_key)
            shared = self._shared_keys[raw_key] = self._private_key.shared(client_key)
        return shared

    def challenge(self, allocation: Allocation, index: int) -> bytes:
        """The challenge for one client of an allocation (a MAC, never stored)."""
        identity = (
            allocation.vni.to_bytes(4, "big")
            + allocation.lamport_id.to_bytes(8, "big")
            + allocation.client_key(index)
        )
        return hashlib.blake2s(
            identity, key=self._challenge_secret, person=_CHALLENGE_PERSON, digest_size=32
        ).digest()


def _address_bytes(address: Address) -> bytes:
    """An address as bytes for a MAC: the transport's sockaddr bytes as they are (port and
    IP included), any other address (tests use tuples) by its repr."""
    if isinstance(address, bytes):
        return address
    return repr(address).encode()
