"""An independent model of the relay core, the oracle of the core's fuzz targets.

It builds a relay core with eight endpoints in every handshake state
(:data:`ENDPOINT_PLAN`), snapshots its state, and says from docs/protocol.md
alone what one datagram may change (:func:`expect`), so that the targets in
targets.py can compare the core's state after each datagram with the model's.
Version 1 bind messages (docs/protocol.md "Version 1") are in the corpus too:
the model tells them by their length, as a reader must.
"""

from __future__ import annotations

import copy
import random
import socket
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from nacl import bindings

from relay.protocol import disco, geneve
from relay.protocol.client import RelayClient
from relay.protocol.core import Handshake, RelayCore
from relay.protocol.keys import DiscoPrivateKey, raw_pair
from relay.protocol.ratelimit import HandshakeLimits
from relay.store import Allocation
from tests.relay.fuzzing.engine import Rng


def payload_seeds(rng: Rng) -> list[bytes]:
    """Payloads of every type, well-formed and not; for 0x07, 0x08 and 0x09: whole, with an
    IPv4-mapped address, short, misaligned, and of another version."""
    challenge = rng.randbytes(32)
    endpoint_len = disco.ENDPOINT_FIXED_LEN + disco.ADDR_PORT_LEN * rng.randrange(1, 4)
    mapped = bytes(10) + b"\xff\xff" + rng.randbytes(6)
    return [
        disco.marshal(disco.BindUDPRelayEndpoint()),
        disco.marshal(disco.BindUDPRelayEndpointChallenge(challenge)),
        disco.marshal(disco.BindUDPRelayEndpointAnswer(challenge)),
        bytes((0x06, 0x00)) + challenge + rng.randbytes(rng.randrange(8)),
        bytes((0x04, 0x07)),
        bytes((0x01, 0x00)) + rng.randbytes(12) + rng.randbytes(32),
        bytes((0x02, 0x00)) + rng.randbytes(12) + rng.randbytes(18),
        bytes((0x03, 0x00)),
        bytes((0x05, 0x00)) + challenge[:31],
        bytes((0x06,)),
        b"",
        bytes((0x07, 0x00)) + rng.randbytes(endpoint_len),
        bytes((0x07, 0x00)) + rng.randbytes(disco.ENDPOINT_FIXED_LEN) + mapped,
        bytes((0x07, 0x00)) + rng.randbytes(endpoint_len + rng.randrange(1, 18)),
        bytes((0x07, 0x01)) + rng.randbytes(rng.randrange(200)),
        bytes((0x08, 0x00)) + rng.randbytes(disco.ALLOCATE_REQUEST_LEN + rng.randrange(4)),
        bytes((0x08, 0x00)) + rng.randbytes(disco.ALLOCATE_REQUEST_LEN - 1),
        bytes((0x09, 0x00)) + rng.randbytes(4 + endpoint_len),
        bytes((0x09, 0x00)) + rng.randbytes(4 + disco.ENDPOINT_FIXED_LEN),
        bytes((0x09, 0x00)) + rng.randbytes(3),
    ]


def v1_seeds(rng: Rng, vni: int, remote: bytes, own: bytes) -> list[bytes]:
    """Version 1 bind messages of one client: good, and wrong in each field it checks."""
    generation = rng.randrange(1, 2**32)
    bind, answer, challenge = disco.TYPE_BIND, disco.TYPE_ANSWER, disco.TYPE_CHALLENGE
    return [
        disco.marshal(disco.BindV1(bind, vni, generation, remote)),
        disco.marshal(disco.BindV1(bind, vni, generation, remote, rng.randbytes(32))),
        disco.marshal(disco.BindV1(bind, vni ^ 1, generation, remote)),
        disco.marshal(disco.BindV1(bind, vni, generation, own)),
        disco.marshal(disco.BindV1(bind, vni, 0, remote)),
        disco.marshal(disco.BindV1(answer, vni, generation, remote, rng.randbytes(32))),
        disco.marshal(disco.BindV1(challenge, vni, generation, remote, rng.randbytes(32))),
        disco.marshal(disco.BindV1(bind, vni, generation, remote)) + rng.randbytes(8),
    ]


# -- the relay core -----------------------------------------------------------

INIT, CHALLENGED, BOUND = "init", "challenged", "bound"

