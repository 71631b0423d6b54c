"""Our relay joins a tailnet whose control server and DERP speak TLS (a private CA).

Headscale on loopback with a certificate of a CA made here serves the control
protocol and its embedded DERP on one TLS listener. ``relayfleet relay
--tailnet-login-server https://... --tailnet-ca-file ca.crt`` must register,
follow the map and hold its DERP connection over TLS; without the CA it must
refuse to start, saying why. Loopback is enough: no namespaces, no root.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controlplane import CertificateAuthority
from tests.support.headscale import Headscale, default_policy
from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync
from tests.tailnet.conftest import USER

RELAYFLEET = Path(sys.executable).parent / "relayfleet"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca")


@pytest.fixture
def tls_headscale(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Headscale]:
    pair = ca.issue("headscale", common_name="headscale", server=True, hosts=["127.0.0.1"])
    with Headscale(tmp_path / "headscale", policy=default_policy([USER]), tls=pair) as server:
        server.create_user(USER)
        yield server


def relay_argv(headscale: Headscale, directory: Path, metrics_port: int, *extra: str) -> list[str]:
    auth_key = directory / "auth-key"
    auth_key.write_text(headscale.create_auth_key(headscale.user_id(USER), ["tag:relay"]) + "\n")
    return [
        str(RELAYFLEET), "relay", "--listen", "127.0.0.1", "--port", "0", "--addr", "127.0.0.1",
        "--api-listen", "off", "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--fast-path", "off", "--tailnet-login-server", headscale.url,
        "--tailnet-auth-key-file", str(auth_key), *extra,
    ]  # fmt: skip


def connected(metrics_port: int, part: str) -> bool:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return False
    return f'relayfleet_relay_tailnet_connected{{part="{part}"}} 1.0' in text


def test_the_relay_joins_over_tls_with_the_private_ca(tls_headscale, ca, tmp_path):
    assert tls_headscale.url.startswith("https://")
    metrics_port = free_port()
    argv = relay_argv(tls_headscale, tmp_path, metrics_port, "--tailnet-ca-file", str(ca.cert_path))
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        relay = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        for part in ("control", "derp"):
            wait_until_sync(
                lambda part=part: relay.poll() is None and connected(metrics_port, part),
                f"the relay's {part} connection over TLS", log=log,
            )  # fmt: skip
        assert [node.get("given_name") for node in tls_headscale.nodes()] == ["relay"]
    finally:
        relay.terminate()
        relay.wait(30)


def test_without_the_ca_the_relay_refuses_to_start_saying_why(tls_headscale, tmp_path):
    argv = relay_argv(tls_headscale, tmp_path, free_port())
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot join the tailnet" in result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
