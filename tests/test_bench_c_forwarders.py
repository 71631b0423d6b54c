"""The benches' C forwarders relay what bench.dataplane measures them on, over real UDP.

Each is built with gcc as the bench builds it; between two client sockets on
loopback it must relay both ways and drop a third party. The GRO/GSO one must
also pass a GSO train on whole (the receiver gets every segment, in order) and
the single datagrams it groups by destination, a shorter last one included.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from bench.c import build_program

UDP_SEGMENT = 103
TIMEOUT = 5.0


@pytest.fixture(params=["forwarder", "forwarder_gso"])
def forwarder(request, tmp_path) -> Iterator[tuple[socket.socket, socket.socket, tuple]]:
    """(client a, client b, the forwarder's address), the forwarder relaying between them."""
    binary = build_program(request.param, tmp_path)
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for client in (a, b):
        client.bind(("127.0.0.1", 0))
        client.settimeout(TIMEOUT)
    ports = [str(client.getsockname()[1]) for client in (a, b)]
    process = subprocess.Popen([str(binary), "0", *ports], stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(process.stdout.readline())["udp_port"]
        yield a, b, ("127.0.0.1", port)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        a.close()
        b.close()


def test_datagrams_are_relayed_both_ways_and_a_third_party_dropped(forwarder):
    a, b, relay = forwarder
    a.sendto(b"to b", relay)
    assert b.recv(100) == b"to b"
    for i in range(3):
        b.sendto(bytes([i]) * 300, relay)
    b.sendto(b"z" * 100, relay)
    assert [a.recv(1000) for _ in range(4)] == [bytes([i]) * 300 for i in range(3)] + [b"z" * 100]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"not a client", relay)
    a.sendto(b"after the stranger", relay)
    assert b.recv(100) == b"after the stranger"


def test_a_gso_train_arrives_as_its_segments_in_order(forwarder):
    a, b, relay = forwarder
    train = b"".join(bytes([i]) * 200 for i in range(10)) + b"t" * 50
    a.sendmsg([train], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", 200))], 0, relay)
    received = [b.recv(70000) for _ in range(11)]
    assert received == [bytes([i]) * 200 for i in range(10)] + [b"t" * 50]
