"""Helm for the tests that render the chart's alerts and dashboard (as tests/charts builds it)."""

from __future__ import annotations

import pytest

from tests.charts import helm


@pytest.fixture(scope="session")
def helm_binary() -> None:
    """Helm from its Go module (scripts/build-helm), built once per session if needed."""
    try:
        helm.build()
    except (RuntimeError, OSError) as exc:
        pytest.fail(str(exc), pytrace=False)
