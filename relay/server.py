"""A relay process's parts together: the core, its UDP socket, its agent and store, its API.

:class:`RelayServer` is what ``relayfleet relay`` and ``relayfleet demo`` run,
and what the socket-level tests start. It decides nothing the core or the
store does not: it moves datagrams, times and allocations between them.

Its HTTP side is up to two listeners: the allocation API on ``--api-listen``
(or none, ``off``) and, with ``--metrics-listen``, a public one serving only
``/metrics`` and ``/healthz``; without it, the API listener serves those too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from relay import __version__
from relay.aio import stop_tasks
from relay.config import RelayConfig
from relay.fastpath.kernel import KernelFastPath
from relay.protocol.addresses import format_host_port
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPublicKey
from relay.protocol.server_endpoint import ServerEndpoint
from relay.reporter import StatusReporter
from relay.resource.client import RelayEndpointsApi
from relay.shells.agent import RelayAgent
from relay.shells.api import AllocationsOff, InvalidRequest, ServerClosed, make_app
from relay.shells.api_limits import AllocationLimits, TooManyRequests
from relay.shells.keyfile import RelaySecrets
from relay.shells.metrics import relay_registry
from relay.shells.transport import BatchedUdpTransport, ipv6_available, open_udp_socket
from relay.store import RelayRecord, Store

log = logging.getLogger(__name__)


def advertised_ips(config: RelayConfig) -> tuple[str, ...]:
    """The IPs put in AddrPorts: ``--addr`` values, else the bound IP, else loopback."""
    if config.addrs:
        return config.addrs
    if config.listen not in ("::", "0.0.0.0"):
        return (config.listen,)
    if config.listen == "::" and ipv6_available():
        return ("127.0.0.1", "::1")
    return ("127.0.0.1",)


def remaining(deadline: float) -> float:
    """Seconds left until a ``time.monotonic()`` deadline, never negative."""
    return max(0.0, deadline - time.monotonic())


class RelayServer:
    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        secrets: RelaySecrets,
        clock: Callable[[], float] = time.time,
        api_token: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.api_token = api_token
        self.core = RelayCore(
            secrets.private_key,
            secrets.challenge_secret,
            config.bind_lifetime,
            config.steady_state_lifetime,
            config.handshake_limits,
            config.challenge_rotation,
        )
        self._clock = clock
        self.metrics = relay_registry(self)
        self.api_errors: Counter[int] = Counter()
        self.allocations_refused: Counter[str] = Counter()
        self.api_allocates = config.allocates_through_api()
        self.api_limits = AllocationLimits(
            config.api_rate,
            config.api_burst,
            config.api_max_per_pair,
            config.steady_state_lifetime,
        )
        self.closed = False
        self.udp_port = 0
        self.api_address: str | None = None
        self.metrics_address: str | None = None
        self.addr_ports: tuple[str, ...] = ()
        self._transport: BatchedUdpTransport | None = None
        self.fast_path: KernelFastPath | None = None
        self._http: list[web.AppRunner] = []
        self.agent: RelayAgent | None = None
        self.reporter: StatusReporter | None = None
        self._reporting: asyncio.Task[None] | None = None

    @property
    def send_errors(self) -> int:
        return self._transport.send_errors if self._transport else 0

    @property
    def receive_errors(self) -> int:
        return self._transport.receive_errors if self._transport else 0

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:
        """Bind the UDP socket and the API, and start expiring endpoints."""
        sock = open_udp_socket(self.config.listen, self.config.port)
        self.udp_port = sock.getsockname()[1]
        self._transport = BatchedUdpTransport(sock, self.core, self._clock)
        self._transport.start(asyncio.get_running_loop())
        self.addr_ports = tuple(
            format_host_port(ip, self.udp_port) for ip in advertised_ips(self.config)
        )
        if self.config.fast_path != "off":
            fast_path = KernelFastPath(
                self.core,
                self.udp_port,
                self.config.listen,
                self.config.fast_path_max_endpoints,
                self._clock,
            )
            if await fast_path.start():
                self.fast_path = fast_path
        if not self.config.addrs:
            log.warning("no --addr given: advertising %s only", ", ".join(self.addr_ports))
        try:
            await self._start_http()
        except BaseException:
            self._transport.close()
            await self._stop_http()
            raise
        self.agent = RelayAgent(
            self.core,
            self.store,
            self.registry_record,
            self._clock,
            heartbeat_interval=self.config.heartbeat_interval,
            resync_interval=self.config.resync_interval,
        )
        self.agent.start()
        if self.config.reports_status():
            self.reporter = StatusReporter(
                self.core,
                self.config.name,
                RelayEndpointsApi(self.config.kubeconfig),
                self._clock,
                self.config.report_interval,
                self.config.report_timeout,
            )
            self.agent.on_expired = self.reporter.note_expired
            self._reporting = asyncio.create_task(self.reporter.run(), name="status-reports")
        log.info(
            "relay %s serving UDP port %d as %s; %s",
            self.config.name,
            self.udp_port,
            self.core.server_key,
            self.listeners(),
        )

    def listeners(self) -> str:
        """What listens where, for the start-up log line."""
        allocations = "allocations on" if self.api_allocates else "allocations off"
        if self.api_address is None:
            api = "no API"
        elif self.metrics_address is None:
            api = f"API, /metrics and /healthz on http://{self.api_address} ({allocations})"
        else:
            api = f"API on http://{self.api_address} ({allocations})"
        if self.metrics_address is not None:
            return f"{api}; /metrics and /healthz on http://{self.metrics_address}"
        if self.api_address is None:
            return f"{api}, no /metrics or /healthz"
        return api

    async def _start_http(self) -> None:
        """The public listener first (with ``--metrics-listen``), then the API's (unless off)."""
        split = self.config.metrics_listen is not None
        if self.config.metrics_listen is not None:
            app = make_app(self, allocation=False, public=True)
            self.metrics_address = await self._listen(self.config.metrics_listen, app)
        if self.config.api_listen is not None:
            app = make_app(self, allocation=True, public=not split)
            self.api_address = await self._listen(self.config.api_listen, app)

    async def _listen(self, address: tuple[str, int], app: web.Application) -> str:
        """Serve ``app`` on ``address``; the address bound, as ``host:port``."""
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        bound = format_host_port(host, sock.getsockname()[1])
        runner = web.AppRunner(app, access_log=None)
        try:
            await runner.setup()
            self._http.append(runner)
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            raise
        return bound

    async def _stop_http(self) -> None:
        runners, self._http = self._http, []
        for runner in runners:
            await runner.cleanup()

    def admit(self, client: str) -> None:
        """Before an allocation request from ``client`` is read: refuse it (AllocationsOff)
        when this relay takes no allocations through its API, or when ``client`` asks too
        often (TooManyRequests); each refusal counted by reason."""
        if not self.api_allocates:
            self.allocations_refused["allocations_off"] += 1
            raise AllocationsOff(self._allocations_off_reason())
        try:
            self.api_limits.admit_client(client, self._clock())
        except TooManyRequests as exc:
            self.allocations_refused[exc.reason] += 1
            raise

    def _allocations_off_reason(self) -> str:
        if self.config.api_allocations == "auto":
            return (
                "this relay serves a Kubernetes fleet: allocate with a RelayEndpoint "
                "(kubectl apply), or start it with --api-allocations on"
            )
        return "this relay takes no allocations through its API (--api-allocations off)"

    async def allocate(self, a: DiscoPublicKey, b: DiscoPublicKey) -> ServerEndpoint:
        """Allocate (or re-use) the endpoint for a pair, and serve it.

        A request that would allocate afresh for a pair that has been so too
        often is refused (TooManyRequests, :mod:`relay.shells.api_limits`).
        """
        if self.closed or self.agent is None:
            raise ServerClosed
        if a == b:
            raise InvalidRequest("DiscoKeys must name two different keys")
        if self.core.server_key in (a, b):
            raise InvalidRequest("a client disco key equals the server's disco key")
        pair = frozenset((a, b))
        try:
            self.api_limits.admit_pair(pair, self._clock(), self._served_unbound)
        except TooManyRequests as exc:
            self.allocations_refused[exc.reason] += 1
            raise
        allocation = await self.agent.allocate((a, b))
        self.api_limits.handed_out(pair, allocation.vni, allocation.lamport_id)
        return ServerEndpoint(
            server_disco=self.core.server_key,
            lamport_id=allocation.lamport_id,
            addr_ports=self.addr_ports,
            vni=allocation.vni,
            bind_lifetime=self.core.bind_lifetime,
            steady_state_lifetime=self.core.steady_state_lifetime,
            client_disco=allocation.disco_keys,
        )

    def _served_unbound(self, vni: int, lamport_id: int) -> bool:
        """Whether that allocation is served, bound neither here nor in the store."""
        endpoint = self.core.endpoint(vni)
        return (
            endpoint is not None
            and endpoint.allocation.lamport_id == lamport_id
            and not endpoint.bound
            and not endpoint.allocation.bound
        )

    def registry_record(self) -> RelayRecord:
        return RelayRecord(
            name=self.config.name,
            server_disco=self.core.server_key,
            addr_ports=self.addr_ports,
            load=len(self.core),
            capacity=self.config.max_endpoints,
            version=__version__,
            heartbeat_at=self._clock(),
            bind_lifetime=self.core.bind_lifetime,
            steady_state_lifetime=self.core.steady_state_lifetime,
        )

    async def close(self) -> None:
        """Shut down within ``--shutdown-timeout``, leaving the store and status up to date.

        New allocations get 503 at once; the kernel fast path's last counts are
        read and its rules removed; relaying stops, so that the state is final;
        bound and expired endpoints are written to the store, then a last
        status report to Kubernetes (when reporting), each given what is left
        of the timeout; the API goes last.
        """
        self.closed = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        await stop_tasks(self._reporting)
        if self.fast_path is not None:
            try:
                await asyncio.wait_for(self.fast_path.close(), remaining(deadline))
            except TimeoutError:
                log.warning("shutdown: kernel fast path rules not removed in time; left in place")
        if self._transport is not None:
            self._transport.close()
        if self.agent is not None:
            try:
                await asyncio.wait_for(self.agent.close(), remaining(deadline))
            except TimeoutError:
                log.warning("shutdown: pending store writes not done in time; dropped")
        if self.reporter is not None:
            await self.reporter.close(remaining(deadline))
        await self._stop_http()
