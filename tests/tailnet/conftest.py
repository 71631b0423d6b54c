"""The private tailnet of tests/support/tailnet.py, one per test.

Each test gets a fresh tailnet (Headscale, clients a and b) so that no path a
client learned in one test lingers into the next. Nothing here skips: a
machine without root or without the binaries of scripts/build-tailnet fails
these tests, saying what to do. Each test in this folder is marked
``tailnet`` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import tailnet as bed


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
