"""A UDP socket with an awaitable receive queue: the client side's I/O for the demo and tests."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.shells.transport import open_udp_socket


class _QueueProtocol(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[tuple[bytes, Any]]) -> None:
        self._queue = queue

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._queue.put_nowait((data, addr))


class UdpPeer:
    """One UDP socket bound to loopback (or any host), sending to and receiving from anyone.

    Its socket buffers are as large as the relay's, so a burst the relay
    forwards in one batch is not lost at the receiver.
    """

    def __init__(self, transport: asyncio.DatagramTransport, queue: asyncio.Queue) -> None:
        self._transport = transport
        self._queue = queue
        self.address = transport.get_extra_info("sockname")

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> UdpPeer:
        queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _QueueProtocol(queue), sock=open_udp_socket(host, 0)
        )
        return cls(transport, queue)

    def send(self, datagram: bytes, destination: tuple[str, int]) -> None:
        self._transport.sendto(datagram, destination)

    async def receive(self, timeout: float = 2.0) -> bytes:
        """The next datagram; raises TimeoutError when none arrives in time."""
        data, _ = await asyncio.wait_for(self._queue.get(), timeout)
        return data

    def pending(self) -> list[bytes]:
        """Every datagram already received and not yet read, without waiting."""
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait()[0])
        return items

    def close(self) -> None:
        self._transport.close()
