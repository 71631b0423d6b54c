"""The HTTP API: the reference's allocation JSON, refusals, the endpoint table, health, metrics."""

import re
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.protocol.core import Drop
from relay.protocol.keys import DiscoPrivateKey
from tests.support.waiting import wait_until

KEY_RE = re.compile(r"^discokey:[0-9a-f]{64}$")


def new_key() -> str:
    return str(DiscoPrivateKey.generate().public)


async def post(h, body: bytes | str):
    async with h.session.post(f"{h.api}/v0/relay/endpoint", data=body) as response:
        return response.status, await response.text(), response.content_type


@pytest.fixture
async def api(relay_factory):
    return await relay_factory(
        "127.0.0.1", addrs=("127.0.0.1", "::1"), bind_lifetime=30.0, steady_state_lifetime=300.0
    )


async def test_allocation_answers_the_reference_json(api):
    async with api.session.post(
        f"{api.api}/v0/relay/endpoint", json={"DiscoKeys": [new_key(), new_key()]}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert list(body) == [
        "ServerDisco",
        "ClientDisco",
        "LamportID",
        "AddrPorts",
        "VNI",
        "BindLifetime",
        "SteadyStateLifetime",
    ]
    port = api.server.udp_port
    assert KEY_RE.match(body["ServerDisco"])
    assert body["ServerDisco"] == str(api.server.core.server_key)
    assert body["LamportID"] == 1
    assert body["AddrPorts"] == [f"127.0.0.1:{port}", f"[::1]:{port}"]
    assert body["VNI"] == 1
    assert body["BindLifetime"] == "30s"
    assert body["SteadyStateLifetime"] == "5m0s"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "malformed JSON"),
        ("[" * 4000, "nested too deeply"),
        ("[]", "expected a JSON object"),
        ('{"Keys": []}', "expected a JSON object"),
        ('{"DiscoKeys": "discokey:00"}', "must be a list"),
        ('{"DiscoKeys": []}', "exactly 2 keys, got 0"),
        ('{"DiscoKeys": ["a", "b", "c"]}', "exactly 2 keys, got 3"),
        ('{"DiscoKeys": ["discokey:zz", "discokey:00"]}', "DiscoKeys[0]"),
        ('{"DiscoKeys": ["KEY", 7]}', "DiscoKeys[1]"),
    ],
)
async def test_bad_requests_answer_400_with_a_one_line_reason(api, body, reason):
    status, text, content_type = await post(api, body.replace("KEY", new_key()))
    assert status == 400
    assert content_type == "text/plain"
    assert reason in text
    assert text.count("\n") == 1 and text.endswith("\n")


async def test_equal_keys_answer_400(api):
    key = new_key()
    status, text, _ = await post(api, f'{{"DiscoKeys": ["{key}", "{key}"]}}')
    assert (status, text) == (400, "DiscoKeys must name two different keys\n")


async def test_the_servers_own_key_answers_400(api):
    own = str(api.server.core.server_key)
    status, text, _ = await post(api, f'{{"DiscoKeys": ["{new_key()}", "{own}"]}}')
    assert status == 400
    assert "server's disco key" in text


async def test_no_vni_free_answers_503(relay_factory):
    h = await relay_factory("127.0.0.1", max_endpoints=2)
    for _ in range(2):
        await h.post_allocation([new_key(), new_key()])
    status, text, _ = await post(h, f'{{"DiscoKeys": ["{new_key()}", "{new_key()}"]}}')
    assert status == 503
    assert "no VNI free" in text


async def test_closed_server_answers_503(api):
    api.server.closed = True
    status, text, _ = await post(api, f'{{"DiscoKeys": ["{new_key()}", "{new_key()}"]}}')
    assert (status, text) == (503, "relay is shutting down\n")
    async with api.session.get(f"{api.api}/healthz") as response:
        assert response.status == 503


async def test_oversized_request_is_refused(api):
    status, _, _ = await post(api, "x" * 100_000)
    assert status == 413


