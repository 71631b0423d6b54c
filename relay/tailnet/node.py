"""A relay as a node of a tailnet: registered, following its map, answering over DERP.

This is the one object a relay process runs to serve a tailnet (issue 18).
It registers the relay's node with the control server
(:class:`relay.tailnet.control.ControlClient`), follows the map poll for the
peers and their grants, keeps a DERP connection to the node's home region
(:mod:`relay.tailnet.derp_client`), and hands what arrives there to the
door for tailnet peers (:class:`relay.tailnet.peer_relay.PeerRelayDoor`),
which allocates through the relay's own ``allocate``. Each part retries on
its own with a backoff: a control server or DERP server that goes away
costs answers while it is away, never the relay; one that forgot the node
(deleted by an admin) has it registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass

from relay.aio import Backoff, stop_tasks
from relay.tailnet.allocation_requests import Peer, RequestGate
from relay.tailnet.control import (
    RETRYABLE,
    ControlClient,
    Hostinfo,
    MapPollRefused,
    NodeIdentity,
    RegistrationIncomplete,
    RegistrationRefused,
)
from relay.tailnet.derp_client import DerpConnection
from relay.tailnet.netmap import DerpNode, NetMap, choose_home_derp
from relay.tailnet.nodekeys import NodePublicKey
from relay.tailnet.peer_relay import Allocate, PeerRelayDoor
from relay.tailnet.tls import tls_context

log = logging.getLogger(__name__)

RETRY_MIN = 0.5
RETRY_MAX = 30.0
DERP_CONNECT_TIMEOUT = 15.0


class TailnetLoginError(Exception):
    """The control server will not have this node (a bad, expired or missing pre-auth key)."""


@dataclass(frozen=True)
class TailnetSettings:
    """What joining a tailnet takes; the relay's configuration fills it."""

    login_server: str
    hostname: str
    auth_key: str | None
    identity: NodeIdentity
    ca_file: str | None = None
    """A CA to trust beside the system's, for the control server and DERP over TLS."""

    @property
    def derp_over_tls(self) -> bool:
        """DERP speaks the login server's scheme: TLS for https, as Tailscale's and a
        TLS Headscale's do; plain HTTP for http, as a test bed's embedded DERP does (what
        tailscaled's TS_DEBUG_USE_DERP_HTTP selects)."""
        return self.login_server.startswith("https://")


class TailnetNode:
    """The relay's node in one tailnet. :meth:`start`, then :meth:`close`."""

    def __init__(self, settings: TailnetSettings, allocate: Allocate) -> None:
        self.settings = settings
        self.control = ControlClient(
            settings.login_server,
            settings.identity,
            Hostinfo(hostname=settings.hostname, peer_relay=True),
            ca_file=settings.ca_file,
        )
        self.door = PeerRelayDoor(RequestGate(settings.identity.disco_key), self.peer, allocate)
        self.netmap: NetMap | None = None
        self.derp_connected = False
        self.derp_connections = 0
        self.registrations = 0
        """Registrations after the first: each time the server had forgotten the node."""
        self._derp_target: DerpNode | None = None
        self._derp_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Register (raising :class:`TailnetLoginError` if refused), then follow the map and
        serve DERP in the background."""
        await self._register()
        self._tasks = [
            asyncio.create_task(self._follow_map(), name="tailnet-map"),
            asyncio.create_task(self._serve_derp(), name="tailnet-derp"),
        ]

    async def close(self) -> None:
        await stop_tasks(*self._tasks)
        self._tasks = []
        await self.control.close()

    def peer(self, node_key: bytes) -> Peer | None:
        """What the current netmap says of the node ``node_key`` (for the door's rules)."""
        netmap = self.netmap
        if netmap is None:
            return None
        node = netmap.peer_by_key(NodePublicKey(node_key))
        if node is None or node.disco_key is None:
            return None
        return Peer(node_key, node.disco_key, netmap.granted(node))

    async def _register(self) -> None:
        """As tailscaled does: a node the server knows needs no key; a new one uses it.
        A server that cannot be reached (or whose certificate does not verify) is a
        :class:`TailnetLoginError` too."""
        try:
            await self._register_once()
        except RETRYABLE as exc:
            raise TailnetLoginError(f"cannot reach {self.settings.login_server}: {exc}") from None

    async def _register_once(self) -> None:
        try:
            await self.control.register(None)
            return
        except (RegistrationIncomplete, RegistrationRefused) as unknown:
            if self.settings.auth_key is None:
                raise TailnetLoginError(
                    f"{self.settings.login_server} does not know this node and no pre-auth key "
                    f"was given (--tailnet-auth-key-file): {unknown}"
                ) from None
        try:
            await self.control.register(self.settings.auth_key)
        except (RegistrationIncomplete, RegistrationRefused) as refused:
            raise TailnetLoginError(f"{self.settings.login_server}: {refused}") from None

    async def _follow_map(self) -> None:
        """Follow the map for as long as the node runs. A poll refused for good means the
        server no longer knows the node (deleted by an admin, say): register again as at the
        start, retrying with a backoff until it takes, and poll on."""
        while True:
            try:
                async for netmap in self.control.maps():
                    self.netmap = netmap
                    target = self._home_derp_node(netmap)
                    if target != self._derp_target:
                        self._derp_target = target
                        self._derp_changed.set()
            except MapPollRefused as refused:
                log.warning("%s; registering the node again", refused)
                await self._register_again()

    async def _register_again(self) -> None:
        delays = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            try:
                await self._register()
                self.registrations += 1
                log.info("registered again with %s", self.settings.login_server)
                return
            except TailnetLoginError as exc:
                delay = delays.next_delay()
                log.warning("%s; trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    def _home_derp_node(self, netmap: NetMap) -> DerpNode | None:
        if netmap.derp_map is None:
            return None
        region_id = choose_home_derp(netmap.derp_map, self.control.hostinfo.preferred_derp)
        region = netmap.derp_map.regions.get(region_id)
        if region is None:
            return None
        return next((node for node in region.nodes if not node.stun_only), None)

    async def _serve_derp(self) -> None:
        """Hold a connection to the home region's DERP node, moving when the home moves."""
        delays = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            await self._derp_changed.wait()
            self._derp_changed.clear()
            target = self._derp_target
            if target is None:
                continue
            serving = asyncio.create_task(self._serve_derp_node(target))
            moved = asyncio.create_task(self._derp_changed.wait())
            await asyncio.wait({serving, moved}, return_when=asyncio.FIRST_COMPLETED)
            await stop_tasks(moved)
            if serving.done():
                error, delay = serving.exception(), delays.next_delay()
                log.warning("DERP %s: %s; again in %.1f s", target.host_name, error, delay)
                await asyncio.sleep(delay)
                self._derp_changed.set()
            else:
                await stop_tasks(serving)
                delays.reset()

    async def _serve_derp_node(self, target: DerpNode) -> None:
        host = target.ipv4 or target.ipv6 or target.host_name
        tls = None
        if self.settings.derp_over_tls:
            tls = tls_context(self.settings.ca_file)
            if target.insecure_for_tests:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        connection = await asyncio.wait_for(
            DerpConnection.open(
                host, target.derp_port, self.settings.identity.node_key.raw,
                tls=tls, server_hostname=target.host_name,
            ),
            DERP_CONNECT_TIMEOUT,
        )  # fmt: skip
        self.derp_connections += 1
        self.derp_connected = True
        log.info("DERP: connected to %s:%d (region %d)", host, target.derp_port, target.region_id)
        try:
            await self.door.serve(connection)
        finally:
            self.derp_connected = False
            with contextlib.suppress(Exception):
                await connection.close()
