"""VNI steering of a SO_REUSEPORT group: each VNI's datagrams reach one worker's socket.

The program is checked twice: interpreted here, for many VNIs and worker
counts, against :func:`worker_for_vni`; and run by the kernel over real UDP
on loopback (IPv4, and IPv6 where there is one), from two client sockets,
which is what shows that the kernel hands the program the UDP payload at
offset 0 and that the source address plays no part.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from relay.shells import reuseport
from relay.shells.reuseport import (
    LOAD_WORD,
    MODULO,
    RETURN_A,
    RETURN_K,
    SHIFT_RIGHT,
    attach_vni_steering,
    open_worker_sockets,
    vni_steering_program,
    worker_for_vni,
)
from relay.shells.transport import ipv6_available

WAIT_SECONDS = 5.0
LARGE_VNIS = [2**16, 2**16 + 1, 0x7FFFFF, 0x800000, 0xABCDEF, 2**24 - 2, 2**24 - 1]
VNIS = [*range(1, 41), *LARGE_VNIS]
DISCO, WIREGUARD = 0x7A11, 0x7A12
HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback (::1) here"),
    ),
]


def geneve(vni: int, control: bool, payload: bytes) -> bytes:
    """A Geneve-framed datagram, version 0, its reserved byte set (the program must drop it)."""
    flags, protocol = (0x80, DISCO) if control else (0x00, WIREGUARD)
    return struct.pack(">BBHI", 0, flags, protocol, vni << 8 | 0xA7) + payload


def run_classic_bpf(program: bytes, packet: bytes) -> int:
    """What the kernel's classic BPF would return for ``packet``, for the opcodes used."""
    accumulator = 0
    for code, jt, jf, k in struct.iter_unpack("=HBBI", program):
        assert (jt, jf) == (0, 0)
        if code == LOAD_WORD:
            if k + 4 > len(packet):
                return 0
            accumulator = int.from_bytes(packet[k : k + 4], "big")
        elif code == SHIFT_RIGHT:
            accumulator >>= k
        elif code == MODULO:
            assert k != 0
            accumulator %= k
        elif code == RETURN_A:
            return accumulator
        elif code == RETURN_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#06x}")
    raise AssertionError("the program ran off its end")


def receive(group: list[socket.socket], count: int) -> list[tuple[int, bytes]]:
    """(socket index, datagram) of what the group receives, until ``count`` or a deadline."""
    index_of = {sock.fileno(): i for i, sock in enumerate(group)}
    poller = select.poll()
    for sock in group:
        poller.register(sock, select.POLLIN)
    received: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(remaining * 1000):
            while True:
                try:
                    received.append((index_of[fd], group[index_of[fd]].recv(65536)))
                except BlockingIOError:
                    break
    return received


def assert_nothing_else(
    group: list[socket.socket], clients: list[socket.socket], port: int, host: str
) -> None:
    """One sentinel per worker, sent last, is all that is left to read: no strays."""
    workers = len(group)
    sentinels = [(i, geneve(i, True, b"sentinel")) for i in range(workers)]
    for i, datagram in sentinels:
        clients[i % len(clients)].sendto(datagram, (host, port))
    assert sorted(receive(group, workers)) == sentinels


@pytest.fixture
def closing() -> Iterator[Callable[[list[socket.socket]], list[socket.socket]]]:
    """Registers sockets to close after the test, and checks that they all are."""
    opened: list[socket.socket] = []

    def register(sockets: list[socket.socket]) -> list[socket.socket]:
        opened.extend(sockets)
        return sockets

    try:
        yield register
    finally:
        for sock in opened:
            sock.close()
    assert all(sock.fileno() == -1 for sock in opened)


def clients_for(host: str, closing: Callable, count: int = 2) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    clients = closing([socket.socket(family, socket.SOCK_DGRAM) for _ in range(count)])
    for client in clients:
        client.bind((host, 0))
    return clients