async def test_endpoint_table_shows_each_clients_state(relay):
    pair = await relay.bound_pair()
    pair.peers[0].send(pair.clients[0].data(b"12345"), relay.relay)
    await pair.peers[1].receive()
    unbound = await relay.pair()
    async with relay.session.get(f"{relay.api}/v0/relay/endpoints") as response:
        table = await response.json()
    assert table["ServerDisco"] == str(relay.server.core.server_key)
    by_vni = {e["VNI"]: e for e in table["Endpoints"]}
    bound = by_vni[pair.endpoint.vni]
    assert bound["Bound"] is True and bound["LamportID"] == pair.endpoint.lamport_id
    assert bound["BoundAt"].endswith("Z") and bound["ExpiresAt"].endswith("Z")
    clients = {c["DiscoKey"]: c for c in bound["Clients"]}
    a = clients[str(pair.keys[0].public)]
    assert a["Handshake"] == "Bound"
    host, port = pair.peers[0].address[:2]
    assert a["Addr"] == (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    assert a["Packets"] == 1 and a["Bytes"] == 8 + 5
    assert a["LastSeen"].endswith("Z")
    fresh = by_vni[unbound.endpoint.vni]
    assert fresh["Bound"] is False and fresh["BoundAt"] is None
    assert [c["Handshake"] for c in fresh["Clients"]] == ["Init", "Init"]
    assert [c["Addr"] for c in fresh["Clients"]] == [None, None]


async def test_healthz(api):
    async with api.session.get(f"{api.api}/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok\n"


async def test_metrics_count_relaying_and_drops(relay):
    pair = await relay.bound_pair()
    pair.peers[0].send(pair.clients[0].data(b"x"), relay.relay)
    await pair.peers[1].receive()
    (await relay.peer()).send(b"short", relay.relay)
    await relay.dropped(Drop.SHORT_PACKET)
    async with relay.session.get(f"{relay.api}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("relayfleet_relay_forwarded_packets_total", ())] == 1
    assert samples[("relayfleet_relay_dropped_packets_total", (("reason", "short_packet"),))] == 1
    assert samples[("relayfleet_relay_dropped_packets_total", (("reason", "wrong_answer"),))] == 0
    assert samples[("relayfleet_relay_endpoints", (("state", "bound"),))] == 1
    v0, v1 = (("version", "0"),), (("version", "1"),)
    assert samples[("relayfleet_relay_handshakes_completed_total", v0)] == 2
    assert samples[("relayfleet_relay_handshakes_completed_total", v1)] == 0
    assert samples[("relayfleet_relay_allocations_total", ())] == 1
    assert samples[("relayfleet_relay_handshake_seconds_count", v0)] == 2
    assert samples[("relayfleet_relay_handshake_seconds_count", v1)] == 0
    assert samples[("relayfleet_relay_handshake_seconds_bucket", (("le", "+Inf"), *v0))] == 2
    assert 0 < samples[("relayfleet_relay_handshake_seconds_sum", v0)] < 5
    assert samples[("relayfleet_relay_send_errors_total", ())] == 0
    assert samples[("relayfleet_relay_receive_errors_total", ())] == 0
    assert ("relayfleet_relay_api_errors_total", (("code", "400"),)) not in samples
    status, _, _ = await post(relay, "not json")
    assert status == 400
    async with relay.session.get(f"{relay.api}/metrics") as response:
        text = await response.text()
    assert 'relayfleet_relay_api_errors_total{code="400"} 1.0' in text


async def test_expires_at_of_a_bound_endpoint_waits_for_the_kernel_counts(relay):
    """With the kernel fast path on, the core learns of packets up to ``last_seen_lag``
    late and expires that much later; the table shows the deadline expiry really keeps
    (it once left the lag out and showed ExpiresAt too early)."""
    pair = await relay.bound_pair()
    core = relay.server.core
    core.last_seen_lag = 7.0
    endpoint = core.endpoint(pair.endpoint.vni)
    quiet_since = min(client.last_seen for client in endpoint.clients)
    async with relay.session.get(f"{relay.api}/v0/relay/endpoints") as response:
        table = await response.json()
    (shown,) = [e["ExpiresAt"] for e in table["Endpoints"] if e["VNI"] == pair.endpoint.vni]
    expected = quiet_since + core.steady_state_lifetime + 7.0
    assert datetime.fromisoformat(shown.replace("Z", "+00:00")).timestamp() == pytest.approx(
        expected, abs=0.001
    )
    assert core.expire(expected - 0.001) == []
    assert core.expire(expected + 0.001) == [endpoint]


async def test_the_table_and_metrics_show_each_clients_protocol_version_and_generation(relay):
    pair = await relay.pair()
    keys = [k.public for k in pair.keys]
    for i, generation in ((0, 7), (1, 9)):
        pair.peers[i].send(pair.clients[i].bind_v1(keys[1 - i], generation), relay.relay)
        challenge = await pair.peers[i].receive()
        pair.peers[i].send(pair.clients[i].answer(challenge), relay.relay)
    await wait_until(lambda: relay.server.core.endpoint(pair.endpoint.vni).bound, "bound")
    async with relay.session.get(f"{relay.api}/v0/relay/endpoints") as response:
        (endpoint,) = (await response.json())["Endpoints"]
    shown = {c["DiscoKey"]: (c["Version"], c["Generation"]) for c in endpoint["Clients"]}
    assert shown == {str(keys[0]): (1, 7), str(keys[1]): (1, 9)}
    async with relay.session.get(f"{relay.api}/metrics") as response:
        text = await response.text()
    assert 'relayfleet_relay_handshakes_completed_total{version="1"} 2.0' in text
    assert 'relayfleet_relay_handshakes_completed_total{version="0"} 0.0' in text
    assert 'relayfleet_relay_handshake_seconds_count{version="1"} 2.0' in text
