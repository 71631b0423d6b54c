"""The operator's Prometheus metrics: allocations by outcome, their latency, relays by liveness.

Served on ``--metrics-listen`` with a registry of the operator's own, so
that several operators can share one process (tests).
"""

from __future__ import annotations

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

from relay.store import RelayRecord

PREFIX = "relayfleet_operator"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _RelayCollector(Collector):
    def __init__(self, relays: Callable[[], dict[str, RelayRecord]]) -> None:
        self._relays = relays

    def collect(self) -> Iterator[GaugeMetricFamily]:
        relays = self._relays().values()
        gauge = GaugeMetricFamily(
            f"{PREFIX}_relays", "Registered relays, by liveness, as last seen", labels=["state"]
        )
        gauge.add_metric(["alive"], sum(r.alive for r in relays))
        gauge.add_metric(["dead"], sum(not r.alive for r in relays))
        yield gauge


class OperatorMetrics:
    def __init__(self, relays: Callable[[], dict[str, RelayRecord]]) -> None:
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
        self.registry.register(_RelayCollector(relays))

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
        return runner
