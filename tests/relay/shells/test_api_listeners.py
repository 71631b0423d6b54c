"""The relay's two HTTP listeners: the allocation API, and the public /metrics and /healthz.

With ``--metrics-listen`` the public routes get a listener of their own, which
answers 404 to everything else, and the API listener serves only the
allocation API; without it, one listener serves all (as a standalone relay
always did). ``--api-listen off`` runs no API listener at all. Over real
sockets, in this process and as ``relayfleet relay``.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from relay.protocol.keys import DiscoPrivateKey
from tests.relay.relay_process import RelayProcess

TOKEN = "listener-test-token"
ALLOCATION_ROUTES = [("POST", "/v0/relay/endpoint"), ("GET", "/v0/relay/endpoints")]
PUBLIC_ROUTES = [("GET", "/metrics"), ("GET", "/healthz")]


def new_keys() -> list[str]:
    return [str(DiscoPrivateKey.generate().public) for _ in range(2)]


async def call(base: str, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"DiscoKeys": new_keys()} if method == "POST" else None
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.text()


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on: its sockets' inodes found among the listeners of
    its network namespace (/proc/PID/net/tcp and tcp6, state 0A)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_the_metrics_listener_answers_404_to_the_allocation_api(relay_factory, token):
    h = await relay_factory("127.0.0.1", metrics_listen=("127.0.0.1", 0), api_token=token)
    public = f"http://{h.server.metrics_address}"
    for method, path in ALLOCATION_ROUTES:
        assert (await call(public, method, path, token))[0] == 404, path
    assert (await call(public, "GET", "/"))[0] == 404
    status, text = await call(public, "GET", "/metrics")
    assert status == 200 and "relayfleet_relay_info" in text
    assert await call(public, "GET", "/healthz") == (200, "ok\n")
    assert len(h.server.core) == 0


async def test_with_a_metrics_listener_the_api_listener_serves_only_the_allocation_api(
    relay_factory,
):
    h = await relay_factory("127.0.0.1", metrics_listen=("127.0.0.1", 0))
    assert h.server.api_address != h.server.metrics_address
    for method, path in PUBLIC_ROUTES:
        assert (await call(h.api, method, path))[0] == 404, path
    for method, path in ALLOCATION_ROUTES:
        assert (await call(h.api, method, path))[0] == 200, path


async def test_without_a_metrics_listener_the_api_listener_serves_everything(relay_factory):
    h = await relay_factory("127.0.0.1")
    assert h.server.metrics_address is None
    for method, path in ALLOCATION_ROUTES + PUBLIC_ROUTES:
        assert (await call(h.api, method, path))[0] == 200, path


async def test_api_listen_off_opens_no_port():
    relay = await RelayProcess.start("--api-listen", "off")
    try:
        assert relay.ready["api"] is None
        assert "metrics" not in relay.ready
        assert listening_tcp_ports(relay.process.pid) == set()
    finally:
        code, log = await relay.stop()
    assert code == 0
    assert "no API, no /metrics or /healthz" in log


async def test_api_listen_off_with_a_metrics_listener_opens_that_port_only():
    relay = await RelayProcess.start("--api-listen", "off", "--metrics-listen", "127.0.0.1:0")
    try:
        assert relay.ready["api"] is None
        metrics = relay.ready["metrics"]
        assert listening_tcp_ports(relay.process.pid) == {port_of(metrics)}
        assert (await call(f"http://{metrics}", "GET", "/healthz")) == (200, "ok\n")
        assert (await call(f"http://{metrics}", "POST", "/v0/relay/endpoint"))[0] == 404
    finally:
        code, log = await relay.stop()
    assert code == 0
    assert f"no API; /metrics and /healthz on http://{metrics}" in log


async def test_the_ready_line_and_the_log_name_both_listeners():
    relay = await RelayProcess.start("--metrics-listen", "127.0.0.1:0")
    try:
        api, metrics = relay.ready["api"], relay.ready["metrics"]
        assert listening_tcp_ports(relay.process.pid) == {port_of(api), port_of(metrics)}
        status, body = await relay.allocate(new_keys())
        assert status == 200 and body["VNI"] == 1
        assert (await call(f"http://{metrics}", "POST", "/v0/relay/endpoint"))[0] == 404
        assert (await call(f"http://{api}", "GET", "/metrics"))[0] == 404
    finally:
        code, log = await relay.stop()
    assert code == 0
    assert f"API on http://{api} (allocations on); /metrics and /healthz on http://{metrics}" in log


async def test_the_ready_line_keeps_its_keys_without_a_metrics_listener():
    relay = await RelayProcess.start()
    try:
        assert set(relay.ready) == {"ready", "udp_port", "api", "server_disco"}
    finally:
        code, log = await relay.stop()
    assert code == 0
    assert f"API, /metrics and /healthz on http://{relay.ready['api']} (allocations on)" in log


@pytest.mark.parametrize("api", ["off", "127.0.0.1:0"])
async def test_a_metrics_listener_beyond_loopback_is_not_warned_about(api):
    """The warning about listening beyond loopback without a token is the API's: the public
    listener serves nothing a token would guard."""
    relay = await RelayProcess.start("--api-listen", api, "--metrics-listen", "0.0.0.0:0")
    code, log = await relay.stop()
    assert code == 0
    assert "without --api-token-file" not in log
