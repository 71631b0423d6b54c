"""The control connection (relay/tailnet/control_conn.py) against a small server on loopback.

Headscale proves the client in tests/tailnet/test_control_client.py; this server lets a test
choose what Headscale does not show there: no early payload, the early
payload in the same write as the Noise response, a map message far larger
than HTTP/2's initial flow-control window, a refused upgrade and a server
that hangs up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import pytest

from relay.tailnet import control_messages as msgs
from relay.tailnet import noise
from relay.tailnet.control_conn import (
    ControlConnection,
    ControlConnectionError,
    ServerAddress,
    fetch_server_key,
)
from relay.tailnet.nodekeys import NodePrivateKey

NODE = NodePrivateKey.generate().public


class FakeControl:
    """Serves /key, the Noise upgrade, and HTTP/2 answering each POST to a path with
    ``bodies[path]`` (``{}`` by default), within the client's flow-control windows."""

    def __init__(self, *, early: bool = True, refuse_upgrade: bool = False) -> None:
        self.key = noise.MachinePrivateKey.generate()
        self.early = early
        self.refuse_upgrade = refuse_upgrade
        self.bodies: dict[str, bytes] = {}
        self.silent: set[str] = set()
        """Paths answered with headers and then nothing."""
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeControl:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hang_up()
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> ServerAddress:
        return ServerAddress("http", "127.0.0.1", self.server.sockets[0].getsockname()[1])

    def hang_up(self) -> None:
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
        }
        if head.startswith("GET /key"):
            body = json.dumps({"publicKey": str(self.key.public)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            writer.close()
            return
        if self.refuse_upgrade:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
            writer.close()
            return
        accepted = noise.accept(self.key, base64.b64decode(headers["x-tailscale-handshake"]))
        transport = accepted.transport
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        plaintext = b""
        if self.early:
            payload = b'{"nodeKeyChallenge":"chalpub:' + b"0" * 64 + b'"}'
            plaintext = msgs.EARLY_PAYLOAD_MAGIC + struct.pack(">I", len(payload)) + payload
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n"
            b"Connection: upgrade\r\n\r\n"
            + accepted.response
            + transport.seal(plaintext + conn.data_to_send())
        )
        pending: dict[int, bytes] = {}
        bodies: dict[int, bytes] = {}
        paths: dict[int, dict[str, str]] = {}
        while data := await reader.read(65536):
            for event in conn.receive_data(transport.open(data)):
                if isinstance(event, h2.events.RequestReceived):
                    paths[event.stream_id] = {k.decode(): v.decode() for k, v in event.headers}
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    request = paths[event.stream_id]
                    self.requests.append((request, bodies[event.stream_id]))
                    conn.send_headers(event.stream_id, [(":status", "200")])
                    if request[":path"] not in self.silent:
                        pending[event.stream_id] = self.bodies.get(request[":path"], b"{}")
            for stream_id, rest in list(pending.items()):
                while rest and (window := conn.local_flow_control_window(stream_id)):
                    size = min(window, conn.max_outbound_frame_size, len(rest))
                    conn.send_data(stream_id, rest[:size])
                    rest = rest[size:]
                pending[stream_id] = rest
                if not rest:
                    conn.end_stream(stream_id)
                    del pending[stream_id]
            writer.write(transport.seal(conn.data_to_send()))


@pytest.fixture
async def server() -> AsyncIterator[FakeControl]:
    async with FakeControl() as fake:
        yield fake


async def open_to(fake: FakeControl) -> ControlConnection:
    key = await fetch_server_key(fake.address, timeout=5)
    assert key == fake.key.public
    return await ControlConnection.open(
        fake.address, noise.MachinePrivateKey.generate(), key, timeout=5
    )


@pytest.mark.parametrize("early", [True, False], ids=["early-payload", "no-early-payload"])
async def test_requests_travel_over_noise_and_http2(early):
    async with FakeControl(early=early) as fake:
        fake.bodies["/machine/register"] = b'{"MachineAuthorized": true}'
        connection = await open_to(fake)
        try:
            response = await connection.post("/machine/register", b'{"a":1}', node_key=NODE,
                                              timeout=5)  # fmt: skip
        finally:
            await connection.close()
    assert (response.status, response.body) == (200, b'{"MachineAuthorized": true}')
    headers, body = fake.requests[0]
    assert body == b'{"a":1}'
    assert headers["content-type"] == "application/json" and headers["ts-lb"] == str(NODE)
    assert (headers[":method"], headers[":path"]) == ("POST", "/machine/register")


async def test_a_map_message_larger_than_the_flow_control_window_arrives_whole(server):
    message = json.dumps({"Peers": [{"ID": n, "Name": "x" * 1000} for n in range(500)]})
    framed = struct.pack("<I", len(message)) + message.encode()
    server.bodies["/machine/map"] = framed * 2
    connection = await open_to(server)
    try:
        stream = await connection.post_stream("/machine/map", b"{}", node_key=NODE, timeout=5)
        frames = msgs.MapFrameReader()
        received = []
        async for chunk in stream.chunks(5):
            received += frames.feed(chunk)
    finally:
        await connection.close()
    assert len(framed) > 65535 * 4
    assert len(received) == 2 and len(received[1]["Peers"]) == 500


async def test_a_server_that_hangs_up_fails_the_open_request(server):
    connection = await open_to(server)
    try:
        server.silent.add("/x")
        stream = await connection.post_stream("/x", b"{}", node_key=None, timeout=5)
        server.hang_up()
        with pytest.raises(ControlConnectionError):
            async for _ in stream.chunks(5):
                pass
        with pytest.raises(ControlConnectionError):
            await connection.post("/y", b"{}", node_key=None, timeout=5)
        assert connection.broken
    finally:
        await connection.close()


async def test_a_refused_upgrade_is_an_error_with_the_answer():
    async with FakeControl(refuse_upgrade=True) as fake:
        with pytest.raises(ControlConnectionError, match="HTTP 403"):
            await open_to(fake)


def test_server_urls():
    assert ServerAddress.parse("http://127.0.0.1:8080") == ServerAddress("http", "127.0.0.1", 8080)
    assert ServerAddress.parse("https://hs.example").port == 443
    assert ServerAddress.parse("http://[::1]:9").authority == "[::1]:9"
    with pytest.raises(ValueError):
        ServerAddress.parse("ftp://x")


async def test_a_silent_stream_times_out_as_the_map_watchdog_wants(server):
    connection = await open_to(server)
    try:
        server.silent.add("/machine/map")
        stream = await connection.post_stream("/machine/map", b"{}", node_key=NODE, timeout=5)
        with pytest.raises(TimeoutError):
            async for _ in stream.chunks(0.2):
                pass
        stream.cancel()
        # The connection itself still works.
        assert (await connection.post("/y", b"{}", node_key=None, timeout=5)).body == b"{}"
    finally:
        await connection.close()
