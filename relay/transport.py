"""The UDP shell around the relay core: a socket, a clock, and nothing else.

Each datagram goes to :meth:`RelayCore.handle` with the time; whatever it
returns is sent. No logging, no awaiting, no locks on this path.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from relay.core import RelayCore

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket; ``::`` also takes IPv4 (dual stack)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class RelayProtocol(asyncio.DatagramProtocol):
    """Feeds received datagrams to the core and sends its answers."""

    def __init__(self, core: RelayCore, clock: Callable[[], float]) -> None:
        self._handle = core.handle
        self._clock = clock
        self._sendto: Callable[..., None] | None = None
        self.send_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        out = self._handle(data, addr, self._clock())
        if out is not None:
            self._sendto(out[0], out[1])

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1
