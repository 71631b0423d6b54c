"""Prometheus metrics of a relay, read from the core's plain counters at scrape time.

Nothing on the packet path touches a metrics library: the core keeps integers
and this collector turns them into metric families when Prometheus asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from relay import __version__
from relay.protocol.core import RelayCore
from relay.shells.agent import RelayAgent
from relay.shells.api_limits import REFUSALS
from relay.shells.summed_metrics import SummedCollector

PREFIX = "relayfleet_relay"


class FastPathCounts(Protocol):
    installed: int
    errors: int
    not_installed: int


class RelayState(Protocol):
    """What the collector reads from a running relay at scrape time; a RelayServer is one."""

    core: RelayCore
    api_errors: Mapping[int, int]
    allocations_refused: Mapping[str, int]

    @property
    def name(self) -> str: ...

    @property
    def agent(self) -> RelayAgent | None: ...

    @property
    def fast_path(self) -> FastPathCounts | None: ...

    @property
    def receive_errors(self) -> int: ...

    @property
    def send_errors(self) -> int: ...

    @property
    def gso_sends(self) -> int: ...

    @property
    def trains_received(self) -> int: ...

    @property
    def gro_sockets(self) -> int: ...


class RelayCollector(Collector):
    def __init__(self, server: RelayState) -> None:
        self._server = server

    def collect(self) -> Iterator:
        server = self._server
        core = server.core
        info = InfoMetricFamily(f"{PREFIX}", "This relay's identity")
        info.add_metric(
            [],
            {
                "name": server.name,
                "server_disco": str(core.server_key),
                "version": __version__,
            },
        )
        yield info
        yield CounterMetricFamily(
            f"{PREFIX}_forwarded_packets", "Data packets relayed", value=core.forwarded_packets
        )
        yield CounterMetricFamily(
            f"{PREFIX}_forwarded_bytes", "Bytes of data packets relayed", value=core.forwarded_bytes
        )
        yield _by_label(
            "dropped_packets", "Datagrams dropped, by reason", "reason",
            {reason.value: count for reason, count in core.drops.items()},
        )  # fmt: skip
        endpoints = GaugeMetricFamily(
            f"{PREFIX}_endpoints", "Endpoints served, by state", labels=["state"]
        )
        endpoints.add_metric(["allocated"], len(core) - core.bound_count)
        endpoints.add_metric(["bound"], core.bound_count)
        yield endpoints
        yield _by_label(
            "handshakes_completed", "Client bind handshakes completed, by protocol version",
            "version", dict(enumerate(core.handshakes_by_version)),
        )  # fmt: skip
        handshakes = HistogramMetricFamily(
            f"{PREFIX}_handshake_seconds",
            "From a client's first bind to its accepted answer, by protocol version",
            labels=["version"],
        )
        for version, histogram in enumerate(core.handshake_seconds):
            handshakes.add_metric([str(version)], histogram.cumulative(), sum_value=histogram.sum)
        yield handshakes
        yield CounterMetricFamily(
            f"{PREFIX}_allocations",
            "New allocations made",
            value=server.agent.allocations_created if server.agent else 0,
        )
        yield _by_label(
            "allocations_refused",
            "Allocation requests the API refused before allocating, by reason: "
            "allocations_off (403, --api-allocations), rate_limited and pair_limited (429)",
            "reason", {reason: server.allocations_refused.get(reason, 0) for reason in REFUSALS},
        )  # fmt: skip
        yield _by_label(
            "expired_endpoints", "Endpoints expired, by lifetime", "lifetime", core.expired
        )
        yield _by_label(
            "store_errors", "Store (Redis) operations that failed, by operation", "operation",
            server.agent.store_errors if server.agent else {},
        )  # fmt: skip
        yield _by_label(
            "api_errors", "HTTP API answers of 400 and above, by status code", "code",
            server.api_errors,
        )  # fmt: skip
        yield GaugeMetricFamily(
            f"{PREFIX}_pending_store_writes",
            "Bound marks and frees not yet written to the store (grows while it is down)",
            value=server.agent.pending_writes if server.agent else 0,
        )
        fast_path = server.fast_path
        yield GaugeMetricFamily(
            f"{PREFIX}_fast_path_endpoints",
            "Endpoints whose data the kernel relays now (--fast-path auto)",
            value=fast_path.installed if fast_path else 0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_fast_path_errors",
            "Failed nft runs, and tables found gone; each sends every endpoint to user space "
            "until the next successful poll",
            value=fast_path.errors if fast_path else 0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_fast_path_not_installed",
            "Bound endpoints the kernel cannot relay (no route, scoped IPv6, or clients of "
            "different address families), left in user space",
            value=fast_path.not_installed if fast_path else 0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_receive_errors",
            "Socket reads that failed (other than nothing to read)",
            value=server.receive_errors,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_send_errors",
            "Datagrams the socket refused to send",
            value=server.send_errors,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_gso_sends",
            "Sends of several datagrams for one destination as one UDP GSO train",
            value=server.gso_sends,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_gro_trains",
            "Reads that brought a train of several datagrams coalesced by UDP GRO",
            value=server.trains_received,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_udp_gro_sockets",
            "UDP sockets reading with UDP GRO, one per worker (--udp-gro auto: none until a "
            "busy read's datagrams come back to back from one source)",
            value=server.gro_sockets,
        )


def _by_label(name: str, text: str, label: str, counts: Mapping[Any, int]) -> CounterMetricFamily:
    """A counter with one sample per key of ``counts``, in key order."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([str(key)], count)
    return family


def relay_registry(server: RelayState) -> CollectorRegistry:
    """A registry of its own per relay, so several relays can share one process (tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(server))
    return registry


def summed_registry(texts: Callable[[], Sequence[str]]) -> CollectorRegistry:
    """The registry of a relay's parent of workers: their ``/metrics`` texts summed."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SummedCollector(texts))
    return registry
