"""The control client: a relay registers as a tailnet node and follows its map (asyncio).

A relay joins a tailnet the way tailscaled does (tailscale.com v1.102.5,
``control/controlclient/direct.go``): over a Noise + HTTP/2 connection to the
control server (:mod:`relay.tailnet.control_conn`) it registers its node key
with a pre-auth key (``POST /machine/register``) and then holds a streaming
map poll (``POST /machine/map``) whose messages :mod:`relay.tailnet.netmap`
turns into the relay's view: its addresses, the DERP map, the peers with
their keys and the grants that let them ask it for endpoints.

:meth:`ControlClient.maps` keeps that view current: when the stream breaks
(the server restarts, the network drops, nothing arrives for
``map_read`` seconds, keep-alives included) it reconnects with a backoff and
polls anew, and the first message of the new poll is a full map. It also
tells the server the relay's home DERP region once the DERP map is known
(a "lite" map update), because peers reach a node over DERP through the
home region they see for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from relay.aio import Backoff
from relay.protocol.keys import DiscoPrivateKey
from relay.tailnet import control_messages as msgs
from relay.tailnet.control_conn import (
    ControlConnection,
    ControlConnectionError,
    ServerAddress,
    fetch_server_key,
)
from relay.tailnet.control_messages import (
    ControlError,
    ControlProtocolError,
    Hostinfo,
    Registration,
    RegistrationIncomplete,
    RegistrationRefused,
)
from relay.tailnet.netmap import NetMap, choose_home_derp
from relay.tailnet.nodekeys import NodePrivateKey, NodePublicKey
from relay.tailnet.noise import MachinePrivateKey

__all__ = [
    "ControlClient",
    "ControlError",
    "ControlTimeouts",
    "Hostinfo",
    "MapPollRefused",
    "NodeIdentity",
    "Registration",
    "RegistrationIncomplete",
    "RegistrationRefused",
]

log = logging.getLogger(__name__)

REGISTER_PATH = "/machine/register"
MAP_PATH = "/machine/map"


class MapPollRefused(ControlError):
    """The server refused the map poll for good (4xx: an unknown or expired node, say)."""

    def __init__(self, status: int, body: bytes) -> None:
        text = body[:300].decode("utf-8", "replace").strip()
        super().__init__(f"the control server refused the map poll: HTTP {status}: {text}")
        self.status = status


def map_answer_error(status: int, body: bytes) -> ControlError:
    """What a map request answered with a status other than 200 means: refused for good
    (4xx, :class:`MapPollRefused`), or a server that may answer next time (anything
    else: Headscale answers 500 for a while after it restarts), which breaks this poll
    and not the client."""
    if 400 <= status < 500:
        return MapPollRefused(status, body)
    return ControlConnectionError(f"map request answered HTTP {status}: {body[:300]!r}")


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's three keys; persist them and the node stays the same node across restarts."""

    machine_key: MachinePrivateKey
    node_key: NodePrivateKey
    disco_key: DiscoPrivateKey

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(
            MachinePrivateKey.generate(), NodePrivateKey.generate(), DiscoPrivateKey.generate()
        )


@dataclass(frozen=True, slots=True)
class ControlTimeouts:
    """Seconds. ``map_read`` is the reference's map watchdog; servers send keep-alives at
    least once a minute (Headscale: every 50 to 59 s)."""

    connect: float = 15.0
    request: float = 30.0
    map_read: float = 120.0
    retry_min: float = 0.5
    retry_max: float = 30.0


RETRYABLE = (ControlConnectionError, ControlProtocolError, OSError, TimeoutError)
"""What breaks one poll but not the client: the next poll may work."""


