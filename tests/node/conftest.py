"""The real node (scripts/local-cluster) for the tests that need pods to run.

The ``cluster`` fixture uses a local cluster that is already up (and leaves it
so), or brings one up for the session and takes it down afterwards, putting
the host back. The node is one per machine (its bridge, its address, the
kubelet's ports), so every test of this folder shares it and works in a
namespace of its own. Needs root, as a kubelet does.

Each test in this folder is marked ``node`` (tests/conftest.py). Figures the
tests measure (time to Ready, to the first Bound endpoint) are printed in the
terminal summary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.charts import helm
from tests.support.local_cluster import LocalCluster

FIGURES = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        pytest.fail("the real-node tests run a kubelet: run them as root", pytrace=False)
    local = LocalCluster()
    started_here = not local.all_running()
    try:
        helm.build()
        if started_here:
            local.build()
            local.up()
    except Exception:
        if started_here:
            local.down()
        raise
    request.config.stash[FIGURES] = {}
    yield local
    if started_here:
        local.down(purge=True)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, float]:
    """Seconds measured by a test, printed in the terminal summary."""
    return request.config.stash.setdefault(FIGURES, {})


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, {})
    if figures:
        terminalreporter.section("real node: measured")
        for name, seconds in figures.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
