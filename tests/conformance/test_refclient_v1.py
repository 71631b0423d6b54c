"""The reference's version 1 client driver (tailscale.com v1.102.5) against version 1 servers.

refclient-v1 (tests/conformance_v1/cmd/refclient-v1) allocates endpoints
through the API and runs, with the reference's own disco package, the version
1 handshake (Bind with VNI, Generation and RemoteKey; Challenge; Answer),
relaying, a re-bind from a new source port, and every drop rule a client can
reach. Each of its checks is one test here.

Every check runs against the reference's own server and against
`relayfleet relay`, which serves version 1 beside version 0 on one socket.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

import pytest

from tests.conformance.servers import REFCLIENT_V1, ServerProcess

SERVER_KINDS = ["reference-v1", "ours"]

CHECKS = [
    "allocation",
    "bind_handshake",
    "relay_both_ways",
    "bind_repeated_every_one_answered",
    "rebind_new_source",
    "wrong_sealed_vni_no_challenge",
    "wrong_remote_key_no_challenge",
    "generation_zero_no_challenge",
    "wrong_challenge_no_bind",
    "answer_from_other_source_no_bind",
    "stale_generation_answer_no_bind",
    "data_from_unknown_source_dropped",
]


@dataclass
class ClientRun:
    """One refclient-v1 run against one server: its checks by name, exit status and stderr."""

    kind: str
    checks: dict[str, dict]
    returncode: int
    stderr: str


@pytest.fixture(scope="module", params=SERVER_KINDS)
def client_run(request, go_helpers) -> ClientRun:
    """refclient-v1 run once against a fresh server of each kind."""
    server = ServerProcess.start(request.param)
    try:
        result = subprocess.run(
            [str(REFCLIENT_V1), "--api", server.url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    checks = {c["check"]: c for c in lines}
    return ClientRun(request.param, checks, result.returncode, result.stderr)


def test_runs_exactly_the_known_checks(client_run):
    assert sorted(client_run.checks) == sorted(CHECKS), client_run.stderr
    failed = [name for name, c in client_run.checks.items() if not c["ok"]]
    assert (client_run.returncode == 0) == (failed == []), client_run.stderr


@pytest.mark.parametrize("check", CHECKS)
def test_check_passes(client_run, check):
    result = client_run.checks.get(check)
    assert result is not None, f"{client_run.kind}: {check} not reported\n{client_run.stderr}"
    assert result["ok"], f"{client_run.kind}: {result['detail']}"
