"""The layout holds: the protocol core is pure, and the import contracts catch a breach.

The contracts themselves are in pyproject.toml and run by scripts/test
(``lint-imports``); these tests show that they run on this tree and that they
fail on a deliberate upward import, so a green run means something.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_importing_the_core_loads_no_event_loop_or_io_library():
    probe = (
        "import sys, relay.protocol.core, relay.protocol.client;"
        "print(sorted(m for m in ('asyncio', 'aiohttp', 'redis', 'kubernetes', 'kopf', 'uvloop')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in ("relay", "relay_operator"):
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_contracts_hold_on_this_tree(tmp_path):
    result = lint_imports(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    tree = copy_tree(tmp_path)
    core = tree / "relay" / "protocol" / "core.py"
    core.write_text(core.read_text() + "\nfrom relay.store import MemoryStore  # upward\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "relay.protocol.core -> relay.store" in result.stdout


def test_the_relay_importing_the_operator_breaks_the_contracts(tmp_path):
    tree = copy_tree(tmp_path)
    server = tree / "relay" / "server.py"
    server.write_text(server.read_text() + "\nimport relay_operator.placement\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "The relay never imports the operator" in result.stdout
    assert "BROKEN" in result.stdout
