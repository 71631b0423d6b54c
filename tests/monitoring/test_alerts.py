"""The chart's alerts, checked and unit-tested by promtool on exactly what the chart renders.

tests/monitoring/alerts_test.yaml holds the cases: every alert fires where it
should and stays silent beside it. The rules file it names is the
PrometheusRule's spec that `helm template` renders from
charts/relay-fleet/files/alerts.yaml with the default thresholds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.monitoring.prometheus import (
    alerting_rules,
    promtool,
    rendered_rule_object,
    rendered_rules,
)

pytestmark = [pytest.mark.monitoring, pytest.mark.usefixtures("helm_binary")]

CASES = Path(__file__).with_name("alerts_test.yaml")
ALERTS = {
    "RelayFleetRelayDead",
    "RelayFleetRelayNearCapacity",
    "RelayFleetHandshakeDropsSurging",
    "RelayFleetStoreErrors",
    "RelayFleetOperatorNotAllocating",
    "RelayFleetEndpointsPending",
}


def write_rules(directory: Path) -> Path:
    rules = directory / "rules.yaml"
    rules.write_text(yaml.safe_dump(rendered_rules(), sort_keys=False))
    return rules


def test_the_shipped_rules_pass_promtool_check(tmp_path):
    result = promtool("check", "rules", str(write_rules(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_the_chart_ships_the_six_alerts():
    assert {rule["alert"] for rule in alerting_rules(rendered_rules())} == ALERTS


def test_every_alert_fires_and_stays_silent_as_promtool_tests_it(tmp_path):
    write_rules(tmp_path)
    shutil.copy(CASES, tmp_path / CASES.name)
    result = promtool("test", "rules", CASES.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not():
    cases = yaml.safe_load(CASES.read_text())
    fires, silent = set(), set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test", ()):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires == ALERTS
    assert silent == ALERTS


def test_a_wrong_expectation_fails_promtool(tmp_path):
    """The cases bite: promtool compares labels and annotations, and a threshold moved by a
    value changes what fires."""
    rules = rendered_rules({"monitoring.alerts.vniUsageThreshold": 0.95})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(CASES, tmp_path / CASES.name)
    result = promtool("test", "rules", CASES.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "RelayFleetRelayNearCapacity" in result.stdout + result.stderr


def test_thresholds_are_values():
    rules = {
        rule["alert"]: rule
        for rule in alerting_rules(
            rendered_rules(
                {
                    "monitoring.alerts.vniUsageThreshold": 0.9,
                    "monitoring.alerts.handshakeDropsPerSecond": 25,
                    "monitoring.alerts.pendingSeconds": 120,
                }
            )
        )
    }
    assert rules["RelayFleetRelayNearCapacity"]["expr"].endswith("> 0.9")
    assert rules["RelayFleetHandshakeDropsSurging"]["expr"].endswith("> 25")
    assert rules["RelayFleetEndpointsPending"]["expr"].endswith("> 120")


def test_the_rule_object_carries_extra_labels():
    rule = rendered_rule_object({"monitoring.alerts.labels.release": "kube-prometheus-stack"})
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["namespace"] == "fleet"
