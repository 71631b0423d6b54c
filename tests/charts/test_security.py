"""No Service, probe or NetworkPolicy rule of the chart reaches a relay's allocation API.

The API (`POST /v0/relay/endpoint`) allocates in Redis behind the operator's back
(issue 16), so in every documented value set: the relays' Services, the probes and the
relay NetworkPolicy's metrics rule reach only the metrics listener (`/metrics` and
`/healthz`, `RELAYFLEET_METRICS_LISTEN`); the API is off unless `relays.api.enabled`, and
then always requires a token mounted from a Secret (`RELAYFLEET_API_TOKEN_FILE`).
Ports are followed by number and by name, through the container's named ports.
"""

from __future__ import annotations

from functools import cache
from pathlib import PurePosixPath
from typing import Any

import pytest

from tests.charts.helm import by_kind, find, template
from tests.charts.test_render import VALUE_SETS

FULLNAME = "rf-relay-fleet"
# The API on, with every exposure and every other switch that adds a Service, a port or a rule.
SECURITY_SETS: dict[str, dict[str, Any]] = {
    **VALUE_SETS,
    "api-everything-on": {
        "relays.api.enabled": True,
        "metrics.serviceMonitor.enabled": True,
        "networkPolicy.enabled": True,
        "networkPolicy.metricsFrom.matchLabels.name": "monitoring",
        "relays.fastPath": "auto",
    },
    "api-host-network": {
        "relays.api.enabled": True,
        "relays.hostNetwork": True,
        "networkPolicy.enabled": True,
        "networkPolicy.metricsFrom.matchLabels.name": "monitoring",
    },
    "api-load-balancer": {
        "relays.api.enabled": True,
        "relays.service.type": "LoadBalancer",
        "relays.service.loadBalancerIPs": "{203.0.113.7,203.0.113.8}",
        "metrics.serviceMonitor.enabled": True,
    },
    # The API on the port the metrics listener has by default, the metrics elsewhere.
    "api-swapped-ports": {
        "relays.api.enabled": True,
        "relays.api.port": 9090,
        "relays.metricsPort": 8080,
        "networkPolicy.enabled": True,
        "networkPolicy.metricsFrom.matchLabels.name": "monitoring",
    },
}


def _values(name: str) -> dict[str, Any]:
    return SECURITY_SETS[name]


def _api_enabled(name: str) -> bool:
    return bool(_values(name).get("relays.api.enabled", False))


class Relay:
    """The rendered relay StatefulSet's pod, and where its listeners are."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects
        self.pod = find(objects, "StatefulSet", f"{FULLNAME}-relay")["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        self.env = {e["name"]: e for e in self.container["env"]}
        self.named_ports = {p["name"]: p for p in self.container["ports"]}

    def value(self, name: str) -> str | None:
        item = self.env.get(name)
        return None if item is None else item.get("value")

    def port_number(self, port: int | str) -> int | None:
        """A port as the kubelet resolves it in this container (a name: its containerPort)."""
        if isinstance(port, int):
            return port
        if port.isdigit():
            return int(port)
        named = self.named_ports.get(port)
        return None if named is None else named["containerPort"]

    @property
    def metrics_port(self) -> int:
        listen = self.value("RELAYFLEET_METRICS_LISTEN")
        assert listen is not None, "the relay has no metrics listener"
        host, _, port = listen.rpartition(":")
        assert host == "0.0.0.0"
        return int(port)

    @property
    def api_port(self) -> int | None:
        listen = self.value("RELAYFLEET_API_LISTEN")
        assert listen is not None, "RELAYFLEET_API_LISTEN must be explicit (the relay's default)"
        return None if listen == "off" else int(listen.rpartition(":")[2])

    def reaches_api(self, port: int | str) -> bool:
        """Whether a port, by number or name, is the API's (or its would-be default, 8080)."""
        forbidden = {p for p in (self.api_port, 8080) if p is not None} - {self.metrics_port}
        return port == "api" or self.port_number(port) in forbidden


@cache
def _relay(name: str) -> Relay:
    """Rendered once per value set (the tests only read it)."""
    return Relay(template(_values(name)))


def _selects_relays(service: dict[str, Any]) -> bool:
    selector = service["spec"].get("selector") or {}
    return selector.get("app.kubernetes.io/component") == "relay" or selector.get(
        "statefulset.kubernetes.io/pod-name", ""
    ).startswith(f"{FULLNAME}-relay-")


