"""A DERP connection over asyncio: log in with a node key, send and receive packets.

The wire format is :mod:`relay.tailnet.derp`; this module adds the socket,
the HTTP upgrade that starts the stream (``GET /derp`` with ``Upgrade:
DERP``, over TLS or, as a test bed's embedded DERP serves it, plain HTTP) and the one
duty a client has on its own: answering the server's pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from relay.tailnet import derp

# The reference client gives up on a silent server after 120 s; servers send a
# keep-alive at least every 60 s.
READ_TIMEOUT = 120.0
MAX_RESPONSE_HEAD = 16 << 10


class DerpConnection:
    """One logged-in connection to a DERP server, as the node whose key it holds."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        node_private: bytes,
        server_public: bytes,
        frames: derp.FrameReader,
        pending: list[tuple[int, bytes]],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._node_private = node_private
        self.node_public = derp.node_public(node_private)
        self.server_public = server_public
        self._frames = frames
        self._pending = pending
        self._early: list[derp.Message] = []
        self.server_info: derp.ServerInfo | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        node_private: bytes,
        *,
        path: str = "/derp",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> DerpConnection:
        """Connect (over ``tls`` if given, verifying ``server_hostname``, else ``host``),
        upgrade to DERP and log in; raises OSError or :class:`derp.DerpError`.

        Returns once the server has answered the login with its ServerInfo.
        """
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=server_hostname or host
            )
        try:
            rest = await _upgrade(reader, writer, server_hostname or host, port, path)
            frames = derp.FrameReader()
            pending = frames.feed(rest)
            while not pending:
                data = await reader.read(65536)
                if not data:
                    raise derp.DerpError("the server closed before sending its key")
                pending = frames.feed(data)
            server_public = derp.server_key(*pending.pop(0))
            writer.write(derp.client_info(node_private, server_public))
            await writer.drain()
            connection = cls(reader, writer, node_private, server_public, frames, pending)
            # The server registers a node before it sends ServerInfo: from then on
            # packets sent to this node reach it.
            while not isinstance(message := await connection.receive(), derp.ServerInfo):
                connection._early.append(message)
            connection.server_info = message
        except BaseException:
            writer.close()
            raise
        return connection

    def send(self, destination: bytes, packet: bytes) -> None:
        """Queue a packet to the node ``destination``; :meth:`drain` waits for the socket."""
        self._writer.write(derp.send_packet(destination, packet))

    async def drain(self) -> None:
        await self._writer.drain()

    async def receive(self) -> derp.Message:
        """The next message from the server; pings are answered here and not returned."""
        if self._early:
            return self._early.pop(0)
        while True:
            while self._pending:
                kind, payload = self._pending.pop(0)
                message = derp.parse(
                    kind, payload, node_private=self._node_private, server_public=self.server_public
                )
                if isinstance(message, derp.Ping):
                    self._writer.write(derp.pong(message))
                elif message is not None:
                    return message
            data = await asyncio.wait_for(self._reader.read(65536), READ_TIMEOUT)
            if not data:
                raise ConnectionResetError("the DERP server closed the connection")
            self._pending = self._frames.feed(data)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, path: str
) -> bytes:
    """Send the upgrade request; return what followed the server's 101 answer."""
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: DERP\r\nConnection: Upgrade\r\n\r\n".encode()
    )
    await writer.drain()
    head = b""
    while b"\r\n\r\n" not in head:
        data = await reader.read(4096)
        if not data:
            raise derp.DerpError("the server closed during the HTTP upgrade")
        head += data
        if len(head) > MAX_RESPONSE_HEAD:
            raise derp.DerpError("the server's HTTP answer has no end")
    head, rest = head.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.split()[1:2] != ["101"]:
        raise derp.DerpError(f"the server refused the DERP upgrade: {status}")
    return rest
