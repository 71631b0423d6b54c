"""docs/operations.md and docs/security.md say what the code does: flags, metrics, tests.

The flag tables must list exactly the flags of each command, each with its
environment variable; every metric named must be one the relay or the
operator serves, and every metric served must be named; every test cited as
evidence must exist.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from relay.config import RelayConfig
from relay.flags import add_arguments, env_name
from relay.server import RelayServer
from relay.shells.keyfile import RelaySecrets
from relay.store import MemoryStore
from relay.tailnet.control import NodeIdentity
from relay.tailnet.metrics import TailnetCollector
from relay.tailnet.node import TailnetNode, TailnetSettings
from relay_operator.config import OperatorConfig
from relay_operator.metrics import OperatorMetrics

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
SECURITY = ROOT / "docs" / "security.md"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end != -1 else None]


def flag_rows(table: str) -> dict[str, str]:
    """Each row's flag (first column) and the text of its environment column."""
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        match = re.match(r"`(--[a-z-]+)", cells[0]) if line.startswith("|") else None
        if match:
            rows[match[1]] = cells[1]
    return rows


def parser_flags(config: type) -> set[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser, config, {})
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


@pytest.mark.parametrize(
    ("heading", "config"),
    [
        ("### `relayfleet relay`", RelayConfig),
        ("### `relayfleet operator`", OperatorConfig),
    ],
    ids=["relay", "operator"],
)
def test_flag_tables_list_exactly_the_flags_with_their_environment(heading, config):
    rows = flag_rows(section(OPERATIONS.read_text(), heading))
    assert set(rows) == parser_flags(config)
    for flag, environment in rows.items():
        assert f"`{env_name(flag)}`" in environment, flag


def served_metrics() -> set[str]:
    """The names of the samples' families as Prometheus shows them (a relay's tailnet
    node's too, which a relay serves once it joins a tailnet)."""
    relay = RelayServer(RelayConfig(), MemoryStore(), RelaySecrets.generate())
    settings = TailnetSettings("http://127.0.0.1:1", "relay", None, NodeIdentity.generate())
    tailnet = CollectorRegistry()
    tailnet.register(TailnetCollector(TailnetNode(settings, relay.allocate)))
    registries = [relay.metrics, OperatorMetrics(lambda: {}).registry, tailnet]
    suffix = {"counter": "_total", "info": "_info"}
    return {
        family.name + suffix.get(family.type, "")
        for registry in registries
        for family in registry.collect()
    }


def test_every_metric_is_documented_and_every_documented_metric_is_served():
    served = served_metrics()
    documented = set(re.findall(r"relayfleet_(?:relay|operator)_[a-z_]+", OPERATIONS.read_text()))
    assert documented == served


def test_every_cited_test_exists():
    cited = set()
    for doc in (OPERATIONS, SECURITY):
        cited |= set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc.read_text()))
    assert len(cited) > 20
    missing = []
    for path, name in sorted(cited):
        file = ROOT / path
        tree = ast.parse(file.read_text()) if file.exists() else ast.Module(body=[])
        functions = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in functions:
            missing.append(f"{path}::{name}")
    assert missing == []
