"""One connection to a control server: HTTP upgrade, Noise, then HTTP/2 requests (asyncio).

A node reaches its control server as tailscale.com v1.102.5 does
(``control/controlhttp``, ``control/ts2021``): it fetches the server's
machine key (``GET /key``), opens TCP (TLS for ``https:``), sends ``POST
/ts2021`` with ``Upgrade: tailscale-control-protocol`` and the Noise
initiation in ``X-Tailscale-Handshake``, and after the server's 101 the
stream carries the Noise response and records (:mod:`relay.tailnet.noise`).
Inside the records: an optional early payload, then HTTP/2 with prior
knowledge, which the sans-I/O ``h2`` library speaks; this module moves its
bytes through the Noise transport and hands each request's response to the
caller. Every wait has a timeout; a broken connection fails every request on
it with :class:`ControlConnectionError`, and the caller opens a new one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from relay.tailnet import control_messages as msgs
from relay.tailnet.nodekeys import NodePublicKey
from relay.tailnet.noise import (
    ClientHandshake,
    MachinePrivateKey,
    MachinePublicKey,
    NoiseError,
    Transport,
)
from relay.tailnet.tls import tls_context

UPGRADE_PATH = "/ts2021"
UPGRADE_PROTOCOL = "tailscale-control-protocol"
HANDSHAKE_HEADER = "X-Tailscale-Handshake"
MAX_HTTP1_RESPONSE = 64 << 10
READ_SIZE = 65536


class ControlConnectionError(msgs.ControlError):
    """The connection to the control server failed or broke; open a new one."""


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where the control server listens, from its URL (``http://host:port``, ``https://host``)."""

    scheme: str
    host: str
    port: int
    ca_file: str | None = None
    """A CA to trust beside the system's, for ``https`` (:mod:`relay.tailnet.tls`)."""

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> ServerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a control server URL is http(s)://host[:port], not {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, ca_file)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


