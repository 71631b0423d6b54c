"""A real Prometheus scrapes a running fleet: every dashboard query returns series, every alert
evaluates, and a RelayEndpoint that cannot be placed is counted and alerted on.

The fleet is scripts/local-fleet's (etcd, kube-apiserver, Redis, two relays, the
operator), in a home of its own, started with ``RELAYFLEET_METRICS_LISTEN=127.0.0.1:0``
so that each relay and the operator serve /metrics on a port of its own: the relays
print theirs in their ready line, the operator logs it. Prometheus
(.dev/bin/prometheus, built by scripts/build-prometheus) scrapes them every second
and evaluates the rules the chart renders (monitoring.alerts.enabled).

Traffic makes every series exist: a RelayEndpoint is allocated and two clients
bind and relay through it, a stranger's bind is dropped, a RelayEndpoint pinned to
a relay that does not exist waits Pending, and Redis is stopped so the relays count
store errors. The dashboard check wants at least one series from each query: a
metric renamed in the code (or in the dashboard) empties its queries and fails it,
as test_a_renamed_metric_fails_the_dashboard_check shows on the same Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.shells.peer import UdpPeer
from relay_operator.pending import FRESH_FOR
from tests.monitoring.prometheus import (
    METRIC,
    PROMETHEUS,
    PROMTOOL,
    ROOT,
    Prometheus,
    alerting_rules,
    dashboard_queries,
    failures,
    load_dashboard,
    rendered_rules,
    require,
)
from tests.relay_operator.e2e_support import bind_and_relay, new_keys
from tests.support.controlplane import Process, kubectl_executable
from tests.support.waiting import wait_until_sync

pytestmark = [
    pytest.mark.monitoring,
    pytest.mark.timeout(1800),
    pytest.mark.usefixtures("helm_binary"),
]

SCRIPT = ROOT / "scripts" / "local-fleet"
OPERATOR_METRICS = re.compile(r"serving /metrics on http://(\S+)/metrics")
RELAYS = ("relay-1", "relay-2")
UNPLACEABLE = "nowhere"
"""A RelayEndpoint pinned to a relay that does not exist: it waits Pending (NoRelayAvailable)."""


@dataclass
class Monitored:
    """The running fleet and the Prometheus scraping it."""

    home: Path
    prometheus: Prometheus
    rules: dict

    def value(self, expr: str) -> float | None:
        """The value of a query giving one series, None if it gives none."""
        error, series = self.prometheus.query(expr)
        assert error is None, f"{expr}: {error}"
        return float(series[0]["value"][1]) if series else None


def local_fleet(home: Path, *args: str, env=None, timeout: float = 600):
    return subprocess.run(
        [str(SCRIPT), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


def kubectl(home: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [kubectl_executable(), f"--cache-dir={home / 'kubectl-cache'}", *args],
        env={**os.environ, "KUBECONFIG": str(home / "kubeconfig")},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def apply_endpoint(home: Path, name: str, keys: list[DiscoPrivateKey], relay: str | None = None):
    spec: dict = {"discoKeys": [str(k.public) for k in keys]}
    if relay is not None:
        spec["relay"] = relay
    resource = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "RelayEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    kubectl(home, "apply", "-f", "-", stdin=json.dumps(resource))


def status_in_phase(home: Path, name: str, phase: str):
    def check():
        resource = json.loads(kubectl(home, "-n", "default", "get", "rep", name, "-o", "json"))
        status = resource.get("status", {})
        return status.get("phase") == phase and status

    return wait_until_sync(
        check, f"RelayEndpoint {name} {phase}", timeout=60, log=home / "logs" / "operator.log"
    )


def metrics_targets(home: Path) -> dict[str, list[str]]:
    """Where the relays and the operator serve /metrics: the relays' ready lines, the
    operator's log."""
    relays = []
    for name in RELAYS:
        for line in (home / "logs" / f"{name}.out").read_text().splitlines():
            if line.startswith("{") and (ready := json.loads(line)).get("ready"):
                relays.append(ready.get("metrics") or ready["api"])
    assert len(relays) == len(RELAYS), relays

    def operator_address() -> str | None:
        found = OPERATOR_METRICS.search((home / "logs" / "operator.log").read_text())
        return found and found[1]

    operator = wait_until_sync(
        operator_address, "the operator's metrics address in its log", timeout=60
    )
    return {"relays": relays, "operator": [operator]}


