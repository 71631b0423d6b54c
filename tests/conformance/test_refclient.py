"""The reference's own Go client driver (tailscale.com v1.84.0 packages) against both servers."""

import json
import subprocess

from tests.conformance.servers import REFCLIENT

# tailscale.com v1.84.0 returns the existing endpoint when a bound pair asks
# again; docs/protocol.md (and so relay-fleet) discards it and allocates afresh.
REALLOC_AFTER_BIND = {"ours": "new", "reference": "same"}


def test_every_reference_client_check_passes(server):
    result = subprocess.run(
        [
            str(REFCLIENT),
            "--api",
            server.url,
            "--realloc-after-bind",
            REALLOC_AFTER_BIND[server.kind],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    checks = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    failed = [c for c in checks if not c["ok"]]
    assert failed == [], f"{server.kind}: {failed}\n{result.stderr}"
    assert result.returncode == 0, result.stderr
    names = {c["check"] for c in checks}
    assert {
        "bind_handshake",
        "relay_both_ways",
        "wrong_answer_no_bind",
        "bind_from_second_source_dropped",
        "data_from_third_address_dropped",
        "unknown_vni_no_reply",
        "data_before_bind_dropped",
        "realloc_after_bind",
        "control_after_endpoint_bound_ignored",
    } <= names
    assert len(checks) >= 20
