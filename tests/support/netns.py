"""Three hosts on one machine, for tests whose traffic must cross real network devices.

A relay host and two client hosts, each a network namespace this module
creates, joined by veth pairs::

    client a  10.77.1.2 --- 10.77.1.1  relay  10.77.2.1 --- 10.77.2.2  client b
              fd77:1::2     fd77:1::1         fd77:2::1     fd77:2::2

Nothing is added to the machine's own namespace, so runs side by side do not
collide. The test process opens sockets inside a namespace (``setns`` around
``socket()``; a socket keeps the namespace it was made in) and starts
processes there with ``ip netns exec``.

A namespace has no way out to the machine's own loopback, where the session's
kube-apiserver and a test's redis-server listen. :func:`forward_into` gives it
one without touching the machine's routes or firewall: a listening socket on
the namespace's 127.0.0.1, made on a short-lived thread that entered the
namespace (:func:`call_inside`), whose connections this process carries on to
the target from the machine's namespace. :func:`write_forwarded_kubeconfig`
points a kubeconfig at such a port.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
RELAY_SIDE = {"a": "10.77.1.1", "b": "10.77.2.1"}
CLIENT_IP = {"a": "10.77.1.2", "b": "10.77.2.2"}
RELAY_SIDE6 = {"a": "fd77:1::1", "b": "fd77:2::1"}
CLIENT_IP6 = {"a": "fd77:1::2", "b": "fd77:2::2"}

_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/build-test-deps installs it)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block in ``namespace`` (this thread only), then come back."""
    with open("/proc/self/ns/net") as home, open(f"/run/netns/{namespace}") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