# VNI -> (client number, handshake state) for both clients. Client 0 and client
# 2 are in two endpoints each; VNIs share bytes so that a misread VNI shows.
ENDPOINT_PLAN: tuple[tuple[int, tuple[tuple[int, str], tuple[int, str]]], ...] = (
    (1, ((0, INIT), (1, INIT))),
    (2, ((2, CHALLENGED), (3, INIT))),
    (3, ((4, CHALLENGED), (5, CHALLENGED))),
    (4, ((6, BOUND), (7, CHALLENGED))),
    (5, ((8, BOUND), (9, BOUND))),
    (0x000100, ((2, CHALLENGED), (10, BOUND))),
    (0x010001, ((11, BOUND), (12, INIT))),
    (0xFFFFFF, ((0, BOUND), (13, BOUND))),
)
CLIENTS = 14
TUPLE_CLIENTS = 7  # clients 0-6 have (host, port) addresses, the others sockaddr bytes
STATE_OF = {Handshake.INIT: INIT, Handshake.CHALLENGE_SENT: CHALLENGED, Handshake.BOUND: BOUND}
GENEROUS_LIMITS = HandshakeLimits(1e15, 1e15, 1e15)


def sockaddr_in(host: str, port: int) -> bytes:
    family = socket.AF_INET.to_bytes(2, sys.byteorder)
    return family + port.to_bytes(2, "big") + socket.inet_pton(socket.AF_INET, host) + bytes(8)


def sockaddr_in6(host: str, port: int, flow: int = 0, scope: int = 0) -> bytes:
    """A ``sockaddr_in6`` as the batched transport passes sources to the core."""
    return (
        socket.AF_INET6.to_bytes(2, sys.byteorder)
        + port.to_bytes(2, "big")
        + flow.to_bytes(4, "big")
        + socket.inet_pton(socket.AF_INET6, host)
        + scope.to_bytes(4, sys.byteorder)
    )


def client_addr(number: int) -> Any:
    if number < TUPLE_CLIENTS:
        return (f"192.0.2.{number + 1}", 40001 + number)
    return sockaddr_in6(f"::ffff:192.0.2.{number + 1}", 40001 + number)


# Never a client's address, some of them near misses of one.
ATTACKER_ADDRS: tuple[Any, ...] = (
    ("198.51.100.7", 4242),
    ("203.0.113.9", 40001),
    ("192.0.2.1", 40002),
    ("::ffff:192.0.2.1", 40001),
    ("192.0.2.1", 40001, 0, 0),
    ("2001:db8::1", 40001, 0, 0),
    sockaddr_in6("::ffff:198.51.100.7", 4242),
    sockaddr_in6("::ffff:192.0.2.8", 40008, flow=1),
    sockaddr_in6("::ffff:192.0.2.9", 40008),
    sockaddr_in("192.0.2.8", 40008),
)


class ClientSnap(NamedTuple):
    handshake: Handshake
    addr: Any
    last_seen: float | None
    packets: int
    bytes: int


class EndpointSnap(NamedTuple):
    lamport_id: int
    bound: bool
    bound_at: float | None
    deadline: float
    clients: tuple[ClientSnap, ClientSnap]


class CoreSnap(NamedTuple):
    """The core's state; each endpoint is a flat tuple (cheap to take), read through ``view``."""

    endpoints: dict[int, tuple[Any, ...]]
    size: int
    bound_count: int
    forwarded_packets: int
    forwarded_bytes: int
    handshakes_completed: int
    next_deadline: float | None


def snapshot(core: RelayCore) -> CoreSnap:
    """Everything about the core that a datagram could change, drops apart."""
    endpoints = {}
    for e in core.endpoints():
        a, b = e.clients
        endpoints[e.allocation.vni] = (
            e.allocation.lamport_id,
            e.bound,
            e.bound_at,
            e.deadline,
            a.handshake,
            a.addr,
            a.last_seen,
            a.packets,
            a.bytes,
            b.handshake,
            b.addr,
            b.last_seen,
            b.packets,
            b.bytes,
        )
    return CoreSnap(
        endpoints,
        len(core),
        core.bound_count,
        core.forwarded_packets,
        core.forwarded_bytes,
        core.handshakes_completed,
        core.next_deadline(),
    )


def view(flat: tuple[Any, ...]) -> EndpointSnap:
    return EndpointSnap(*flat[:4], (ClientSnap(*flat[4:9]), ClientSnap(*flat[9:14])))


def flatten(endpoint: EndpointSnap) -> tuple[Any, ...]:
    return (*endpoint[:4], *endpoint.clients[0], *endpoint.clients[1])


@dataclass
class Member:
    """One client of one endpoint as the oracle sees it: its own keys, never the core's."""

    number: int
    public: bytes
    shared: bytes
    addr: Any
    challenge: bytes