async def stranger_binds(status: dict, remote: DiscoPublicKey) -> None:
    """A client whose key the endpoint does not name sends a bind: the relay drops it."""
    server = DiscoPublicKey.parse(status["serverDisco"])
    stranger = RelayClient(DiscoPrivateKey.generate(), server, status["vni"], remote_key=remote)
    host, port = status["addrPorts"][0].rsplit(":", 1)
    peer = await UdpPeer.open()
    try:
        peer.send(stranger.bind(), (host, int(port)))
    finally:
        peer.close()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> Iterator[Monitored]:
    require(PROMETHEUS)
    require(PROMTOOL)
    rules = rendered_rules()
    base = tmp_path_factory.mktemp("monitoring")
    home = base / "fleet"
    env = {**os.environ, "RELAYFLEET_METRICS_LISTEN": "127.0.0.1:0"}
    try:
        up = local_fleet(home, "up", env=env, timeout=1800)
        assert up.returncode == 0, up.stdout + up.stderr
        # First, so that it has waited past the freshness window by the last test.
        apply_endpoint(home, UNPLACEABLE, new_keys(), relay="no-such-relay")
        prometheus = Prometheus(base / "prometheus", metrics_targets(home), rules).start()
        try:
            wait_until_sync(prometheus.targets_up, "every target up", timeout=60)
            keys = new_keys()
            apply_endpoint(home, "alice-bob", keys)
            status = status_in_phase(home, "alice-bob", "Allocated")
            asyncio.run(bind_and_relay(status, keys))
            asyncio.run(stranger_binds(status, keys[1].public))
            status_in_phase(home, UNPLACEABLE, "Pending")
            monitored = Monitored(home, prometheus, rules)
            wait_until_sync(
                lambda: (
                    (monitored.value("sum(relayfleet_relay_forwarded_packets_total)") or 0) > 0
                    and monitored.value(
                        'sum(relayfleet_operator_allocations_total{result="created"})'
                    )
                ),
                "the relayed packets and the allocation in Prometheus",
                timeout=60,
            )
            # Redis goes away: the relays' heartbeats fail and are counted as store errors.
            Process("redis", home, home / "logs").stop()
            wait_until_sync(
                lambda: monitored.value("sum(relayfleet_relay_store_errors_total)"),
                "the relays' store errors in Prometheus",
                timeout=60,
            )
            yield monitored
        finally:
            prometheus.stop()
    finally:
        down = local_fleet(home, "down", "--purge", timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr


def test_every_dashboard_query_returns_series(monitored: Monitored):
    queries = dashboard_queries(load_dashboard())
    assert len(queries) >= 20
    failed: list[str] = []

    def all_answer() -> bool:
        failed[:] = failures(queries, monitored.prometheus.query)
        return not failed

    try:
        wait_until_sync(all_answer, "every dashboard query to return series", timeout=60)
    except TimeoutError:
        pytest.fail("dashboard queries without series:\n" + "\n".join(failed), pytrace=False)


def test_a_renamed_metric_fails_the_dashboard_check(monitored: Monitored):
    """What a metric renamed in the code does to the dashboard: its panels come back empty,
    and the check names them (here the dashboard is renamed instead, to the same effect)."""
    dashboard = load_dashboard()
    renamed = json.loads(
        json.dumps(dashboard).replace(
            "relayfleet_relay_forwarded_bytes_total", "relayfleet_relay_forwarded_octets_total"
        )
    )
    failed = failures(dashboard_queries(renamed), monitored.prometheus.query)
    assert len(failed) == 1, failed
    assert "panel 'Bytes forwarded /s'" in failed[0]
    assert "relayfleet_relay_forwarded_octets_total" in failed[0]
    assert failed[0].endswith("no series")


def test_every_alert_evaluates_on_the_metrics_it_names(monitored: Monitored):
    prometheus = monitored.prometheus
    for rule in alerting_rules(monitored.rules):
        error, _ = prometheus.query(rule["expr"])
        assert error is None, f"{rule['alert']}: {error}"
        for metric in set(METRIC.findall(rule["expr"])):
            assert monitored.value(f'count({{__name__="{metric}"}})'), (rule["alert"], metric)

    def evaluated() -> list[dict]:
        rules = prometheus.rules()
        return (
            len(rules) == len(alerting_rules(monitored.rules))
            and all(rule["health"] != "unknown" for rule in rules)
            and rules
        )

    for rule in wait_until_sync(evaluated, "Prometheus to evaluate every rule", timeout=60):
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_the_relays_count_the_strangers_bind_as_a_handshake_drop(monitored: Monitored):
    surging = next(
        rule for rule in alerting_rules(monitored.rules)
        if rule["alert"] == "RelayFleetHandshakeDropsSurging"
    )  # fmt: skip
    handshake = re.search(r'reason=~"[^"]+"', surging["expr"])
    assert handshake is not None
    assert monitored.value(f"sum(relayfleet_relay_dropped_packets_total{{{handshake[0]}}})")


def test_a_waiting_relay_endpoint_is_counted_and_alerted_on(monitored: Monitored):
    """The operator's ``waiting`` index reaches /metrics, stays current while kopf retries the
    resource (past FRESH_FOR, after which a frozen entry would be dropped), and the chart's
    RelayFleetEndpointsPending fires for it."""
    waited = 'max(relayfleet_operator_pending_endpoints_oldest_seconds{reason="NoRelayAvailable"})'
    wait_until_sync(
        lambda: (monitored.value(waited) or 0) > FRESH_FOR + 5,
        f"the unplaceable RelayEndpoint counted after {FRESH_FOR + 5:g} s of waiting",
        timeout=FRESH_FOR + 120,
    )
    count = 'max(relayfleet_operator_pending_endpoints{reason="NoRelayAvailable"})'
    assert monitored.value(count) == 1

    def firing() -> bool:
        alerts = monitored.prometheus.api("alerts")["data"]["alerts"]
        return any(
            alert["labels"]["alertname"] == "RelayFleetEndpointsPending"
            and alert["labels"].get("reason") == "NoRelayAvailable"
            and alert["state"] == "firing"
            for alert in alerts
        )

    wait_until_sync(firing, "RelayFleetEndpointsPending firing", timeout=30)