async def fetch_server_key(server: ServerAddress, *, timeout: float) -> MachinePublicKey:
    """The control server's machine key from ``GET /key?v=<capability version>``."""
    async with asyncio.timeout(timeout):
        reader, writer = await _dial(server)
        try:
            writer.write(
                f"GET /key?v={msgs.CAPABILITY_VERSION} HTTP/1.1\r\nHost: {server.authority}\r\n"
                "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status, headers, rest = await _read_head(reader)
            body = await _read_body(reader, headers, rest)
        finally:
            writer.close()
    if status != 200:
        raise ControlConnectionError(f"GET /key answered HTTP {status}: {body[:200]!r}")
    try:
        key = json.loads(body)["publicKey"]
        return MachinePublicKey.parse(key)
    except (ValueError, KeyError, TypeError) as error:
        raise msgs.ControlProtocolError(f"GET /key answered no usable key: {error}") from None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class ResponseStream:
    """A response whose body arrives over time (the map poll)."""

    def __init__(
        self, connection: ControlConnection, stream_id: int, status: int, headers: dict[str, str]
    ) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self.status = status
        self.headers = headers

    async def chunks(self, read_timeout: float) -> AsyncIterator[bytes]:
        """The body's chunks; TimeoutError when none comes for ``read_timeout`` s."""
        while (chunk := await self._connection._read(self._stream_id, read_timeout)) is not None:
            yield chunk

    async def read_all(self, timeout: float, limit: int = 16 << 20) -> bytes:
        body = bytearray()
        async with asyncio.timeout(timeout):
            async for chunk in self.chunks(timeout):
                body += chunk
                if len(body) > limit:
                    raise msgs.ControlProtocolError(f"response body over {limit} bytes")
        return bytes(body)

    def cancel(self) -> None:
        self._connection._cancel(self._stream_id)


class _Stream:
    def __init__(self) -> None:
        self.response: asyncio.Future[tuple[int, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.data: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.window_open = asyncio.Event()


class ControlConnection:
    """An established Noise + HTTP/2 connection; :meth:`open` makes one."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        server: ServerAddress,
        transport_rest: bytes,
        noise: Transport,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._server = server
        self._noise = noise
        self._early = msgs.EarlyPayloadReader()
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._streams: dict[int, _Stream] = {}
        self._failure: ControlConnectionError | None = None
        self._connection_window = asyncio.Event()
        self._h2.initiate_connection()
        self._flush()
        self._receive_plaintext(transport_rest)
        self._task = asyncio.create_task(self._read_loop(), name="control-connection-reader")

    @classmethod
    async def open(
        cls,
        server: ServerAddress,
        machine_key: MachinePrivateKey,
        control_key: MachinePublicKey,
        *,
        timeout: float,
    ) -> ControlConnection:
        """Dial, upgrade and finish the Noise handshake within ``timeout`` s."""
        handshake = ClientHandshake(machine_key, control_key, msgs.CAPABILITY_VERSION)
        async with asyncio.timeout(timeout):
            reader, writer = await _dial(server)
            try:
                writer.write(
                    f"POST {UPGRADE_PATH} HTTP/1.1\r\nHost: {server.authority}\r\n"
                    f"Upgrade: {UPGRADE_PROTOCOL}\r\nConnection: upgrade\r\n"
                    f"{HANDSHAKE_HEADER}: {base64.b64encode(handshake.initiation).decode()}\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                status, headers, rest = await _read_head(reader)
                if status != 101:
                    body = await _read_body(reader, headers, rest)
                    raise ControlConnectionError(
                        f"the upgrade to Noise answered HTTP {status}: {body[:300]!r}"
                    )
                if headers.get("upgrade", "").lower() != UPGRADE_PROTOCOL:
                    raise ControlConnectionError(
                        f"the server upgraded to {headers.get('upgrade')!r}, not {UPGRADE_PROTOCOL}"
                    )
                transport = handshake.receive(rest)
                while transport is None:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise ControlConnectionError("the server closed during the handshake")
                    transport = handshake.receive(data)
                # Bytes that came with the response are already inside the transport.
                connection = cls(reader, writer, server, transport.open(), transport)
            except NoiseError as error:
                writer.close()
                raise ControlConnectionError(f"Noise handshake failed: {error}") from error
            except BaseException:
                writer.close()
                raise
        return connection

    @property
    def broken(self) -> bool:
        return self._failure is not None

    async def post(
        self, path: str, body: bytes, *, node_key: NodePublicKey | None, timeout: float
    ) -> Response:
        """POST a JSON body and read the whole answer within ``timeout`` s."""
        async with asyncio.timeout(timeout):
            stream = await self.post_stream(path, body, node_key=node_key, timeout=timeout)
            return Response(stream.status, stream.headers, await stream.read_all(timeout))

    async def post_stream(
        self, path: str, body: bytes, *, node_key: NodePublicKey | None, timeout: float
    ) -> ResponseStream:
        """POST a JSON body; return once the response's headers are in (within ``timeout`` s)."""
        self._check()
        stream_id = self._h2.get_next_available_stream_id()
        stream = self._streams[stream_id] = _Stream()
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", self._server.host),
            (":path", path),
            ("content-type", msgs.JSON_CONTENT_TYPE),
            ("content-length", str(len(body))),
        ]
        if node_key is not None:
            headers.append((msgs.LB_HEADER, str(node_key)))
        try:
            async with asyncio.timeout(timeout):
                self._h2.send_headers(stream_id, headers)
                await self._send_body(stream_id, stream, body)
                self._flush()
                await self._writer.drain()
                status, response_headers = await stream.response
        except BaseException:
            self._cancel(stream_id)
            raise
        return ResponseStream(self, stream_id, status, response_headers)

    async def close(self) -> None:
        if self._failure is None:
            self._failure = ControlConnectionError("the connection was closed")
            with contextlib.suppress(h2.exceptions.ProtocolError, OSError, NoiseError):
                self._h2.close_connection()
                self._flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    # Internals: h2 <-> Noise <-> socket.

    async def _send_body(self, stream_id: int, stream: _Stream, body: bytes) -> None:
        view = memoryview(body)
        while True:
            window = min(
                self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size
            )
            if window <= 0 and view:
                stream.window_open.clear()
                self._connection_window.clear()
                self._flush()
                waiters = [
                    asyncio.ensure_future(stream.window_open.wait()),
                    asyncio.ensure_future(self._connection_window.wait()),
                ]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                self._check()
                continue
            chunk, view = view[:window], view[window:]
            self._h2.send_data(stream_id, bytes(chunk), end_stream=not view)
            if not view:
                return

    async def _read(self, stream_id: int, timeout: float) -> bytes | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        item = await asyncio.wait_for(stream.data.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._streams.pop(stream_id, None)
            return None
        if not self.broken:
            self._h2.acknowledge_received_data(len(item), stream_id)
            self._flush()
        return item

    def _cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and not self.broken:
            with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(self._noise.seal(data))

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    raise ControlConnectionError("the control server closed the connection")
                self._receive_plaintext(self._noise.open(data))
        except asyncio.CancelledError:
            self._fail(ControlConnectionError("the connection was closed"))
            raise
        except ControlConnectionError as error:
            self._fail(error)
        except Exception as error:  # anything else breaks this connection, never the caller
            self._fail(ControlConnectionError(f"the control connection broke: {error!r}"))

    def _receive_plaintext(self, plaintext: bytes) -> None:
        if not self._early.done:
            if not self._early.feed(plaintext):
                return
            plaintext = self._early.rest
        if not plaintext:
            return
        for event in self._h2.receive_data(plaintext):
            self._handle(event)
        self._flush()

    def _handle(self, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived):
            if stream is not None and not stream.response.done():
                headers = {str(k).lower(): str(v) for k, v in event.headers or ()}
                stream.response.set_result((int(headers.pop(":status", "0")), headers))
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.data.put_nowait(bytes(event.data or b""))
            elif event.flow_controlled_length and event.stream_id:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.data.put_nowait(None)
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                error = ControlConnectionError(f"the server reset the request ({event.error_code})")
                _fail_stream(stream, error)
        elif isinstance(event, h2.events.WindowUpdated):
            if stream is not None:
                stream.window_open.set()
            if not event.stream_id:
                self._connection_window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise ControlConnectionError(
                f"the control server ended the HTTP/2 connection ({event.error_code})"
            )

    def _fail(self, error: ControlConnectionError) -> None:
        if self._failure is None:
            self._failure = error
        for stream in self._streams.values():
            _fail_stream(stream, error)
        self._connection_window.set()
        self._writer.close()


def _fail_stream(stream: _Stream, error: BaseException) -> None:
    if not stream.response.done():
        stream.response.set_exception(error)
        stream.response.exception()  # retrieved: no "never retrieved" warning
    stream.data.put_nowait(error)
    stream.window_open.set()


async def _dial(server: ServerAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if server.scheme == "https":
        return await asyncio.open_connection(
            server.host, server.port, ssl=tls_context(server.ca_file), server_hostname=server.host
        )
    return await asyncio.open_connection(server.host, server.port)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """An HTTP/1.1 response head: status, lower-cased headers, and the bytes after the head."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = await reader.read(4096)
        if not data:
            raise ControlConnectionError(f"the server closed before its answer: {head[:200]!r}")
        head += data
        if len(head) > MAX_HTTP1_RESPONSE:
            raise msgs.ControlProtocolError("HTTP response head too long")
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise msgs.ControlProtocolError(f"not an HTTP response: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], rest: bytes) -> bytes:
    """The body after an HTTP/1.1 head: by Content-Length, chunked, or up to the close."""
    body = bytearray(rest)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_HTTP1_RESPONSE:
            raise msgs.ControlProtocolError(f"HTTP body of {length} bytes")
        while len(body) < length:
            data = await reader.read(length - len(body))
            if not data:
                break
            body += data
        return bytes(body[:length])
    while len(body) <= MAX_HTTP1_RESPONSE and (data := await reader.read(4096)):
        body += data
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return _dechunk(bytes(body))
    return bytes(body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
