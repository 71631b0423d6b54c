"""values.schema.json and the chart README's values table are what scripts/chart-docs makes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.charts.helm import CHART, ROOT

CHART_DOCS = ROOT / "scripts" / "chart-docs"
SOURCES = ("Chart.yaml", "values.yaml", "values.schema.json", "README.md")


def chart_docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHART_DOCS), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def chart_copy(tmp_path: Path) -> Path:
    for name in SOURCES:
        shutil.copy(CHART / name, tmp_path / name)
    return tmp_path


def test_schema_and_readme_are_current() -> None:
    result = chart_docs("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_finds_stale_files_and_a_run_makes_them_current(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    values = chart / "values.yaml"
    old = "  # How many relays.\n"
    assert old in values.read_text()
    values.write_text(values.read_text().replace(old, "  # How many relays to run.\n"))

    stale = chart_docs("--check", "--chart", str(chart))
    assert stale.returncode == 1
    assert "values.schema.json is not what values.yaml gives" in stale.stdout
    assert "README.md is not what values.yaml gives" in stale.stdout

    assert chart_docs("--chart", str(chart)).returncode == 0
    assert chart_docs("--check", "--chart", str(chart)).returncode == 0
    schema = json.loads((chart / "values.schema.json").read_text())
    replicas = schema["properties"]["relays"]["properties"]["replicas"]
    assert replicas == {"description": "How many relays to run.", "type": "integer", "minimum": 1}
    assert (
        "| `relays.replicas` | integer, at least 1 | `2` | How many relays to run. |"
        in (chart / "README.md").read_text().splitlines()
    )


def test_a_value_without_description_is_refused(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("  # How many relays.\n", ""))
    result = chart_docs("--check", "--chart", str(chart))
    assert result.returncode == 2
    assert "relays.replicas: no description in the comment above it" in result.stderr


def test_an_unknown_shape_is_refused(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("# @schema duration\n", "# @schema durration\n"))
    result = chart_docs("--check", "--chart", str(chart))
    assert result.returncode == 2
    assert "@schema takes a shape (duration, port, string-map, resources)" in result.stderr
