"""`relayfleet status`'s data and its terminal view, from a memory store and listed resources."""

from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import ORIGIN_LABEL, TAILNET_ORIGIN
from relay.store import MemoryStore, RelayRecord
from relay_operator.fleet import endpoint_rows, format_fleet, gather_fleet, summarise_endpoints

KEY = DiscoPrivateKey.generate().public


def endpoint(phase=None, relay=None, versions=()):
    status = {k: v for k, v in (("phase", phase), ("relay", relay)) if v}
    if versions:
        status["clients"] = [
            {"discoKey": "x"} if v is None else {"discoKey": "x", "protocolVersion": v}
            for v in versions
        ]
    return {"metadata": {"name": "x"}, "status": status}


def tailnet_made(item):
    item["metadata"]["labels"] = {ORIGIN_LABEL: TAILNET_ORIGIN}
    return item


def test_endpoints_are_counted_by_phase_and_relay():
    summary = summarise_endpoints(
        [
            endpoint("Allocated", "a", versions=(1, None)),
            endpoint("Bound", "a", versions=(0, 1)),
            tailnet_made(endpoint("Bound", "b", versions=(1, 1))),
            endpoint(),
        ]
    )
    assert summary["total"] == 4
    assert summary["fromTailnet"] == 1
    assert summary["byPhase"] == {
        "Pending": 1,
        "Allocated": 1,
        "Bound": 2,
        "Expired": 0,
    }
    assert summary["byRelay"] == {"a": {"Allocated": 1, "Bound": 1}, "b": {"Bound": 1}}
    assert summary["clientsByProtocol"] == {"v0": 1, "v1": 4, "unknown": 1}
    text = format_fleet({"relays": [], "endpoints": summary})
    assert "PEERS      by protocol: v0 1  v1 4  unknown 1" in text
    assert "(total 4, 1 from a tailnet)" in text


async def test_the_view_shows_relays_and_says_why_endpoints_are_unknown(tmp_path):
    store = MemoryStore(clock=lambda: 100.0)
    await store.register(RelayRecord("relay-1", KEY, ("192.0.2.1:7000",), 3, 10, "0.1.0", 99.5), 15)
    await store.register(RelayRecord("relay-2", KEY, ("192.0.2.2:7000",), 0, 10, "0.1.0", 0.0), 1)
    missing = tmp_path / "no-such-kubeconfig"
    fleet = await gather_fleet(store, str(missing), now=100.0)
    assert [(r["name"], r["alive"], r["heartbeatAgeSeconds"]) for r in fleet["relays"]] == [
        ("relay-1", True, 0.5),
        ("relay-2", True, 100.0),
    ]
    assert "error" in fleet["endpoints"]
    text = format_fleet(fleet)
    assert text.splitlines()[0].split() == [
        "RELAY", "STATE", "LOAD", "CAPACITY", "HEARTBEAT", "ADDRESSES"
    ]  # fmt: skip
    assert "relay-1  alive  3" in text
    assert "ENDPOINTS  unknown:" in text


def test_each_endpoint_lists_its_peers_version_and_generation():
    item = {
        "metadata": {"namespace": "ns", "name": "alice-bob"},
        "status": {
            "phase": "Bound",
            "relay": "relay-1",
            "vni": 7,
            "clients": [
                {"discoKey": "a", "handshake": "Bound", "protocolVersion": 1, "generation": 41},
                {"discoKey": "b", "handshake": "Bound", "protocolVersion": 0},
            ],
        },
    }
    rows = endpoint_rows([item, {"metadata": {"namespace": "ns", "name": "waiting"}}])
    assert [(r["name"], r["phase"]) for r in rows] == [
        ("alice-bob", "Bound"),
        ("waiting", "Pending"),
    ]
    assert [(c["protocolVersion"], c["generation"]) for c in rows[0]["clients"]] == [
        (1, 41),
        (0, None),
    ]
    summary = summarise_endpoints([item]) | {"items": rows}
    text = format_fleet({"relays": [], "endpoints": summary})
    assert "ns/alice-bob  Bound  relay-1 VNI 7  Bound v1 gen 41, Bound v0" in text
    assert "ns/waiting  Pending  not placed  -" in text