def _relay_services(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    services = [s for s in by_kind(objects, "Service") if _selects_relays(s)]
    assert services, "no Service selects the relays"
    return services


@pytest.mark.parametrize("name", SECURITY_SETS)
def test_no_service_port_reaches_the_api(name: str) -> None:
    relay = _relay(name)
    for service in _relay_services(relay.objects):
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            where = f"{service['metadata']['name']}:{port.get('name', port['port'])}"
            assert not relay.reaches_api(target), where
            if port.get("protocol", "TCP") == "TCP":
                # every TCP port of a relay Service is the metrics listener's
                assert relay.port_number(target) == relay.metrics_port, where


@pytest.mark.parametrize("name", SECURITY_SETS)
def test_probes_use_the_metrics_listener(name: str) -> None:
    relay = _relay(name)
    kinds = ("readinessProbe", "livenessProbe", "startupProbe")
    probes = [k for k in kinds if k in relay.container]
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for kind in probes:
        probe = relay.container[kind]
        action = probe.get("httpGet") or probe.get("tcpSocket")
        assert action is not None, f"{kind}: {probe}"
        assert not relay.reaches_api(action["port"]), kind
        assert relay.port_number(action["port"]) == relay.metrics_port, kind
        if "httpGet" in probe:
            assert probe["httpGet"]["path"] == "/healthz", kind


@pytest.mark.parametrize("name", SECURITY_SETS)
def test_the_metrics_service_and_monitor_target_the_metrics_listener(name: str) -> None:
    relay = _relay(name)
    assert relay.named_ports["metrics"]["containerPort"] == relay.metrics_port
    assert relay.named_ports["metrics"]["protocol"] == "TCP"
    values = _values(name)
    expected = values.get("relays.metricsPort", 9090)
    assert relay.metrics_port == expected
    monitored = values.get("metrics.service", True) or values.get(
        "metrics.serviceMonitor.enabled", False
    )
    services = [
        s
        for s in by_kind(relay.objects, "Service")
        if s["metadata"]["name"] == f"{FULLNAME}-relay-metrics"
    ]
    assert len(services) == (1 if monitored else 0)
    for service in services:
        (port,) = service["spec"]["ports"]
        assert (port["name"], port["port"]) == ("metrics", expected)
        assert relay.port_number(port["targetPort"]) == relay.metrics_port
    for monitor in by_kind(relay.objects, "ServiceMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        if labels.get("app.kubernetes.io/component") != "relay":
            continue
        selected = [
            s
            for s in by_kind(relay.objects, "Service")
            if labels.items() <= s["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in selected] == [f"{FULLNAME}-relay-metrics"]
        for endpoint in monitor["spec"]["endpoints"]:
            (port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
            assert relay.port_number(port["targetPort"]) == relay.metrics_port
            assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("name", SECURITY_SETS)
def test_network_policy_admits_the_metrics_port_only(name: str) -> None:
    relay = _relay(name)
    policies = [
        p
        for p in by_kind(relay.objects, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "relay"
    ]
    values = _values(name)
    assert len(policies) == (1 if values.get("networkPolicy.enabled") else 0)
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        metrics_rules = 0
        for rule in policy["spec"]["ingress"]:
            for port in rule.get("ports", []):
                if port.get("protocol") == "UDP":
                    assert "from" not in rule and "port" not in port  # clients, from anywhere
                    continue
                assert "from" in rule, "a TCP port open to every pod"
                assert not relay.reaches_api(port["port"])
                assert relay.port_number(port["port"]) == relay.metrics_port
                metrics_rules += 1
        assert metrics_rules == (1 if "networkPolicy.metricsFrom.matchLabels.name" in values else 0)


@pytest.mark.parametrize("name", SECURITY_SETS)
def test_the_api_listens_only_when_enabled_and_always_with_a_token(name: str) -> None:
    relay = _relay(name)
    values = _values(name)
    if not _api_enabled(name):
        assert relay.value("RELAYFLEET_API_LISTEN") == "off"
        assert "api" not in relay.named_ports
        assert "RELAYFLEET_API_TOKEN_FILE" not in relay.env
        return
    api_port = values.get("relays.api.port", 8080)
    assert relay.value("RELAYFLEET_API_LISTEN") == f"0.0.0.0:{api_port}"
    assert relay.named_ports["api"]["containerPort"] == api_port
    assert api_port != relay.metrics_port
    assert relay.value("RELAYFLEET_API_ALLOCATIONS") == values.get("relays.api.allocations", "auto")
    # The token file is a file of a Secret volume, and that Secret holds the key.
    token_file = PurePosixPath(relay.value("RELAYFLEET_API_TOKEN_FILE") or "")
    mounts = {m["mountPath"]: m for m in relay.container["volumeMounts"]}
    mount = mounts[str(token_file.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in relay.pod["volumes"] if v["name"] == mount["name"]]
    secret_name = volume["secret"]["secretName"]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == token_file.name]
    assert volume["secret"].get("optional") is not True
    given = values.get("relays.api.token.existingSecret")
    if given:
        assert secret_name == given
        assert item["key"] == values.get("relays.api.token.existingSecretKey", "token")
    else:
        assert secret_name == f"{FULLNAME}-relay-api-token"
        secret = find(relay.objects, "Secret", secret_name)
        assert secret["data"][item["key"]]


def test_no_relay_value_set_leaves_the_api_open_without_a_token() -> None:
    """Across every set, an API listener never comes without a token file."""
    for name in SECURITY_SETS:
        relay = _relay(name)
        if relay.api_port is not None:
            assert relay.value("RELAYFLEET_API_TOKEN_FILE"), name
    assert {n for n in SECURITY_SETS if _api_enabled(n)} >= {
        "api-generated-token",
        "api-existing-token",
        "api-host-network",
    }
