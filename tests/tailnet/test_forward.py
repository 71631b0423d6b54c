"""netns.forward_into: a namespace of its own reaches the machine's loopback through a forward.

Processes in the bed's namespaces (a relay of ours, its operator) need the
session's kube-apiserver and a test's redis-server, which listen on the
machine's 127.0.0.1. These prove the forward with real clients run in a bare
namespace (``ip netns exec``: redis-cli, kubectl), and that it carries
half-closes and resets, and leaves nothing behind when closed.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import netns
from tests.support.controlplane import ControlPlane, kubectl_executable
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until_sync

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

SIZE = 4 << 20  # bytes each way in the half-close test: far more than the forward buffers
TIMEOUT = 30.0


@pytest.fixture
def namespace() -> Iterator[str]:
    """A bare namespace (loopback up) of this test's own, removed after it."""
    why = netns.unavailable()
    if why is not None:
        pytest.fail(f"the forward tests cannot run: {why}", pytrace=False)
    with netns.bare_namespace(f"rffw{os.getpid()}{secrets.token_hex(2)}") as name:
        yield name


def run_inside(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def connect_inside(namespace: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` made from inside ``namespace``."""
    return netns.call_inside(
        namespace, lambda: socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    )


def receive_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def forward_threads() -> list[str]:
    return [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith((netns.FORWARD_THREAD, netns.ENTER_THREAD))
    ]


def test_redis_cli_in_the_namespace_reaches_the_hosts_redis(
    namespace: str, redis_server: RedisServer
) -> None:
    assert run_inside(namespace, "redis-cli", "-p", str(redis_server.port), "ping").returncode != 0
    with netns.forward_into(namespace, ("127.0.0.1", redis_server.port)) as forward:
        port = str(forward.port)
        ping = run_inside(namespace, "redis-cli", "-p", port, "ping")
        assert ping.stdout.strip() == "PONG", ping
        value = secrets.token_hex(8)
        put = run_inside(namespace, "redis-cli", "-p", port, "set", "forwarded", value)
        assert put.stdout.strip() == "OK", put
        assert redis_server.client().get("forwarded") == value.encode()
        assert forward.accepted == 2


def test_kubectl_in_the_namespace_reaches_the_control_plane(
    namespace: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    server = urlsplit(control_plane.server)
    assert server.hostname is not None and server.port is not None
    with netns.forward_into(namespace, (server.hostname, server.port)) as forward:
        kubeconfig = netns.write_forwarded_kubeconfig(
            control_plane.kubeconfig, forward.port, tmp_path / "forwarded.kubeconfig"
        )
        assert oct(kubeconfig.stat().st_mode & 0o777) == oct(0o600)
        assert f'"server": "https://127.0.0.1:{forward.port}"' in kubeconfig.read_text()
        got = run_inside(
            namespace, kubectl_executable(), f"--kubeconfig={kubeconfig}",
            "get", "namespaces", "-o", "name",
        )  # fmt: skip
        assert got.returncode == 0, got
        assert "namespace/kube-system" in got.stdout.split()


def test_half_closes_pass_both_ways_and_finished_connections_are_dropped(namespace: str) -> None:
    """The namespace's side sends SIZE bytes and shuts its writing side; the target echoes
    them, then after that end of file sends a trailer and closes."""
    payload = secrets.token_bytes(SIZE)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def echo() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(TIMEOUT)
            while data := connection.recv(1 << 16):
                connection.sendall(data)
            connection.sendall(b"trailer")

    server = threading.Thread(target=echo, daemon=True)
    server.start()
    try:
        with netns.forward_into(namespace, listener.getsockname()) as forward:
            with connect_inside(namespace, forward.port) as client:

                def send() -> None:
                    client.sendall(payload)
                    client.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                assert receive_all(client) == payload + b"trailer"
                sender.join(TIMEOUT)
            server.join(TIMEOUT)
            assert not server.is_alive()
            wait_until_sync(lambda: forward.connections == 0, "the forward to drop the connection")
    finally:
        listener.close()


def test_a_refused_target_resets_the_connection_in_the_namespace(namespace: str) -> None:
    with netns.forward_into(namespace, ("127.0.0.1", free_port())) as forward:
        # The reset may come before connect() returns in the namespace, or after.
        with pytest.raises(ConnectionResetError), connect_inside(namespace, forward.port) as client:
            client.recv(1)
        assert forward.accepted == 1
        assert forward.connections == 0


def test_close_leaves_no_listener_connection_or_thread(
    namespace: str, redis_server: RedisServer
) -> None:
    forward = netns.forward_into(namespace, ("127.0.0.1", redis_server.port))
    try:
        assert forward_threads(), "the forward runs a thread"
        client = connect_inside(namespace, forward.port)
        client.sendall(b"PING\r\n")
        assert client.recv(64) == b"+PONG\r\n"
    finally:
        forward.close()
    with client, pytest.raises(ConnectionResetError):
        client.recv(1)
    with pytest.raises(ConnectionRefusedError):
        connect_inside(namespace, forward.port)
    assert forward_threads() == []
    forward.close()  # a second close does nothing