@dataclass
class World:
    """A core with endpoints in every state, built deterministically from a seed."""

    core: RelayCore
    pristine: RelayCore
    baseline: CoreSnap
    members: dict[int, tuple[Member, Member]]
    corpus: list[bytes]
    replays: list[tuple[Any, bytes]]
    server_public: bytes
    now: float
    steady_state_lifetime: float
    restores: int = 0

    def restore(self) -> None:
        """Undo every endpoint change; the handshake limiter's buckets live on, as they would."""
        limiter = getattr(self.core, "_handshake_limiter", None)
        self.core = copy.deepcopy(self.pristine)
        if limiter is not None:
            self.core._handshake_limiter = limiter
        self.baseline = snapshot(self.core)
        self.restores += 1


def build_world(seed: int, limits: HandshakeLimits = GENEROUS_LIMITS) -> World:
    rng = random.Random(f"core:{seed}")
    server = DiscoPrivateKey(rng.randbytes(32))
    core = RelayCore(server, rng.randbytes(32), 30.0, 300.0, handshake_limits=limits)
    keys = [DiscoPrivateKey(rng.randbytes(32)) for _ in range(CLIENTS)]
    allocated_at = 1_700_000_000.0
    now = allocated_at + 1.0
    members: dict[int, tuple[Member, Member]] = {}
    corpus: list[bytes] = []
    replays: list[tuple[Any, bytes]] = []
    foreign = DiscoPrivateKey(rng.randbytes(32))
    foreign_shared = foreign.shared(server.public)

    def sealed(vni: int, sender: bytes, shared: bytes, payload: bytes) -> bytes:
        nonce = rng.randbytes(disco.NONCE_LEN)
        box = bindings.crypto_box_afternm(payload, nonce, shared)
        return geneve.control_header(vni) + disco.MAGIC + sender + nonce + box

    for lamport_id, (vni, plan) in enumerate(ENDPOINT_PLAN, 1):
        ordered = sorted(plan, key=lambda entry: keys[entry[0]].public.raw)
        allocation = Allocation(
            "fuzz",
            vni,
            lamport_id,
            raw_pair((keys[ordered[0][0]].public, keys[ordered[1][0]].public)),
            allocated_at,
        )
        core.install(allocation)
        pair = []
        for index, (number, state) in enumerate(ordered):
            key = keys[number]
            shared = key.shared(server.public)
            challenge = core.challenge(allocation, index)
            member = Member(number, key.public.raw, shared, client_addr(number), challenge)
            pair.append(member)
            client = RelayClient(key, server.public, vni, protocol=0)
            if state != INIT:
                reply = core.handle(client.bind(), member.addr, now)
                assert reply is not None, f"no challenge for client {number} of VNI {vni}"
                if state == BOUND:
                    assert core.handle(client.answer(reply[0]), member.addr, now) is None
            for message in (
                disco.BindUDPRelayEndpoint(),
                disco.BindUDPRelayEndpointAnswer(challenge),
            ):
                replays.append(
                    (member.addr, sealed(vni, member.public, shared, disco.marshal(message)))
                )
            for payload in payload_seeds(rng):
                corpus.append(sealed(vni, member.public, shared, payload))
            other = keys[ordered[1 - index][0]].public.raw
            for payload in v1_seeds(rng, vni, other, member.public):
                corpus.append(sealed(vni, member.public, shared, payload))
            for message in (
                disco.BindUDPRelayEndpointAnswer(challenge),
                disco.BindUDPRelayEndpointChallenge(challenge),
            ):
                corpus.append(sealed(vni, member.public, shared, disco.marshal(message)))
                corpus.append(sealed(vni, server.public.raw, shared, disco.marshal(message)))
            corpus.append(geneve.data_header(vni) + rng.randbytes(rng.randrange(64)))
        members[vni] = (pair[0], pair[1])
        endpoint = core.endpoint(vni)
        assert endpoint is not None
        assert [STATE_OF[c.handshake] for c in endpoint.clients] == [s for _, s in ordered]
        if endpoint.bound:
            for member in pair:
                assert core.handle(geneve.data_header(vni) + b"warm", member.addr, now) is not None
        bind = disco.marshal(disco.BindUDPRelayEndpoint())
        corpus.append(sealed(vni, foreign.public.raw, foreign_shared, bind))
    core.take_bound()
    return World(
        core=core,
        pristine=copy.deepcopy(core),
        baseline=snapshot(core),
        members=members,
        corpus=corpus,
        replays=replays,
        server_public=server.public.raw,
        now=now,
        steady_state_lifetime=core.steady_state_lifetime,
    )


