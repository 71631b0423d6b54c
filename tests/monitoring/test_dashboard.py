"""The dashboard and the alerts name only metrics the code serves, and the queries the live
check runs are the dashboard's own with its variables replaced.

No Prometheus here: these run in the quick loop. tests/monitoring/test_prometheus.py runs
the same queries on a Prometheus scraping a running fleet.
"""

from __future__ import annotations

from relay.config import RelayConfig
from relay.server import RelayServer
from relay.shells.keyfile import RelaySecrets
from relay.store import MemoryStore
from relay_operator.metrics import OperatorMetrics
from tests.monitoring.prometheus import (
    ALERTS_FILE,
    METRIC,
    RATE_INTERVAL,
    Query,
    dashboard_queries,
    failures,
    load_dashboard,
    panels,
    substitute,
)

SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


def served_samples() -> set[str]:
    """The names of every sample the relay and the operator can serve, as Prometheus sees them."""
    relay = RelayServer(RelayConfig(), MemoryStore(), RelaySecrets.generate())
    registries = [relay.metrics, OperatorMetrics(dict).registry]
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))
    }


def test_every_metric_the_dashboard_queries_is_served():
    named = {
        name for query in dashboard_queries(load_dashboard()) for name in METRIC.findall(query.expr)
    }
    assert named, "no relay-fleet metric in the dashboard"
    assert named - served_samples() == set()


def test_every_metric_the_alerts_use_is_served():
    named = set(METRIC.findall(ALERTS_FILE.read_text()))
    assert len(named) >= 6
    assert named - served_samples() == set()


def test_the_dashboard_covers_what_the_issue_asks():
    queries = " ".join(query.expr for query in dashboard_queries(load_dashboard()))
    for metric in (
        "relayfleet_operator_relays",  # relays alive/dead
        "relayfleet_relay_endpoints",  # endpoints by state per relay
        "relayfleet_operator_relay_endpoints",  # VNI use ...
        "relayfleet_operator_relay_capacity",  # ... vs capacity
        "relayfleet_relay_forwarded_packets_total",
        "relayfleet_relay_forwarded_bytes_total",
        "relayfleet_relay_handshakes_completed_total",
        "relayfleet_relay_handshake_seconds_bucket",
        "relayfleet_relay_dropped_packets_total",
        "relayfleet_operator_allocations_total",
        "relayfleet_operator_allocation_seconds_bucket",
        "relayfleet_relay_pending_store_writes",
        "relayfleet_relay_store_errors_total",
        "relayfleet_relay_fast_path_endpoints",
        "relayfleet_operator_pending_endpoints",
    ):
        assert metric in queries, metric


def test_panels_are_well_formed():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "relay-fleet"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_variables_and_intervals_are_replaced():
    values = {"namespace": ".*", "datasource": "prom"}
    expr = 'rate(x{namespace=~"$namespace", a="${datasource}"}[$__rate_interval])'
    assert substitute(expr, values) == f'rate(x{{namespace=~".*", a="prom"}}[{RATE_INTERVAL}])'
    assert substitute("$unknown", values) == "$unknown"
    for query in dashboard_queries(load_dashboard()):
        assert "$" not in query.expr, query


def test_the_checker_reports_errors_and_empty_results():
    answers = {"good": (None, [{"metric": {}, "value": [0, "1"]}]), "empty": (None, [])}
    queries = [Query("p", "A", "good"), Query("p", "B", "empty"), Query("q", "A", "bad")]
    failed = failures(queries, lambda expr: answers.get(expr, ("bad_data: parse error", [])))
    assert len(failed) == 2
    assert "query B: empty\n  no series" in failed[0]
    assert "panel 'q' query A: bad\n  error: bad_data: parse error" in failed[1]