class Hosts:
    """The three namespaces; :meth:`close` removes them and everything in them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.relay = f"rf{tag}r"
        self.clients = {"a": f"rf{tag}a", "b": f"rf{tag}b"}
        self.logs: Path | None = None  # where a test keeps the logs of what runs inside

    @classmethod
    def create(cls, tag: str | None = None) -> Hosts:
        hosts = cls(tag or str(os.getpid()))
        try:
            hosts._build()
        except BaseException:
            hosts.close()
            raise
        return hosts

    def _build(self) -> None:
        for namespace in (self.relay, *self.clients.values()):
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        for side, namespace in self.clients.items():
            inner, outer = f"r{side}", f"c{side}"
            _ip("link", "add", inner, "netns", self.relay, "type", "veth",
                "peer", "name", outer, "netns", namespace)  # fmt: skip
            _ip("-n", self.relay, "addr", "add", f"{RELAY_SIDE[side]}/24", "dev", inner)
            _ip("-n", namespace, "addr", "add", f"{CLIENT_IP[side]}/24", "dev", outer)
            _ip("-n", self.relay, "addr", "add", f"{RELAY_SIDE6[side]}/64", "dev", inner, "nodad")
            _ip("-n", namespace, "addr", "add", f"{CLIENT_IP6[side]}/64", "dev", outer, "nodad")
            _ip("-n", self.relay, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", outer, "up")

    def close(self) -> None:
        for namespace in (self.relay, *self.clients.values()):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)

    def exec(self, namespace: str) -> list[str]:
        """The prefix that runs a command in ``namespace``."""
        return ["ip", "netns", "exec", namespace]

    def udp_socket(self, side: str, ipv6: bool = False) -> socket.socket:
        """A UDP socket on client ``side``'s address (IPv4 or IPv6), any port."""
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        with inside(self.clients[side]):
            sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(((CLIENT_IP6 if ipv6 else CLIENT_IP)[side], 0))
        return sock

    def relay_http(self, port: int, method: str, path: str, body: object = None) -> tuple[int, str]:
        """One HTTP request to the relay host's 127.0.0.1:``port``."""
        with inside(self.relay):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.sock = sock
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, path, body=payload)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def nft(self, *args: str) -> str:
        """``nft`` run on the relay host; its output."""
        return subprocess.run(
            [*self.exec(self.relay), "nft", *args],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip


@contextlib.contextmanager
def bare_namespace(name: str) -> Iterator[str]:
    """A namespace ``name`` with only its loopback (up) in it, removed after the block."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def call_inside(namespace: str, function: Callable[[], T]) -> T:
    """``function()`` on a thread of its own that enters ``namespace`` first and then ends,
    so that no other thread of the process changes namespace; what it returns (a socket
    keeps the namespace it was made in) or raises."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with open(f"/run/netns/{namespace}") as target:
                if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {namespace}")
            outcome.append(function())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"{ENTER_THREAD} {namespace}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


FORWARD_THREAD = "netns-forward"
"""The name of every :class:`Forward`'s thread begins with this."""
ENTER_THREAD = "netns-enter"
"""The name of :func:`call_inside`'s short-lived threads begins with this."""
CHUNK = 1 << 16
_WAKE = object()
_LISTENER = object()
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, so that its peer sees the failure."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


class _Direction:
    """Bytes read from ``source`` waiting to be written to ``sink``; done once the source
    ended and all of them went out (and the sink was shut for writing)."""

    def __init__(self, source: socket.socket, sink: socket.socket) -> None:
        self.source = source
        self.sink = sink
        self.buffer = b""
        self.eof = False
        self.done = False

    def finish_if_drained(self) -> None:
        if self.eof and not self.buffer and not self.done:
            self.sink.shutdown(socket.SHUT_WR)
            self.done = True


class _Connection:
    """One accepted connection (``inner``, in the namespace) and its ``outer`` one to the
    target; ``outer`` is connecting until ``connected``."""

    def __init__(self, inner: socket.socket, outer: socket.socket) -> None:
        self.inner = inner
        self.outer = outer
        self.connected = False
        self.directions = (_Direction(inner, outer), _Direction(outer, inner))

    def events(self, sock: socket.socket) -> int:
        """What to wait for on ``sock``: reading while there is room, writing while there
        is something to write."""
        if not self.connected:
            return selectors.EVENT_WRITE if sock is self.outer else 0
        events = 0
        for direction in self.directions:
            if direction.source is sock and not direction.eof and not direction.buffer:
                events |= selectors.EVENT_READ
            if direction.sink is sock and direction.buffer:
                events |= selectors.EVENT_WRITE
        return events

    def finished(self) -> bool:
        return all(direction.done for direction in self.directions)


class Forward:
    """A listening TCP port on 127.0.0.1 inside ``namespace`` whose connections are carried
    on to ``target`` (host, port) as seen from this process's own namespace; see
    :func:`forward_into`. One daemon thread (named ``FORWARD_THREAD ...``) moves the bytes
    both ways, half-closes passed on, a reset or error on either side resetting both.
    :meth:`close` (or leaving the ``with`` block) ends the thread and closes the listener
    and every connection."""

    def __init__(self, namespace: str, target: tuple[str, int]) -> None:
        self.namespace = namespace
        self.target = target
        family, _, _, _, address = socket.getaddrinfo(*target, type=socket.SOCK_STREAM)[0]
        self._family, self._address = family, address
        # The namespace's loopback must be up (bare_namespace and Hosts bring it up).
        self._listener = call_inside(namespace, lambda: socket.create_server(("127.0.0.1", 0)))
        self.port: int = self._listener.getsockname()[1]
        """The port on 127.0.0.1 inside the namespace."""
        self._listener.setblocking(False)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
        self._connections: set[_Connection] = set()
        self._closing = False
        self._failure: BaseException | None = None
        self.accepted = 0
        """How many connections the listener has accepted."""
        self._thread = threading.Thread(
            target=self._run,
            name=f"{FORWARD_THREAD} {namespace} 127.0.0.1:{self.port} -> {target[0]}:{target[1]}",
            daemon=True,
        )
        self._thread.start()

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Forward {self.namespace} 127.0.0.1:{self.port} -> {self.target}>"

    @property
    def connections(self) -> int:
        """How many connections are open now (read on the thread; a snapshot)."""
        return len(self._connections)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: the listener and every connection closed, the thread ended. Raises what
        ended the thread, if it failed."""
        if not self._closing:
            self._closing = True
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"x")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self!r}: the thread did not end within {timeout:g} s")
        self._wake_writer.close()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError(f"{self!r} failed") from failure

    # Everything below runs on the thread.

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select():
                    if key.data is _WAKE:
                        self._closing = True
                    elif key.data is _LISTENER:
                        self._accept()
                    elif key.data in self._connections:
                        self._serve(key.data, key.fileobj, events)
        except BaseException as exc:
            self._failure = exc
        finally:
            for connection in list(self._connections):
                self._drop(connection, reset=True)
            self._selector.close()
            self._listener.close()
            self._wake_reader.close()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the connection went before it was taken (ECONNABORTED, ...)
                continue
            self.accepted += 1
            outer = socket.socket(self._family, socket.SOCK_STREAM)
            for sock in (inner, outer):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status = outer.connect_ex(self._address)
            if status not in (0, errno.EINPROGRESS):
                outer.close()
                _abort(inner)
                continue
            connection = _Connection(inner, outer)
            self._connections.add(connection)
            self._selector.register(outer, selectors.EVENT_WRITE, connection)

    def _serve(self, connection: _Connection, sock: socket.socket, events: int) -> None:
        try:
            if not connection.connected:
                status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if status != 0:
                    raise OSError(status, os.strerror(status))
                connection.connected = True
            else:
                for direction in connection.directions:
                    if direction.sink is sock and events & selectors.EVENT_WRITE:
                        sent = sock.send(direction.buffer)
                        direction.buffer = direction.buffer[sent:]
                        direction.finish_if_drained()
                    if direction.source is sock and events & selectors.EVENT_READ:
                        data = sock.recv(CHUNK)
                        if data:
                            direction.buffer = data
                        else:
                            direction.eof = True
                            direction.finish_if_drained()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(connection, reset=True)
            return
        if connection.finished():
            self._drop(connection, reset=False)
            return
        for each in (connection.inner, connection.outer):
            self._watch(connection, each)

    def _watch(self, connection: _Connection, sock: socket.socket) -> None:
        events = connection.events(sock)
        try:
            registered = self._selector.get_key(sock).events
        except KeyError:
            registered = 0
        if events == registered:
            return
        if not registered:
            self._selector.register(sock, events, connection)
        elif not events:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, events, connection)

    def _drop(self, connection: _Connection, *, reset: bool) -> None:
        self._connections.discard(connection)
        for sock in (connection.inner, connection.outer):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                _abort(sock)
            else:
                sock.close()


def forward_into(namespace: str, target: tuple[str, int]) -> Forward:
    """A :class:`Forward`: 127.0.0.1:``.port`` inside ``namespace`` reaches ``target``
    (host, port) of this process's namespace. Close it (or use it in ``with``)."""
    return Forward(namespace, target)


def write_forwarded_kubeconfig(kubeconfig: Path, port: int, path: Path) -> Path:
    """A copy of ``kubeconfig`` at ``path`` whose clusters' servers are at 127.0.0.1:``port``
    (a :class:`Forward`'s, say), scheme and path kept. A server that was not 127.0.0.1
    keeps its name for TLS (``tls-server-name``)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config.get("clusters") or []:
        settings = cluster["cluster"]
        server = urlsplit(settings["server"])
        if server.hostname not in (None, "127.0.0.1"):
            settings.setdefault("tls-server-name", server.hostname)
        settings["server"] = urlunsplit(server._replace(netloc=f"127.0.0.1:{port}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