class Expect(NamedTuple):
    """The oracle's verdict: ``drop``, ``challenge``, ``bound`` or ``forward`` (and whose).

    ``work`` tells that the datagram reached the handshake work (a control
    message of a client not yet bound), which a rate limit may refuse instead.
    """

    kind: str
    vni: int = 0
    index: int = 0
    work: bool = False
    generation: int = 0


DROP = Expect("drop")
WORK_DROP = Expect("drop", work=True)
_FRAME_MIN = geneve.HEADER_LEN + disco.MIN_FRAME_LEN


def expect(world: World, datagram: bytes, source: Any) -> Expect:
    """What docs/protocol.md says ``datagram`` from ``source`` does to the world's baseline."""
    if len(datagram) < geneve.HEADER_LEN:
        return DROP
    vni = int.from_bytes(datagram[4:7], "big")
    flat = world.baseline.endpoints.get(vni)
    if flat is None:
        return DROP
    snap = view(flat)
    if not datagram[1] & 0x80:
        if not snap.bound:
            return DROP
        for index, client in enumerate(snap.clients):
            if source == client.addr:
                return Expect("forward", vni, index)
        return DROP
    v1 = len(datagram) - _FRAME_MIN - 2 >= V1_BODY
    if (snap.bound and not v1) or datagram[2:4] != b"\x7a\x11" or len(datagram) < _FRAME_MIN:
        return DROP
    if datagram[8:14] != disco.MAGIC:
        return DROP
    sender = datagram[14:46]
    members = world.members[vni]
    if sender == members[0].public:
        index = 0
    elif sender == members[1].public:
        index = 1
    else:
        return DROP
    member = members[index]
    client = snap.clients[index]
    if client.handshake is Handshake.BOUND and not v1:
        return DROP
    try:
        payload = bindings.crypto_box_open_afternm(datagram[70:], datagram[46:70], member.shared)
    except Exception:
        return WORK_DROP
    if len(payload) < 2:
        return WORK_DROP
    if v1:
        return _expect_v1(world, vni, index, payload)
    if payload[0] == disco.TYPE_BIND:
        if client.handshake is Handshake.INIT or source == client.addr:
            return Expect("challenge", vni, index, work=True)
        return WORK_DROP
    if (
        payload[0] == disco.TYPE_ANSWER
        and len(payload) >= 34
        and client.handshake is Handshake.CHALLENGE_SENT
        and source == client.addr
        and payload[2:34] == member.challenge
    ):
        return Expect("bound", vni, index, work=True)
    return WORK_DROP


V1_BODY = 72
"""A version 1 bind body: VNI 4, generation 4, other client's key 32, challenge 32."""


def _expect_v1(world: World, vni: int, index: int, payload: bytes) -> Expect:
    """A version 1 bind is answered whatever the client's state and source; an answer never
    binds here, since every client of the world is at rest with no handshake in progress."""
    if payload[0] != disco.TYPE_BIND:
        return WORK_DROP
    body = payload[2:]
    remote = world.members[vni][1 - index].public
    generation = int.from_bytes(body[4:8], "big")
    if int.from_bytes(body[0:4], "big") != vni or body[8:40] != remote or generation == 0:
        return WORK_DROP
    return Expect("challenge_v1", vni, index, work=True, generation=generation)


def with_client(
    snap: CoreSnap, vni: int, index: int, client: ClientSnap, **changes: Any
) -> CoreSnap:
    endpoint = view(snap.endpoints[vni])
    clients = list(endpoint.clients)
    clients[index] = client
    endpoints = dict(snap.endpoints)
    endpoints[vni] = flatten(endpoint._replace(clients=tuple(clients), **changes))
    return snap._replace(endpoints=endpoints)


def diff(expected: CoreSnap, actual: CoreSnap) -> str:
    lines = []
    for name in CoreSnap._fields:
        if name == "endpoints":
            continue
        if getattr(expected, name) != getattr(actual, name):
            lines.append(
                f"{name}: expected {getattr(expected, name)!r}, got {getattr(actual, name)!r}"
            )
    for vni in sorted(set(expected.endpoints) | set(actual.endpoints)):
        want, got = expected.endpoints.get(vni), actual.endpoints.get(vni)
        if want != got:
            shown = [None if e is None else view(e) for e in (want, got)]
            lines.append(f"VNI {vni}: expected {shown[0]!r}, got {shown[1]!r}")
    return "; ".join(lines)
