"""Bind handshakes over UDP for many endpoints at once (bench.dataplane, bench.handshakes).

:class:`Binder` runs both clients' bind -> challenge -> answer for many
endpoints with a window of endpoints in flight, from a pool of client
sockets (client side i of endpoint e uses socket (2e + i) mod pool size).
An endpoint counts as done when a data packet sent by its first client,
after both answers, comes out at its second client: the server relays it
only once both answers were taken, and it sits behind them in the server's
one receive queue. An endpoint not done within ``retry`` seconds gets both
binds (and the data packet) again; a bound client ignores the extra bind.

Binds are in protocol version 0 (tailscale.com v1.84.0) or 1 (v1.102.5 and
today's clients; docs/protocol.md "Version 1"): a version 1 bind names the
endpoint's other client and generation 1, and its answer echoes the whole
challenge body.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nacl import bindings
from nacl.exceptions import CryptoError

from bench.clients import KeySet
from bench.sockets import drain, wait_drained
from relay.protocol import disco, geneve

_BIND_PLAIN = disco.marshal(disco.BindUDPRelayEndpoint())
_GENERATION = 1
_CHALLENGE_BODY = {0: disco.CHALLENGE_LEN, 1: disco.V1_BODY_LEN}
_NONCE = slice(geneve.HEADER_LEN + disco.NONCE_OFFSET, geneve.HEADER_LEN + disco.BOX_OFFSET)
_BOX = geneve.HEADER_LEN + disco.BOX_OFFSET
_DONE_PAYLOAD = b"bound?"


def control_prefix(keys: KeySet, key: int, vni: int) -> bytes:
    """Geneve control header, disco magic and sender key of client key ``key`` for ``vni``."""
    return geneve.control_header(vni) + disco.MAGIC + keys.public[key]


def bind_plain(keys: KeySet, vni: int, remote: int | None) -> bytes:
    """A bind's plaintext: version 1 naming client key ``remote`` when given, else version 0."""
    if remote is None:
        return _BIND_PLAIN
    bind = disco.BindV1(disco.TYPE_BIND, vni, _GENERATION, keys.public[remote])
    return disco.marshal(bind)


def bind_datagram(
    keys: KeySet, key: int, vni: int, server_key: bytes, remote: int | None = None
) -> bytes:
    """A bind from client key ``key`` for ``vni``, sealed to the server; version 1 (naming
    the other client, key ``remote``) when ``remote`` is given, else version 0."""
    nonce = os.urandom(disco.NONCE_LEN)
    plain = bind_plain(keys, vni, remote)
    box = bindings.crypto_box_afternm(plain, nonce, keys.shared(key, server_key))
    return control_prefix(keys, key, vni) + nonce + box


def forged_bind(keys: KeySet, key: int, vni: int, remote: int | None = None) -> bytes:
    """A bind as long as a real one (version 1 when ``remote`` is given), with client key
    ``key`` as sender and a box of noise."""
    length = disco.NONCE_LEN + len(bind_plain(keys, vni, remote)) + disco.TAG_LEN
    return control_prefix(keys, key, vni) + os.urandom(length)


def client_of(slot: int, side: int, pool: int) -> int:
    """The pool socket that client ``side`` (0 or 1) of the ``slot``-th endpoint of a run uses."""
    return (2 * slot + side) % pool


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
    """Both clients' bind handshakes for ``endpoints`` [(key-set index, VNI), ...], in
    protocol version ``protocol``.

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
        protocol: int = 0,
    ) -> None:
        if len(sockets) < 2:
            raise ValueError("the two clients of an endpoint need two sockets")
        self.challenge_body = _CHALLENGE_BODY[protocol]
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
            names = (b, a) if protocol else (None, None)
            self.binds.append(
                (
                    bind_datagram(keys, a, vni, server_key, names[0]),
                    bind_datagram(keys, b, vni, server_key, names[1]),
                )
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
        body = self.challenge_body
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
                        if plain[0] != disco.TYPE_CHALLENGE or len(plain) < 2 + body:
                            continue
                        nonce = urandom(disco.NONCE_LEN)
                        answer = bytes((disco.TYPE_ANSWER, 0)) + plain[2 : 2 + body]
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
