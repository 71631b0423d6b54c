"""The fixtures of the tailnet tests: a private tailnet, or only a Headscale on loopback.

``tailnet`` gives each test a fresh :class:`tests.support.tailnet.Tailnet`
(Headscale and clients a and b in network namespaces) so that no path a
client learned in one test lingers into the next. ``headscale`` gives each
test a :class:`tests.support.headscale.Headscale` on loopback, enough for
tests of our control client, which need neither root nor namespaces. Nothing
here skips: a machine without root (for ``tailnet``) or without the binaries
of scripts/build-tailnet fails these tests, saying what to do. Each test in
this folder is marked ``tailnet`` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay_operator.conftest import crd, operator, start_operator
from tests.support import tailnet as bed
from tests.support.headscale import Headscale, default_policy

__all__ = ["crd", "operator", "start_operator"]
"""The operator tests' fixtures, for the bed test of a relay in a fleet."""

USER = "relays"
"""The user of the ``headscale`` fixture's nodes."""


@pytest.fixture(scope="session")
def tailnet_available() -> None:
    why = bed.unavailable()
    if why is not None:
        pytest.fail(
            f"the tailnet tests cannot run: {why} (they need root and scripts/build-tailnet)",
            pytrace=False,
        )


@pytest.fixture
def tailnet(tailnet_available: None, tmp_path: Path) -> Iterator[bed.Tailnet]:
    """A started :class:`tests.support.tailnet.Tailnet`, taken down after the test."""
    with bed.Tailnet(tmp_path) as net:
        yield net


@pytest.fixture
def headscale(tmp_path: Path) -> Iterator[Headscale]:
    """Headscale on loopback with user :data:`USER` and the default policy (no relay grant)."""
    with Headscale(tmp_path / "headscale", policy=default_policy([USER])) as server:
        server.create_user(USER)
        yield server
