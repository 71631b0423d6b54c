"""Fixtures of the version 1 conformance tests that several modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance_v1.derp_echo import EchoServer, run_echo_server


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    """tailscale.com's DERP server on loopback with a reference node echoing packets."""
    yield from run_echo_server()
