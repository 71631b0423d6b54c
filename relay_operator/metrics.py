"""The operator's Prometheus metrics: allocations by outcome, their latency, the relays as the
registry shows them, and the RelayEndpoints waiting for an allocation.

Served on ``--metrics-listen`` with a registry of the operator's own, so
that several operators can share one process (tests). The relays' gauges
are read at scrape time from the registry as the operator last read it
(every ``--relay-check-interval``); the waiting RelayEndpoints from
the operator's kopf index (relay_operator/pending.py), once the handlers hand
it over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.protocol.addresses import format_address
from relay.store import RelayRecord
from relay_operator.pending import PendingIndex, count_waiting

log = logging.getLogger(__name__)

PREFIX = "relayfleet_operator"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _RelayCollector(Collector):
    def __init__(self, relays: Callable[[], dict[str, RelayRecord]]) -> None:
        self._relays = relays

    def collect(self) -> Iterator[GaugeMetricFamily]:
        relays = sorted(self._relays().values(), key=lambda r: r.name)
        gauge = GaugeMetricFamily(
            f"{PREFIX}_relays", "Registered relays, by liveness, as last seen", labels=["state"]
        )
        gauge.add_metric(["alive"], sum(r.alive for r in relays))
        gauge.add_metric(["dead"], sum(not r.alive for r in relays))
        yield gauge
        up = GaugeMetricFamily(
            f"{PREFIX}_relay_up",
            "1 while the relay heart-beats, 0 once the registry counts it dead",
            labels=["relay"],
        )
        endpoints = GaugeMetricFamily(
            f"{PREFIX}_relay_endpoints",
            "Endpoints (VNIs) in use on the relay, as its last heartbeat said",
            labels=["relay"],
        )
        capacity = GaugeMetricFamily(
            f"{PREFIX}_relay_capacity",
            "Endpoints (VNIs) the relay may hold at once (its --max-endpoints)",
            labels=["relay"],
        )
        for relay in relays:
            up.add_metric([relay.name], 1 if relay.alive else 0)
            endpoints.add_metric([relay.name], relay.load)
            capacity.add_metric([relay.name], relay.capacity)
        yield up
        yield endpoints
        yield capacity


class _PendingCollector(Collector):
    """The RelayEndpoints waiting for an allocation, from the handlers' index (its ``waiting``
    part)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.index: PendingIndex = {}
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = count_waiting(self.index, self._clock())
        count = GaugeMetricFamily(
            f"{PREFIX}_pending_endpoints",
            "RelayEndpoints waiting for an allocation, by reason: New (no phase yet), or "
            "Pending's Ready reason (NoRelayAvailable, PairInUse, RelayDead, RelayRekeyed)",
            labels=["reason"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_pending_endpoints_oldest_seconds",
            "How long the longest-waiting RelayEndpoint of the reason has waited (0: none)",
            labels=["reason"],
        )
        for reason, counted in sorted(waiting.items()):
            count.add_metric([reason], counted.count)
            oldest.add_metric([reason], counted.oldest_seconds)
        yield count
        yield oldest


class OperatorMetrics:
    def __init__(
        self,
        relays: Callable[[], dict[str, RelayRecord]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.allocations = Counter(
            f"{PREFIX}_allocations",
            "Placement attempts, by outcome: created, reused, no_relay, no_vni, store_unavailable, "
            "pair_in_use",
            ["result"],
            registry=self.registry,
        )
        self.allocation_seconds = Histogram(
            f"{PREFIX}_allocation_seconds",
            "Time from a RelayEndpoint's creation to its first allocation",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.taken_up = Counter(
            f"{PREFIX}_taken_up",
            "RelayEndpoints marked to be allocated again, left without a phase after their "
            "writes were lost while the API server was away",
            registry=self.registry,
        )
        self.registry.register(_RelayCollector(relays))
        self._pending = _PendingCollector(clock)
        self.registry.register(self._pending)

    def count_pending(self, index: PendingIndex) -> None:
        """Count the RelayEndpoints of ``index`` (the ``waiting`` part of the handlers' live
        index) from now on; until then none are reported waiting."""
        self._pending.index = index

    async def serve(self, host: str, port: int) -> web.AppRunner:
        async def metrics(request: web.Request) -> web.Response:
            response = web.Response(body=generate_latest(self.registry))
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        for address in runner.addresses:
            log.info("serving /metrics on http://%s/metrics", format_address(address))
        return runner
