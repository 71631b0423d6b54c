"""`helm lint` and `helm template` of charts/relay-fleet, and what the rendered objects say."""

from __future__ import annotations

import base64
import filecmp
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import CHART, ROOT, by_kind, find, helm, render_error, template

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-redis": {"redis.bundled": False, "redis.url": "redis://:pw@redis.example:6379/0"},
    "external-redis-secret": {"redis.bundled": False, "redis.existingSecret": "my-redis"},
    "given-redis-password": {"redis.password": "s3cret", "redis.persistence.enabled": False},
    "host-network": {"relays.hostNetwork": True, "relays.replicas": 3},
    "node-port": {"relays.service.type": "NodePort", "relays.service.nodePortPrefix": "3100"},
    "load-balancer": {
        "relays.service.type": "LoadBalancer",
        "relays.service.loadBalancerIPs": "{203.0.113.7,203.0.113.8}",
    },
    "addresses": {"relays.addresses": "{203.0.113.7,2001:db8::7}"},
    "metrics-on": {
        "metrics.serviceMonitor.enabled": True,
        "networkPolicy.enabled": True,
        "networkPolicy.metricsFrom.matchLabels.name": "monitoring",
    },
    "network-policy": {"networkPolicy.enabled": True},
    "service-monitor": {"metrics.serviceMonitor.enabled": True, "metrics.service": False},
    "standalone": {
        "operator.replicas": 1,
        "operator.standalone": True,
        "operator.namespaces": "{a,b}",
    },
    "api-generated-token": {"relays.api.enabled": True},
    "api-existing-token": {
        "relays.api.enabled": True,
        "relays.api.port": 9443,
        "relays.api.allocations": "off",
        "relays.api.token.existingSecret": "relay-api",
        "relays.api.token.existingSecretKey": "bearer",
        "relays.metricsPort": 9100,
        "relays.shutdownTimeout": "20s",
        "relays.terminationGracePeriodSeconds": 45,
    },
    "fast-path": {"relays.fastPath": "auto", "relays.fastPathMaxEndpoints": 500},
    "tailnet": {
        "relays.tailnet.enabled": True,
        "relays.tailnet.loginServer": "https://headscale.example",
        "relays.tailnet.authKey.existingSecret": "tailnet-authkey",
    },
    "tailnet-everything": {
        "relays.tailnet.enabled": True,
        "relays.tailnet.loginServer": "http://headscale.example:8080",
        "relays.tailnet.authKey.existingSecret": "tailnet-authkey",
        "relays.tailnet.authKey.existingSecretKey": "key",
        "relays.tailnet.caCert.existingConfigMap": "tailnet-ca",
        "relays.tailnet.caCert.existingConfigMapKey": "root.pem",
        "relays.tailnet.hostnamePrefix": "eu1-",
        "relays.tailnet.existingKeySecret": "tailnet-nodes",
        "relays.hostNetwork": True,
        "relays.workers": 4,
        "networkPolicy.enabled": True,
    },
}

POD_KINDS = ("Deployment", "StatefulSet")


def rendered(name: str) -> list[dict[str, Any]]:
    return template(VALUE_SETS[name])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint(name: str) -> None:
    from tests.charts.helm import set_args

    result = helm("lint", "--strict", str(CHART), *set_args(VALUE_SETS[name]))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_container_is_hardened(name: str) -> None:
    objects = rendered(name)
    workloads = [o for o in objects if o["kind"] in POD_KINDS]
    assert {o["metadata"]["name"].rsplit("-", 1)[-1] for o in workloads} >= {"operator", "relay"}
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            if name == "fast-path" and container["name"] == "relay":
                assert (sc["runAsNonRoot"], sc["runAsUser"]) == (False, 0), where
                assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}, where
            else:
                assert sc["runAsNonRoot"] is True, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["resources"]["requests"], where
            assert "livenessProbe" in container, where


