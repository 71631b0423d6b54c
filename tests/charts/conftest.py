from __future__ import annotations

import pytest

from tests.charts import helm


@pytest.fixture(scope="session", autouse=True)
def helm_binary() -> None:
    """Helm from its Go module (scripts/build-helm), built once per session if needed."""
    try:
        helm.build()
    except (RuntimeError, OSError) as exc:
        pytest.fail(str(exc), pytrace=False)
