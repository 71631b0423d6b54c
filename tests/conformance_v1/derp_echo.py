"""The reference DERP server with an echo node (``derp-echo``), and logging in to it.

Shared by the tests of our DERP client and of the relay's door for tailnet
peers: a module-scoped ``echo_server`` fixture (conftest.py) runs
tests/conformance_v1/cmd/derp-echo.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from nacl.public import PrivateKey

from relay.tailnet.derp_client import DerpConnection
from tests.conformance.servers import BIN, READY_TIMEOUT, ensure_go_helpers

DERP_ECHO = BIN / "derp-echo"
IO_TIMEOUT = 10.0


@dataclass
class EchoServer:
    port: int
    server_public: bytes
    echo_public: bytes


def run_echo_server() -> Iterator[EchoServer]:
    """Start derp-echo, yield what it printed, stop it."""
    ensure_go_helpers()
    process = subprocess.Popen(
        [str(DERP_ECHO)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = process.stdout.readline()
        if not ready:
            process.wait(READY_TIMEOUT)
            raise RuntimeError(f"derp-echo did not start: {process.stderr.read()}")
        fields = json.loads(ready)
        yield EchoServer(
            fields["port"],
            bytes.fromhex(fields["server_public"]),
            bytes.fromhex(fields["echo_public"]),
        )
    finally:
        process.terminate()
        process.wait(READY_TIMEOUT)
        process.stdout.close()
        process.stderr.close()


async def log_in(server: EchoServer) -> DerpConnection:
    node = bytes(PrivateKey.generate())
    return await asyncio.wait_for(DerpConnection.open("127.0.0.1", server.port, node), IO_TIMEOUT)
