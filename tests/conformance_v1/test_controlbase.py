"""Our control-protocol client (relay/tailnet/noise.py) against tailscale.com v1.102.5's server.

``controlbase-peer`` (tests/conformance_v1/cmd/controlbase-peer) is
controlbase.Server on a loopback TCP port: after a handshake it sends one
record saying what it saw (our machine key, the version, its handshake hash)
and then echoes what it receives, re-framed by Go's own writer. Our client
must complete the handshake, agree on the hash, and carry records both ways;
with the wrong server key, the server must refuse it.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from relay.tailnet.noise import (
    MAX_PLAINTEXT_LEN,
    ClientHandshake,
    MachinePrivateKey,
    MachinePublicKey,
    Transport,
)
from tests.conformance.servers import BIN, READY_TIMEOUT, ensure_go_helpers

CONTROLBASE_PEER = BIN / "controlbase-peer"
VERSION = 142
"""tailcfg.CurrentCapabilityVersion at v1.102.5, what its clients offer."""
IO_TIMEOUT = 10.0
SMALL_READ = 7
"""A receive size that ends most reads in the middle of a record."""


@dataclass
class Peer:
    process: subprocess.Popen
    port: int
    public_key: MachinePublicKey

    def outcome(self) -> dict[str, Any]:
        """The next connection's outcome line (printed before that connection closes)."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"controlbase-peer exited: {self.process.stderr.read()}"
        return json.loads(line)


@pytest.fixture(scope="module")
def machine_key() -> MachinePrivateKey:
    return MachinePrivateKey.generate()


@pytest.fixture(scope="module")
def peer(machine_key) -> Iterator[Peer]:
    ensure_go_helpers()
    process = subprocess.Popen(
        [str(CONTROLBASE_PEER), "--machine-key", str(machine_key.public)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = process.stdout.readline()
    if not ready:
        process.wait(READY_TIMEOUT)
        raise RuntimeError(f"controlbase-peer did not start: {process.stderr.read()}")
    fields = json.loads(ready)
    yield Peer(process, fields["port"], MachinePublicKey.parse(fields["public_key"]))
    process.terminate()
    process.wait(READY_TIMEOUT)
    process.stdout.close()
    process.stderr.close()


def connect(peer: Peer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", peer.port), timeout=IO_TIMEOUT)


def handshake(sock: socket.socket, handshake: ClientHandshake) -> Transport:
    sock.sendall(handshake.initiation)
    while True:
        data = sock.recv(SMALL_READ)
        assert data, "the server closed the connection during the handshake"
        if (transport := handshake.receive(data)) is not None:
            return transport


def receive(sock: socket.socket, transport: Transport, size: int, pending: bytes = b"") -> bytes:
    """Exactly ``size`` bytes of plaintext, read in small pieces."""
    plaintext = bytearray(pending)
    while len(plaintext) < size:
        data = sock.recv(SMALL_READ)
        assert data, f"connection closed after {len(plaintext)} of {size} bytes"
        plaintext += transport.open(data)
    assert len(plaintext) == size
    return bytes(plaintext)


def hello(sock: socket.socket, transport: Transport) -> dict[str, Any]:
    line = transport.open()
    while not line.endswith(b"\n"):
        data = sock.recv(SMALL_READ)
        assert data, "connection closed before the hello record"
        line += transport.open(data)
    return json.loads(line)


def test_the_go_server_completes_our_handshake_and_agrees_on_its_hash(peer, machine_key):
    with connect(peer) as sock:
        transport = handshake(sock, ClientHandshake(machine_key, peer.public_key, VERSION))
        assert peer.outcome() == {"peer": str(machine_key.public), "version": VERSION}
        assert hello(sock, transport) == {
            "peer": str(machine_key.public),
            "version": VERSION,
            "handshake_hash": transport.handshake_hash.hex(),
        }


def test_records_travel_both_ways(peer, machine_key):
    messages = [b"x", b"hello control", bytes(MAX_PLAINTEXT_LEN), b"\xff" * (MAX_PLAINTEXT_LEN + 1)]
    with connect(peer) as sock:
        transport = handshake(sock, ClientHandshake(machine_key, peer.public_key, VERSION))
        assert peer.outcome()["peer"] == str(machine_key.public)
        hello(sock, transport)
        for message in messages:
            sock.sendall(transport.seal(message))
            assert receive(sock, transport, len(message)) == message


def test_many_records_in_one_write_and_long_ones(peer, machine_key):
    many = [f"record {i}\n".encode() for i in range(50)]
    long = bytes(i % 253 for i in range(5 * MAX_PLAINTEXT_LEN + 123))
    with connect(peer) as sock:
        transport = handshake(sock, ClientHandshake(machine_key, peer.public_key, VERSION))
        assert peer.outcome()["version"] == VERSION
        hello(sock, transport)
        sock.sendall(b"".join(transport.seal(record) for record in many))
        assert receive(sock, transport, sum(map(len, many))) == b"".join(many)
        sock.sendall(transport.seal(long))
        assert receive(sock, transport, len(long)) == long
        assert transport.buffered == 0


def test_the_go_server_refuses_a_client_that_expects_another_key(peer, machine_key):
    wrong = ClientHandshake(machine_key, MachinePrivateKey.generate().public, VERSION)
    with connect(peer) as sock:
        sock.sendall(wrong.initiation)
        assert sock.recv(SMALL_READ) == b""
    assert "decrypting machine key" in peer.outcome()["error"]
