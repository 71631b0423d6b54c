"""A relay process's parts together: the core, its UDP socket, its agent and store, its API.

:class:`RelayServer` is what ``relayfleet relay`` and ``relayfleet demo`` run,
and what the socket-level tests start. It decides nothing the core or the
store does not: it moves datagrams, times and allocations between them.

Its HTTP side is up to two listeners: the allocation API on ``--api-listen``
(or none, ``off``) and, with ``--metrics-listen``, a public one serving only
``/metrics`` and ``/healthz``; without it, the API listener serves those too.

With ``--workers`` above 1 it is the parent of a :class:`relay.workers.WorkerPool`
(it relays nothing itself: it registers the relay, serves its HTTP side with the
workers' metrics summed, and starts and stops them), and each worker is a
RelayServer in a :class:`relay.workers.WorkerRole` (it relays on its socket, for
the VNIs it owns, and serves its ``/metrics`` on a Unix socket to the parent).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from relay import __version__
from relay.aio import stop_tasks
from relay.config import RelayConfig
from relay.fastpath.kernel import KernelFastPath
from relay.protocol.addresses import format_host_port
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPublicKey, raw_pair
from relay.protocol.server_endpoint import ServerEndpoint
from relay.reporter import StatusReporter
from relay.resource.client import RelayEndpointsApi
from relay.shells.agent import RelayAgent
from relay.shells.api import (
    AllocationsOff,
    InvalidRequest,
    ServerClosed,
    endpoint_json,
    make_app,
)
from relay.shells.api_limits import AllocationLimits, Pair, TooManyRequests
from relay.shells.keyfile import RelaySecrets
from relay.shells.metrics import relay_registry, summed_registry
from relay.shells.transport import BatchedUdpTransport, ipv6_available, open_udp_socket
from relay.store import Allocation, RelayRecord, Store, StoreUnavailable
from relay.tailnet.metrics import TailnetCollector
from relay.tailnet.node import TailnetNode, TailnetSettings
from relay.workers import EndpointChanges, WorkerPool, WorkerRole, WorkersView

log = logging.getLogger(__name__)

WORKER_SCRAPE_INTERVAL = 1.0


def advertised_ips(config: RelayConfig) -> tuple[str, ...]:
    """The IPs put in AddrPorts: ``--addr`` values, else the bound IP, else loopback."""
    if config.addrs:
        return config.addrs
    if config.listen not in ("::", "0.0.0.0"):
        return (config.listen,)
    if config.listen == "::" and ipv6_available():
        return ("127.0.0.1", "::1")
    return ("127.0.0.1",)


def serves_none(vni: int) -> bool:
    """The VNIs a parent of workers serves itself."""
    return False


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
        worker: WorkerRole | None = None,
        tailnet: TailnetSettings | None = None,
    ) -> None:
        self.config = config
        self.tailnet_settings = tailnet
        self.tailnet: TailnetNode | None = None
        self.worker = worker
        self.workers = config.worker_count()
        self.pool = (
            WorkerPool(config, secrets, self.workers) if self.workers > 1 and not worker else None
        )
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
        self._own_metrics = relay_registry(self)
        self.metrics = (
            summed_registry(self._own_and_workers_metrics) if self.pool else self._own_metrics
        )
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
        self._scraping: asyncio.Task[None] | None = None
        self.endpoint_changes: EndpointChanges | None = None

    @property
    def send_errors(self) -> int:
        return self._transport.send_errors if self._transport else 0

    @property
    def receive_errors(self) -> int:
        return self._transport.receive_errors if self._transport else 0

    @property
    def gso_sends(self) -> int:
        return self._transport.gso_sends if self._transport else 0

    @property
    def trains_received(self) -> int:
        return self._transport.trains_received if self._transport else 0

    @property
    def gro_sockets(self) -> int:
        return int(self._transport.gro) if self._transport else 0

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:
        """Bind the UDP socket (or start the workers) and the API, and start expiring
        endpoints."""
        if self.pool is not None:
            await self.pool.start()
            self.udp_port = self.pool.port
            self._scraping = asyncio.create_task(self._scrape_workers(), name="scrape-workers")
        else:
            sock = self.worker.sock if self.worker else open_udp_socket(
                self.config.listen, self.config.port
            )  # fmt: skip
            self.udp_port = sock.getsockname()[1]
            self._transport = BatchedUdpTransport(
                sock,
                self.core,
                self._clock,
                gso=self.config.udp_gso == "on",
                gro=self.config.udp_gro,
            )
            self._transport.start(asyncio.get_running_loop())
        self.addr_ports = tuple(
            format_host_port(ip, self.udp_port) for ip in advertised_ips(self.config)
        )
        if self.config.fast_path != "off" and self.pool is None:
            fast_path = KernelFastPath(
                self.core,
                self.udp_port,
                self.config.listen,
                -(-self.config.fast_path_max_endpoints // self.workers),
                self._clock,
                worker=self.worker.index if self.worker else None,
            )
            if await fast_path.start():
                self.fast_path = fast_path
        if not self.config.addrs and self.worker is None:
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
            owns=self.worker.owns if self.worker else (serves_none if self.pool else None),
            registers=self.worker is None,
            serves=self.pool is None,
        )
        self.agent.start()
        if self.worker is not None:
            self.endpoint_changes = EndpointChanges(self.core)
            self.agent.on_expired = self.endpoint_changes.note_expired
            return
        if self.config.reports_status():
            view = WorkersView(self.pool) if self.pool else None
            self.reporter = StatusReporter(
                self.core if view is None else view,
                self.config.name,
                RelayEndpointsApi(self.config.kubeconfig),
                self._clock,
                self.config.report_interval,
                self.config.report_timeout,
                before_pass=None
                if view is None
                else lambda: view.refresh(self.reporter.note_expired),
            )
            self.agent.on_expired = self.reporter.note_expired
            self._reporting = asyncio.create_task(self.reporter.run(), name="status-reports")
        if self.tailnet_settings is not None:
            await self._join_tailnet(self.tailnet_settings)
        log.info(
            "relay %s serving UDP port %d as %s; %s",
            self.config.name,
            self.udp_port,
            self.core.server_key,
            self.listeners(),
        )

    async def _join_tailnet(self, settings: TailnetSettings) -> None:
        """Register as a tailnet node answering peers' allocation requests; a refused login
        stops the start (TailnetLoginError) after closing what started."""
        node = TailnetNode(settings, self.allocate_for_tailnet)
        try:
            await node.start()
        except BaseException:
            await node.close()
            await self.close()
            raise
        self.tailnet = node
        self._own_metrics.register(TailnetCollector(node))
        log.info("joined the tailnet of %s as %s", settings.login_server, settings.hostname)

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
        """The public listener first (with ``--metrics-listen``), then the API's (unless off);
        a worker's ``/metrics`` and ``/healthz`` on its Unix socket only."""
        if self.worker is not None:
            app = make_app(self, allocation=True, public=True)
            app.router.add_post("/v0/worker/install/{vni}/{lamport_id}", self._install_from_store)
            app.router.add_post("/v0/worker/flush-bound", self._flush_bound)
            app.router.add_get("/v0/worker/changes", self._changes)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self._http.append(runner)
            await web.UnixSite(runner, self.worker.control_path).start()
            return
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

    async def _install_from_store(self, request: web.Request) -> web.Response:
        """A worker's ``POST /v0/worker/install/VNI/LAMPORTID``: its parent allocated that
        endpoint through the API and answers the client once it is served here."""
        vni, lamport_id = int(request.match_info["vni"]), int(request.match_info["lamport_id"])
        allocation = await self.store.allocation(self.name, vni)
        if allocation is None or allocation.lamport_id != lamport_id or self.agent is None:
            return web.Response(status=404, text="no such allocation in the store\n")
        self.agent.install(allocation)
        return web.Response(text="installed\n")

    async def _changes(self, request: web.Request) -> web.Response:
        """A worker's ``GET /v0/worker/changes``: :meth:`EndpointChanges.take`, pickled."""
        assert self.endpoint_changes is not None
        return web.Response(body=pickle.dumps(self.endpoint_changes.take()))

    async def _flush_bound(self, request: web.Request) -> web.Response:
        """A worker's ``POST /v0/worker/flush-bound``: its bound marks written to the store now,
        before its parent allocates for a pair that may have bound here."""
        if self.agent is None:
            return web.Response(status=503, text="not started\n")
        try:
            await self.agent.flush_bound()
        except StoreUnavailable as exc:
            return web.Response(status=503, text=f"store unavailable: {exc}\n")
        return web.Response(text="written\n")

    def _allocations_off_reason(self) -> str:
        if self.config.api_allocations == "auto":
            return (
                "this relay serves a Kubernetes fleet: allocate with a RelayEndpoint "
                "(kubectl apply), or start it with --api-allocations on"
            )
        return "this relay takes no allocations through its API (--api-allocations off)"

    async def allocate(self, a: DiscoPublicKey, b: DiscoPublicKey) -> ServerEndpoint:
        """Allocate (or re-use) the endpoint for a pair, and serve it: the allocation API's
        call."""
        return self._server_endpoint(await self._allocate(a, b))

    async def allocate_for_tailnet(self, a: DiscoPublicKey, b: DiscoPublicKey) -> ServerEndpoint:
        """:meth:`allocate` for a peer of the tailnet, asking over DERP; when reporting to
        Kubernetes, its RelayEndpoint is made (or updated) at the reporter's next pass."""
        allocation = await self._allocate(a, b)
        if self.reporter is not None:
            self.reporter.note_tailnet_allocation(
                self.config.tailnet_endpoints_namespace(), allocation, self.registry_record()
            )
        return self._server_endpoint(allocation)

    async def _allocate(self, a: DiscoPublicKey, b: DiscoPublicKey) -> Allocation:
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
        pair = raw_pair((a, b))
        unbound = self._served_unbound
        if self.pool is not None:
            last = self.api_limits.last_handed_out(pair)
            if last is not None:  # its worker's bound mark first, as the agent does for itself
                await self.pool.flush_bound(last.vni)
            unbound = await self._unbound_in_store(pair)
        try:
            self.api_limits.admit_pair(pair, self._clock(), unbound)
        except TooManyRequests as exc:
            self.allocations_refused[exc.reason] += 1
            raise
        allocation = await self.agent.allocate((a, b))
        if self.pool is not None:
            await self.pool.install(allocation.vni, allocation.lamport_id)
        self.api_limits.handed_out(allocation)
        return allocation

    def _server_endpoint(self, allocation: Allocation) -> ServerEndpoint:
        return ServerEndpoint(
            server_disco=self.core.server_key,
            lamport_id=allocation.lamport_id,
            addr_ports=self.addr_ports,
            vni=allocation.vni,
            bind_lifetime=self.core.bind_lifetime,
            steady_state_lifetime=self.core.steady_state_lifetime,
            client_disco=allocation.disco_keys,
        )

    async def _unbound_in_store(self, pair: Pair) -> Callable[[int, int], bool]:
        """:meth:`_served_unbound` for a parent of workers, which serves nothing itself: the
        store's word on the allocation this API last gave ``pair`` (bound marks reach the
        store within a second of binding)."""
        last = self.api_limits.last_handed_out(pair)
        allocation = await self.store.allocation(self.name, last.vni) if last else None
        unbound = (
            allocation is not None
            and allocation.lamport_id == last.lamport_id
            and not allocation.bound
        )
        return lambda vni, lamport_id: unbound

    async def endpoints_json(self) -> list[dict[str, Any]]:
        """Every endpoint served, for ``GET /v0/relay/endpoints``; a parent of workers asks
        each of them."""
        if self.pool is not None:
            return await self.pool.endpoints_json()
        return [endpoint_json(e, self.core.expires_at(e)) for e in self.core.endpoints()]

    def _served_unbound(self, vni: int, lamport_id: int) -> bool:
        """Whether that allocation is served, bound neither here nor in the store."""
        endpoint = self.core.endpoint(vni)
        return (
            endpoint is not None
            and endpoint.allocation.lamport_id == lamport_id
            and not endpoint.bound
            and not endpoint.allocation.bound
        )

    def _own_and_workers_metrics(self) -> list[str]:
        """A parent's own metrics (its API's answers and refusals, its store calls) first, then
        its workers' last ones: what its ``/metrics`` sums."""
        assert self.pool is not None
        return [generate_latest(self._own_metrics).decode(), *self.pool.texts]

    async def _scrape_workers(self) -> None:
        """The workers' ``/metrics``, every second: what the relay's ``/metrics`` and its
        registered load are made of."""
        while True:
            await self.pool.scrape()
            await asyncio.sleep(WORKER_SCRAPE_INTERVAL)

    def registry_record(self) -> RelayRecord:
        return RelayRecord(
            name=self.config.name,
            server_disco=self.core.server_key,
            addr_ports=self.addr_ports,
            load=self.pool.load() if self.pool else len(self.core),
            capacity=self.config.max_endpoints,
            version=__version__,
            heartbeat_at=self._clock(),
            bind_lifetime=self.core.bind_lifetime,
            steady_state_lifetime=self.core.steady_state_lifetime,
            metrics=self.metrics_address or self.api_address,
            pod=self.config.pod,
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
        if self.tailnet is not None:
            await self.tailnet.close()
        await stop_tasks(self._reporting, self._scraping)
        if self.pool is not None:
            if self.reporter is not None:  # while the workers still answer
                await self.reporter.close(remaining(deadline) / 2)
            await self.pool.close(remaining(deadline))
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
        if self.reporter is not None and self.pool is None:
            await self.reporter.close(remaining(deadline))
        await self._stop_http()
