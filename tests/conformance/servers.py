"""The servers under test, as processes: ``relayfleet relay`` and the reference's servers.

``refserver`` is the reference's relay server at tailscale.com v1.84.0
(protocol version 0), ``refserver-v1`` the one at v1.102.5 (version 1). All
print one JSON ready line (``udp_port``, ``api``, ``server_disco``) and serve
the same allocation API, so each conformance test runs against ours and the
reference of its version.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import RELAYFLEET

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".dev" / "bin"
REFSERVER = BIN / "refserver"
REFCLIENT = BIN / "refclient"
REFSERVER_V1 = BIN / "refserver-v1"
REFCLIENT_V1 = BIN / "refclient-v1"
READY_TIMEOUT = 20

COMMANDS = {
    "ours": [
        str(RELAYFLEET),
        "relay",
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--api-listen",
        "127.0.0.1:0",
        # The reference client allocates dozens of times a second from one address.
        "--api-rate",
        "1000000",
        "--api-burst",
        "1000000",
        "--addr",
        "127.0.0.1",
        "--log-level",
        "warning",
    ],
    "reference": [
        str(REFSERVER),
        "--port",
        "0",
        "--api-listen",
        "127.0.0.1:0",
        "--addr",
        "127.0.0.1",
    ],
    "reference-v1": [
        str(REFSERVER_V1),
        "--port",
        "0",
        "--api-listen",
        "127.0.0.1:0",
        "--addr",
        "127.0.0.1",
    ],
}

ONE_SOCKET = {"GOMAXPROCS": "1"}
"""The environment in which refserver-v1 reads from one socket: v1.102.5 opens one
SO_REUSEPORT socket per GOMAXPROCS, each with its own reader, and only one reader
handles datagrams in the order they arrive (which tests/conformance/wire_script.py
relies on)."""


def ensure_go_helpers() -> None:
    """Build refserver and refclient when missing or stale (a no-op when up to date)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-go-helpers")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-go-helpers failed:\n{result.stdout}{result.stderr}")


@dataclass
class ServerProcess:
    kind: str
    process: subprocess.Popen
    udp_port: int
    api: str
    server_disco: str

    @property
    def url(self) -> str:
        return f"http://{self.api}"

    @property
    def udp(self) -> tuple[str, int]:
        return "127.0.0.1", self.udp_port

    @classmethod
    def start(cls, kind: str, *flags: str, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Start a server of ``kind`` with extra ``flags`` and environment ``env``; return
        once it is ready."""
        process = subprocess.Popen(
            [*COMMANDS[kind], *flags],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = process.stdout.readline()
        if not line:
            process.wait(READY_TIMEOUT)
            raise RuntimeError(f"{kind} server did not start: {process.stderr.read()}")
        ready = json.loads(line)
        return cls(kind, process, ready["udp_port"], ready["api"], ready["server_disco"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()
