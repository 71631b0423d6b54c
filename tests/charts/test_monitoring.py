"""The Grafana dashboard ConfigMap and the alerts' PrometheusRule: off by default, and when on,
carrying exactly the chart's files (dashboards/relay-fleet.json, files/alerts.yaml).

What the dashboard's queries and the alerts do is tested in tests/monitoring (promtool,
and a Prometheus scraping a running fleet).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.charts.helm import CHART, by_kind, find, helm, render_error, set_args, template

DASHBOARD = CHART / "dashboards" / "relay-fleet.json"
ALERTS = CHART / "files" / "alerts.yaml"
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]


def rules_file_as_rendered(alerts: dict[str, Any]) -> dict[str, Any]:
    """files/alerts.yaml as Helm's ``tpl`` makes it: the leading comment dropped, Prometheus's
    quoted template text unquoted, the thresholds put in."""
    text = re.sub(r"\A\{\{- /\*.*?\*/ -\}\}\n", "", ALERTS.read_text(), flags=re.DOTALL)
    text = re.sub(r"\{\{`(.*?)`\}\}", r"\1", text)
    text = re.sub(
        r"\{\{ \.Values\.monitoring\.alerts\.(\w+) \}\}", lambda m: str(alerts[m[1]]), text
    )
    assert "{{ ." not in text, "a template action the test does not know"
    return yaml.safe_load(text)


def test_lint_with_both_on():
    values = {"monitoring.dashboard.enabled": True, "monitoring.alerts.enabled": True}
    result = helm("lint", "--strict", str(CHART), *set_args(values))
    assert "0 chart(s) failed" in result.stdout, result.stdout + result.stderr


def test_neither_is_rendered_by_default():
    objects = template()
    assert by_kind(objects, "PrometheusRule") == []
    assert [o for o in by_kind(objects, "ConfigMap") if "dashboard" in o["metadata"]["name"]] == []


def test_the_dashboard_configmap_carries_the_dashboard_for_the_sidecar():
    objects = template({"monitoring.dashboard.enabled": True})
    configmap = find(objects, "ConfigMap", "rf-relay-fleet-dashboard")
    assert configmap["metadata"]["namespace"] == "fleet"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["app.kubernetes.io/instance"] == "rf"
    assert list(configmap["data"]) == ["relay-fleet.json"]
    assert json.loads(configmap["data"]["relay-fleet.json"]) == json.loads(DASHBOARD.read_text())
    assert by_kind(objects, "PrometheusRule") == []


def test_the_sidecar_label_annotations_and_namespace_are_values():
    objects = template(
        {
            "monitoring.dashboard.enabled": True,
            "monitoring.dashboard.label": "my_dashboards",
            "monitoring.dashboard.labelValue": "relay-fleet",
            "monitoring.dashboard.annotations.grafana_folder": "Relays",
            "monitoring.dashboard.namespace": "grafana",
        }
    )
    metadata = find(objects, "ConfigMap", "rf-relay-fleet-dashboard")["metadata"]
    assert metadata["labels"]["my_dashboards"] == "relay-fleet"
    assert "grafana_dashboard" not in metadata["labels"]
    assert metadata["annotations"] == {"grafana_folder": "Relays"}
    assert metadata["namespace"] == "grafana"


def test_the_prometheus_rule_carries_the_rules_file():
    objects = template({"monitoring.alerts.enabled": True})
    rule = find(objects, "PrometheusRule", "rf-relay-fleet")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "fleet"
    assert rule["spec"] == rules_file_as_rendered(DEFAULTS["alerts"])
    assert [c["metadata"]["name"] for c in by_kind(objects, "ConfigMap")].count(
        "rf-relay-fleet-dashboard"
    ) == 0


def test_the_thresholds_and_labels_of_the_rules_are_values():
    alerts = {"vniUsageThreshold": 0.9, "handshakeDropsPerSecond": 50, "pendingSeconds": 300}
    objects = template(
        {"monitoring.alerts.enabled": True, "monitoring.alerts.labels.release": "prom"},
        *[f"--set-json=monitoring.alerts.{key}={json.dumps(v)}" for key, v in alerts.items()],
    )
    rule = find(objects, "PrometheusRule", "rf-relay-fleet")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == rules_file_as_rendered(alerts)


def test_the_schema_refuses_a_share_above_one():
    error = render_error(
        {"monitoring.alerts.enabled": True}, "--set-json=monitoring.alerts.vniUsageThreshold=80"
    )
    assert "vniUsageThreshold" in error
