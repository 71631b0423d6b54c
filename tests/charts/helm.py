"""Helm for the chart tests: built by scripts/build-helm into .dev/bin/helm."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relay-fleet"
HELM = ROOT / ".dev" / "bin" / "helm"
BUILD_SCRIPT = ROOT / "scripts" / "build-helm"


def build() -> None:
    """Build Helm (a no-op when up to date; a minute or two the first time)."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-helm failed:\n{result.stdout}{result.stderr}")


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def set_args(values: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    return args


def template(
    values: dict[str, Any] | None = None, *extra: str, release: str = "rf"
) -> list[dict[str, Any]]:
    """The objects `helm template` renders (templates only, not the CRDs)."""
    out = helm(
        "template", release, str(CHART), "--namespace", "fleet", *extra, *set_args(values or {})
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_error(values: dict[str, Any], *extra: str) -> str:
    result = helm("template", "rf", str(CHART), *extra, *set_args(values), check=False)
    assert result.returncode != 0, f"rendered although it should fail: {values}"
    return result.stderr


def by_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} among {[o['metadata']['name'] for o in objects]}")
