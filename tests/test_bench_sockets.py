"""bench/sockets.py over real UDP on loopback: a drain counts what waits and tells when the
last of it arrived, by the kernel's receive time (what bench.workers times a round by)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from bench.sockets import drain_stamped, stamp_arrivals
from tests.support.waiting import wait_until_sync


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(sender, receiver), connected to each other on loopback."""
    sender, receiver = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (sender, receiver):
        sock.bind(("127.0.0.1", 0))
    sender.connect(receiver.getsockname())
    yield sender, receiver
    sender.close()
    receiver.close()


def drain_until(sock: socket.socket, count: int) -> list[tuple[int, int]]:
    """Drains of ``sock`` until ``count`` datagrams were read in all; each drain's result."""
    drains: list[tuple[int, int]] = []

    def enough() -> bool:
        drains.append(drain_stamped(sock))
        return sum(read for read, _ in drains) >= count

    wait_until_sync(enough, f"{count} datagrams", timeout=5)
    return drains


def test_the_last_arrival_is_stamped_between_its_send_and_the_drain(pair):
    sender, receiver = pair
    stamp_arrivals(receiver)
    sender.send(b"first")
    before_last = time.time_ns()
    sender.send(b"second")
    sender.send(b"last")
    drains = drain_until(receiver, 3)
    after = time.time_ns()
    assert sum(read for read, _ in drains) == 3
    assert before_last <= max(arrival for _, arrival in drains) <= after
    assert drain_stamped(receiver) == (0, 0)


def test_a_socket_not_stamping_drains_with_no_time(pair):
    sender, receiver = pair
    sender.send(b"one")
    assert [drain for drain in drain_until(receiver, 1) if drain[0]] == [(1, 0)]
