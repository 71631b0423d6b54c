"""What the monitoring tests share: Prometheus and promtool from .dev/bin, the chart's alerts as
it renders them, the dashboard's queries, and a checker that runs them on a Prometheus.

scripts/build-prometheus builds both binaries from tools/prometheus; a test
that finds one missing fails saying so (the issue wants these tests in CI, not
skipped). Helm comes from tests/charts/helm.py, as for the chart tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts import helm
from tests.support.controlplane import Process
from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync

ROOT = helm.ROOT
BIN = ROOT / ".dev" / "bin"
PROMETHEUS = BIN / "prometheus"
PROMTOOL = BIN / "promtool"
DASHBOARD = helm.CHART / "dashboards" / "relay-fleet.json"
ALERTS_FILE = helm.CHART / "files" / "alerts.yaml"

RATE_INTERVAL = "30s"
"""What ``$__rate_interval`` (and ``$__interval``, ``$__range``) stand for in the checked
queries: a few dozen of the test Prometheus's 1 s scrapes."""

GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")

METRIC = re.compile(r"\brelayfleet_(?:relay|operator)_[a-z0-9_]+")
"""A relay-fleet metric name in PromQL (every one has its component's prefix)."""


def require(binary: Path) -> Path:
    """The binary, or a failure telling how to build it."""
    if not binary.is_file():
        pytest.fail(
            f"{binary.relative_to(ROOT)} is missing: run scripts/build-prometheus (it builds "
            "Prometheus and promtool from tools/prometheus into .dev/bin; minutes the first "
            "time)",
            pytrace=False,
        )
    return binary


# -- the chart's alerts ---------------------------------------------------------------


def render(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chart's objects with ``values`` given as JSON (so 0.9 stays a number)."""
    args = [
        arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")
    ]
    return helm.template(None, *args)


def rendered_rule_object(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The PrometheusRule the chart renders with the alerts on (and ``values``)."""
    objects = render({"monitoring.alerts.enabled": True, **(values or {})})
    rules = helm.by_kind(objects, "PrometheusRule")
    assert len(rules) == 1, [o["kind"] for o in objects]
    return rules[0]


def rendered_rules(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Prometheus rules file the chart ships: its PrometheusRule's spec (``groups``)."""
    return rendered_rule_object(values)["spec"]


def alerting_rules(rules: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require(PROMTOOL)), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


# -- the dashboard ----------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One target of one panel, its dashboard variables replaced."""

    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"panel {self.panel!r} query {self.ref}: {self.expr}"


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard.get("panels", ()):
        yield panel
        yield from panel.get("panels", ())


def variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """What each dashboard variable stands for in a checked query: its "All" value (every
    namespace), else its current value."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", ()):
        if variable.get("includeAll") and "allValue" in variable:
            values[variable["name"]] = variable["allValue"]
        else:
            values[variable["name"]] = str(variable.get("current", {}).get("value", ""))
    return values


def substitute(expr: str, values: Mapping[str, str], interval: str = RATE_INTERVAL) -> str:
    """``expr`` with Grafana's intervals and the dashboard's variables (``$name``,
    ``${name}``) replaced; an unknown ``$name`` is left, for Prometheus to refuse."""
    for name in GRAFANA_INTERVALS:
        expr = expr.replace(name, interval)

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        return values.get(name, match[0])

    return re.sub(r"\$\{(?P<braced>\w+)\}|\$(?P<bare>\w+)", value, expr)


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    values = variables(dashboard)
    return [
        Query(panel.get("title", "?"), target.get("refId", "?"), substitute(target["expr"], values))
        for panel in panels(dashboard)
        for target in panel.get("targets", ())
        if target.get("expr")
    ]


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


# -- a Prometheus -------------------------------------------------------------------------

QueryResult = tuple[str | None, list[dict[str, Any]]]
"""(the error Prometheus gave, or None; the series of the result)."""


class Prometheus:
    """A real Prometheus (.dev/bin/prometheus) on a free loopback port, in a directory of its
    own: it scrapes ``targets`` (job name -> ``host:port`` list) every second and evaluates
    ``rules`` (a rules file's content, e.g. the chart's alerts) every second."""

    def __init__(self, home: Path, targets: Mapping[str, list[str]], rules: Mapping[str, Any]):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process("prometheus", home, home)
        home.mkdir(parents=True, exist_ok=True)
        (home / "rules.yaml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
                for job, addresses in targets.items()
            ],
        }
        (home / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> Prometheus:
        self.process.start(
            [
                str(require(PROMETHEUS)),
                f"--config.file={self.home / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        wait_until_sync(self._ready, "Prometheus to be ready", timeout=60, log=self.process.log)
        return self

    def stop(self) -> None:
        self.process.stop()

    def _ready(self) -> bool:
        if self.process.exited() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.process.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """The JSON of ``/api/v1/<path>``; an answer of status "error" too (HTTP 400, 422)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {exc.code}: {body[:200]!r}"}

    def query(self, expr: str) -> QueryResult:
        """An instant query now."""
        answer = self.api("query", query=expr)
        if answer.get("status") != "success":
            return f"{answer.get('errorType', 'error')}: {answer.get('error')}", []
        return None, answer["data"]["result"]

    def targets_up(self) -> bool:
        active = self.api("targets", state="active")["data"]["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["data"]["groups"] for rule in group["rules"]]


def failures(queries: list[Query], query: Callable[[str], QueryResult]) -> list[str]:
    """Why each query fails the dashboard check: Prometheus refused it, or it returned no
    series (as one does whose metric was renamed or removed, or whose join lost a side)."""
    failed = []
    for each in queries:
        error, series = query(each.expr)
        if error is not None:
            failed.append(f"{each}\n  error: {error}")
        elif not series:
            failed.append(f"{each}\n  no series")
    return failed