class ControlClient:
    """A node's client of one control server. Use it from one task (and :meth:`close` it)."""

    def __init__(
        self,
        server_url: str,
        identity: NodeIdentity,
        hostinfo: Hostinfo,
        *,
        timeouts: ControlTimeouts = ControlTimeouts(),
        auto_home_derp: bool = True,
        ca_file: str | None = None,
    ) -> None:
        self.server = ServerAddress.parse(server_url, ca_file)
        self.identity = identity
        self.hostinfo = hostinfo
        self.timeouts = timeouts
        self.auto_home_derp = auto_home_derp
        self.netmap: NetMap | None = None
        """The current poll's view of the tailnet (None before the first map message)."""
        self.polls = 0
        """How many map polls have started (more than one: the poll was resumed)."""
        self._connection: ControlConnection | None = None

    @property
    def node_key(self) -> NodePublicKey:
        return self.identity.node_key.public

    async def connect(self) -> ControlConnection:
        """The open connection, or a new one (the server's key fetched again) if none works."""
        if self._connection is not None and not self._connection.broken:
            return self._connection
        await self._drop_connection()
        control_key = await fetch_server_key(self.server, timeout=self.timeouts.connect)
        self._connection = await ControlConnection.open(
            self.server, self.identity.machine_key, control_key, timeout=self.timeouts.connect
        )
        return self._connection

    async def register(self, auth_key: str | None) -> Registration:
        """Register our node key (with a pre-auth key, or none for a node the server knows).

        Raises :class:`RegistrationRefused` (a bad or used-up key, say),
        :class:`RegistrationIncomplete` (the server wants an interactive
        login), or a connection error.
        """
        connection = await self.connect()
        request = msgs.register_request(self.node_key, self.hostinfo, auth_key=auth_key)
        response = await connection.post(
            REGISTER_PATH, msgs.encode(request), node_key=self.node_key,
            timeout=self.timeouts.request,
        )  # fmt: skip
        registration = msgs.parse_register_response(response.status, response.body)
        log.info("registered %s with %s", self.node_key.short(), self.server.authority)
        return registration

    async def update_hostinfo(self, hostinfo: Hostinfo | None = None) -> None:
        """Tell the server our (new) Hostinfo without disturbing the map poll (a lite update)."""
        if hostinfo is not None:
            self.hostinfo = hostinfo
        connection = await self.connect()
        request = msgs.map_request(
            self.node_key, self.identity.disco_key.public, self.hostinfo,
            stream=False, omit_peers=True,
        )  # fmt: skip
        response = await connection.post(
            MAP_PATH, msgs.encode(request), node_key=self.node_key, timeout=self.timeouts.request
        )
        if response.status != 200:
            raise map_answer_error(response.status, response.body)

    async def poll(self) -> AsyncIterator[NetMap]:
        """One map poll: the net map after each message that changed it, until the stream
        breaks (the exception tells how)."""
        connection = await self.connect()
        request = msgs.map_request(
            self.node_key, self.identity.disco_key.public, self.hostinfo, stream=True
        )
        self.polls += 1
        stream = await connection.post_stream(
            MAP_PATH, msgs.encode(request), node_key=self.node_key, timeout=self.timeouts.request
        )
        try:
            if stream.status != 200:
                raise map_answer_error(stream.status, await stream.read_all(self.timeouts.request))
            netmap = NetMap()
            frames = msgs.MapFrameReader()
            async for chunk in stream.chunks(self.timeouts.map_read):
                for message in frames.feed(chunk):
                    if msgs.is_keep_alive(message):
                        continue
                    changes = netmap.apply(message)
                    self.netmap = netmap
                    if changes.derp_map:
                        await self._maybe_set_home_derp(netmap)
                    yield netmap
            raise ControlConnectionError("the server ended the map stream")
        finally:
            stream.cancel()

    async def maps(self) -> AsyncIterator[NetMap]:
        """The net map after each change, for as long as the caller iterates: polls again,
        after a backoff, whenever a poll breaks. Raises only what retrying cannot fix
        (:class:`MapPollRefused`)."""
        delays = Backoff(self.timeouts.retry_min, self.timeouts.retry_max)
        while True:
            reason: object = "the stream ended"
            try:
                async for netmap in self.poll():
                    delays.reset()
                    yield netmap
            except RETRYABLE as error:
                reason = error
            delay = delays.next_delay()
            log.warning("map poll broke (%s); polling again in %.1f s", reason, delay)
            await self._drop_connection()
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._drop_connection()

    async def _maybe_set_home_derp(self, netmap: NetMap) -> None:
        if not self.auto_home_derp or netmap.derp_map is None:
            return
        region = choose_home_derp(netmap.derp_map, self.hostinfo.preferred_derp)
        if region and region != self.hostinfo.preferred_derp:
            await self.update_hostinfo(dataclasses.replace(self.hostinfo, preferred_derp=region))
            log.info("home DERP region %d", region)

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
