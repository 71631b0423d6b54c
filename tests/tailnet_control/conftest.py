"""A real Headscale (tests/support/headscale.py) per test, on loopback, stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.headscale import Headscale, default_policy

USER = "relays"


@pytest.fixture
def headscale(tmp_path: Path) -> Iterator[Headscale]:
    """Headscale with user ``relays`` and the default policy (no relay grant)."""
    with Headscale(tmp_path / "headscale", policy=default_policy([USER])) as server:
        server.create_user(USER)
        yield server