def _rules(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {o["metadata"]["name"]: o["rules"] for o in by_kind(objects, "ClusterRole")}


def test_rbac_equals_deploy_rbac() -> None:
    source = {
        doc["metadata"]["name"]: doc["rules"]
        for doc in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text())
        if doc and doc["kind"] == "ClusterRole"
    }
    rules = _rules(template())
    assert rules == {
        "rf-relay-fleet-operator": source["relayfleet-operator"],
        "rf-relay-fleet-relay": source["relayfleet-relay"],
    }
    for name, role_rules in rules.items():
        for rule in role_rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (name, rule)


def test_rbac_binds_each_part_to_its_own_role() -> None:
    objects = template()
    for part in ("operator", "relay"):
        binding = find(objects, "ClusterRoleBinding", f"rf-relay-fleet-{part}")
        assert binding["roleRef"]["name"] == f"rf-relay-fleet-{part}"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"rf-relay-fleet-{part}", "namespace": "fleet"}
        ]
    assert (
        find(objects, "Deployment", "rf-relay-fleet-operator")["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
        == "rf-relay-fleet-operator"
    )
    assert (
        find(objects, "StatefulSet", "rf-relay-fleet-relay")["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
        == "rf-relay-fleet-relay"
    )
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


def test_chart_crds_are_the_single_source() -> None:
    chart_crds = CHART / "crds"
    source = ROOT / "crds"
    assert (
        chart_crds.resolve() == source.resolve()
        or not filecmp.dircmp(chart_crds, source).diff_files
    )
    # `helm show crds` prints the chart's CRD files one after the other.
    shown = helm("show", "crds", str(CHART)).stdout
    files = sorted(source.glob("*.yaml"))
    assert [f.name for f in files] == ["kopf-peering.yaml", "relay.yaml", "relayendpoint.yaml"]
    for path in files:
        assert path.read_text().strip() in shown


def test_defaults() -> None:
    objects = template()
    operator = find(objects, "Deployment", "rf-relay-fleet-operator")
    assert operator["spec"]["replicas"] == 2
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "relayfleet:0.1.0"
    assert container["args"] == ["operator", "--liveness", "http://0.0.0.0:8080/healthz"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "RELAYFLEET_STANDALONE" not in env
    assert env["RELAYFLEET_STORE"]["value"].startswith(
        "redis://:$(REDIS_PASSWORD)@rf-relay-fleet-redis."
    )
    relays = find(objects, "StatefulSet", "rf-relay-fleet-relay")
    assert relays["spec"]["replicas"] == 2
    keys = find(objects, "Secret", "rf-relay-fleet-relay-keys")
    assert set(keys["data"]) == {"rf-relay-fleet-relay-0.key", "rf-relay-fleet-relay-1.key"}
    redis = find(objects, "StatefulSet", "rf-relay-fleet-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert find(objects, "Secret", "rf-relay-fleet-redis")["data"]["password"]
    assert {p["metadata"]["name"] for p in by_kind(objects, "PodDisruptionBudget")} == {
        "rf-relay-fleet-operator",
        "rf-relay-fleet-relay",
    }
    udp = [s for s in by_kind(objects, "Service") if s["spec"].get("type") == "NodePort"]
    assert [s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] for s in udp] == [
        "rf-relay-fleet-relay-0",
        "rf-relay-fleet-relay-1",
    ]
    assert [s["spec"]["ports"][0]["nodePort"] for s in udp] == [30700, 30701]
    assert find(objects, "Service", "rf-relay-fleet-relay-metrics")
    operator_metrics = find(objects, "Service", "rf-relay-fleet-operator-metrics")
    assert operator_metrics["spec"]["ports"][0]["targetPort"] == "metrics"


def test_generated_relay_keys_load() -> None:
    from relay.shells.keyfile import RelaySecrets

    keys = find(template(), "Secret", "rf-relay-fleet-relay-keys")
    texts = [base64.b64decode(v).decode() for v in keys["data"].values()]
    secrets = [RelaySecrets.from_text(text) for text in texts]
    assert len({s.private_key.text() for s in secrets}) == len(secrets)


def test_external_redis_has_no_bundled_redis() -> None:
    objects = rendered("external-redis")
    assert not [o for o in objects if o["metadata"]["name"].endswith("-redis")]
    url = find(objects, "Secret", "rf-relay-fleet-redis-url")
    assert url["data"]["url"]
    objects = rendered("external-redis-secret")
    container = find(objects, "Deployment", "rf-relay-fleet-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    store = next(e for e in container["env"] if e["name"] == "RELAYFLEET_STORE")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "url"}


def test_host_network_has_no_udp_services() -> None:
    objects = rendered("host-network")
    pod = find(objects, "StatefulSet", "rf-relay-fleet-relay")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert not [
        s
        for s in by_kind(objects, "Service")
        if s["spec"].get("type") in ("NodePort", "LoadBalancer")
    ]


def test_load_balancer_per_relay_addresses() -> None:
    objects = rendered("load-balancer")
    lbs = [s for s in by_kind(objects, "Service") if s["spec"].get("type") == "LoadBalancer"]
    assert [s["spec"]["loadBalancerIP"] for s in lbs] == ["203.0.113.7", "203.0.113.8"]
    addresses = find(objects, "ConfigMap", "rf-relay-fleet-relay-addresses")
    assert addresses["data"] == {
        "rf-relay-fleet-relay-0": "203.0.113.7",
        "rf-relay-fleet-relay-1": "203.0.113.8",
    }


def _relay_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "StatefulSet", "rf-relay-fleet-relay")["spec"]["template"]["spec"]


def test_api_token_is_mounted_from_the_given_secret() -> None:
    objects = rendered("api-existing-token")
    pod = _relay_pod(objects)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-token"]
    assert volume["secret"]["secretName"] == "relay-api"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-token"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RELAYFLEET_API_TOKEN_FILE"] == mount["mountPath"] + "/token"
    assert env["RELAYFLEET_API_LISTEN"] == "0.0.0.0:9443"
    assert env["RELAYFLEET_API_ALLOCATIONS"] == "off"
    assert env["RELAYFLEET_METRICS_LISTEN"] == "0.0.0.0:9100"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["api"], ports["metrics"]) == (9443, 9100)
    # The token is the user's: the chart makes none.
    assert not [s for s in by_kind(objects, "Secret") if "api-token" in s["metadata"]["name"]]
    # probes carry no token: they use the metrics listener's open /healthz
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_api_token_is_generated_when_none_is_given() -> None:
    objects = rendered("api-generated-token")
    secret = find(objects, "Secret", "rf-relay-fleet-relay-api-token")
    assert set(secret["data"]) == {"token"}
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 32 and token.isascii() and token.isalnum()
    pod = _relay_pod(objects)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-token"]
    assert volume["secret"]["secretName"] == "rf-relay-fleet-relay-api-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["RELAYFLEET_API_LISTEN"] == "0.0.0.0:8080"
    assert env["RELAYFLEET_API_ALLOCATIONS"] == "auto"
    assert env["RELAYFLEET_API_TOKEN_FILE"] == "/etc/relayfleet/api-token/token"
    # A new install draws a new token (an upgrade keeps it: tests/charts/test_install.py).
    again = find(rendered("api-generated-token"), "Secret", "rf-relay-fleet-relay-api-token")
    assert again["data"]["token"] != secret["data"]["token"]


def test_api_is_off_by_default() -> None:
    objects = template()
    (container,) = _relay_pod(objects)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RELAYFLEET_API_LISTEN"] == "off"
    assert env["RELAYFLEET_METRICS_LISTEN"] == "0.0.0.0:9090"
    assert "RELAYFLEET_API_TOKEN_FILE" not in env
    assert "RELAYFLEET_API_ALLOCATIONS" not in env
    assert [p["name"] for p in container["ports"] if p["protocol"] == "TCP"] == ["metrics"]
    assert "api-token" not in {v["name"] for v in _relay_pod(objects)["volumes"]}
    assert not [s for s in by_kind(objects, "Secret") if "api-token" in s["metadata"]["name"]]


def test_metrics_and_network_policies() -> None:
    objects = rendered("metrics-on")
    for component in ("relay", "operator"):
        monitor = find(objects, "ServiceMonitor", f"rf-relay-fleet-{component}")
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert len(by_kind(objects, "NetworkPolicy")) == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"relays.replicas": "two"}, "at '/relays/replicas': got string, want integer"),
        ({"operator.replicas": 0}, "at '/operator/replicas': minimum"),
        ({"relays.bindLifetime": "forever"}, "at '/relays/bindLifetime'"),
        ({"redis.bogus": "1"}, "at '/redis': additional properties 'bogus' not allowed"),
        ({"relays.service.type": "ClusterIP"}, "at '/relays/service/type'"),
        ({"relays.addresses": "{not-an-ip}"}, "at '/relays/addresses/0'"),
        ({"redis.url": "http://x"}, "at '/redis/url'"),
        ({"operator.logFormat": "xml"}, "at '/operator/logFormat'"),
        ({"relays.shutdownTimeout": "soon"}, "at '/relays/shutdownTimeout'"),
        (
            {"relays.api.token.existingSecretKey": ""},
            "at '/relays/api/token/existingSecretKey'",
        ),
        ({"relays.api.allocations": "maybe"}, "at '/relays/api/allocations'"),
        ({"relays.metricsPort": 0}, "at '/relays/metricsPort'"),
        # Removed in favour of relays.metricsPort and relays.api: the schema names them.
        ({"relays.apiPort": 8080}, "at '/relays': additional properties 'apiPort' not allowed"),
        (
            {"relays.apiToken.existingSecret": "relay-api"},
            "at '/relays': additional properties 'apiToken' not allowed",
        ),
        ({"relays.fastPath": "on"}, "at '/relays/fastPath'"),
        ({"relays.tailnet.loginServer": "headscale:8080"}, "at '/relays/tailnet/loginServer'"),
        ({"relays.tailnet.hostnamePrefix": "EU 1"}, "at '/relays/tailnet/hostnamePrefix'"),
        ({"relays.tailnet.enabled": "yes"}, "at '/relays/tailnet/enabled'"),
    ],
)
def test_wrong_value_fails_with_clear_message(values: dict[str, Any], message: str) -> None:
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis.bundled": False}, "give the external Redis as redis.url or redis.existingSecret"),
        ({"operator.standalone": True}, "set operator.replicas to 1"),
        ({"relays.service.type": "LoadBalancer"}, "set relays.service.loadBalancerIPs"),
        ({"relays.replicas": 11}, "at most 10 relays"),
        (
            {"relays.api.enabled": True, "relays.api.port": 9090},
            "relays.api.port and relays.metricsPort are both 9090",
        ),
        (
            {"relays.tailnet.enabled": True, "relays.tailnet.authKey.existingSecret": "k"},
            "relays.tailnet.enabled needs relays.tailnet.loginServer",
        ),
        (
            {"relays.tailnet.enabled": True, "relays.tailnet.loginServer": "https://hs.example"},
            "relays.tailnet.enabled needs relays.tailnet.authKey.existingSecret",
        ),
    ],
)
def test_inconsistent_values_fail_with_clear_message(values: dict[str, Any], message: str) -> None:
    assert message in render_error(values)


def test_values_are_documented_line_by_line() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        key = stripped.split(":", 1)[0]
        if key in ("requests", "limits"):
            continue
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), f"values.yaml:{number + 1}: {key} has no comment above it"


def test_schema_is_valid_json_and_strict() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_chart_files_rbac_is_deploy_rbac() -> None:
    assert (
        Path(CHART / "files" / "rbac.yaml").resolve() == (ROOT / "deploy" / "rbac.yaml").resolve()
    )