@pytest.mark.parametrize("workers", range(1, 17))
def test_program_computes_worker_for_vni(workers: int) -> None:
    program = vni_steering_program(workers)
    assert len(program) % 8 == 0
    for vni in [0, *range(1, 300), *LARGE_VNIS, 0x123456, 0xFEDCBA]:
        for control in (True, False):
            packet = geneve(vni, control, b"payload")
            assert run_classic_bpf(program, packet) == worker_for_vni(vni, workers), vni
    assert worker_for_vni(2**24 - 1, workers) == (2**24 - 1) % workers


def test_program_for_one_worker_returns_zero() -> None:
    assert list(struct.iter_unpack("=HBBI", vni_steering_program(1))) == [(RETURN_K, 0, 0, 0)]


def test_program_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        vni_steering_program(0)


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_each_vni_reaches_its_worker_from_any_source(
    host: str, workers: int, closing: Callable
) -> None:
    group = closing(open_worker_sockets(host, 0, workers))
    assert len(group) == workers
    port = group[0].getsockname()[1]
    assert port != 0
    assert [sock.getsockname()[1] for sock in group] == [port] * workers
    assert all(not sock.getblocking() for sock in group)
    assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in group)
    clients = clients_for(host, closing)
    assert clients[0].getsockname()[1] != clients[1].getsockname()[1]

    expected = []
    for vni in VNIS:
        for c, client in enumerate(clients):
            datagram = geneve(vni, control=vni % 2 == c, payload=f"client {c} vni {vni}".encode())
            client.sendto(datagram, (host, port))
            expected.append((worker_for_vni(vni, workers), datagram))

    assert sorted(receive(group, len(expected))) == sorted(expected)
    assert {worker for worker, _ in expected} == set(range(workers))
    assert_nothing_else(group, clients, port, host)


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("length", [0, 3, 7])
def test_datagram_too_short_for_a_vni_reaches_worker_0(
    host: str, length: int, closing: Callable
) -> None:
    workers = 4
    group = closing(open_worker_sockets(host, 0, workers))
    port = group[0].getsockname()[1]
    clients = clients_for(host, closing)
    short = bytes([0, 0, 0, 7, 7, 7, 7][:length])  # 7 bytes: VNI 0x070707 (worker 3) if read
    expected = []
    for client in clients:
        client.sendto(short, (host, port))
        expected.append((0, short))
    assert receive(group, len(expected)) == expected
    assert_nothing_else(group, clients, port, host)


def test_attach_refused_without_reuseport(closing: Callable) -> None:
    (sock,) = closing([socket.socket(socket.AF_INET, socket.SOCK_DGRAM)])
    sock.bind(("127.0.0.1", 0))
    with pytest.raises(OSError, match="SO_ATTACH_REUSEPORT_CBPF") as refused:
        attach_vni_steering(sock, 4)
    assert refused.value.errno is not None


@pytest.mark.parametrize("failing", ["attach", "third socket"])
def test_failure_closes_every_socket(failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[socket.socket] = []
    make_socket = reuseport.unbound_udp_socket

    def recording_socket(host: str, reuseport: bool = False) -> socket.socket:
        if failing == "third socket" and len(created) == 2:
            raise OSError("no third socket")
        created.append(make_socket(host, reuseport))
        return created[-1]

    def refusing_attach(sock: socket.socket, workers: int) -> None:
        raise OSError("refused")

    monkeypatch.setattr(reuseport, "unbound_udp_socket", recording_socket)
    if failing == "attach":
        monkeypatch.setattr(reuseport, "attach_vni_steering", refusing_attach)
    try:
        with pytest.raises(OSError):
            open_worker_sockets("127.0.0.1", 0, 4)
    finally:
        opened = [sock.fileno() != -1 for sock in created]
        for sock in created:
            sock.close()
    assert created
    assert opened == [False] * len(created)
