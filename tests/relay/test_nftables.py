"""The fast path's nftables text and the parsers of nft's and ip's output (pure; no kernel).

The rules' effect in a real kernel is tested in test_fastpath.py.
"""

from __future__ import annotations

import json

import pytest

from relay import nftables
from relay.fastpath import client_address
from relay.nftables import Leg, Route


def test_counter_names_round_trip_and_foreign_names_are_ignored():
    name = nftables.counter_name(16_777_215, 2**63, 1)
    assert nftables.parse_counter_name(name) == (16_777_215, 2**63, 1)
    for foreign in ("c1_2_2", "c1_2", "x1_2_0", "c1_2_0x", ""):
        assert nftables.parse_counter_name(foreign) is None


def test_endpoint_rules_match_each_bound_client_and_rewrite_to_the_other():
    route_b = Route(device="rb", source="10.0.2.1", next_hop="10.0.2.2")
    route_a = Route(device="ra", source="10.0.1.1", next_hop="10.0.1.254")
    a, b = ("10.0.1.2", 1000), ("10.0.2.2", 2000)
    script = nftables.install_endpoint("t", 7, 9, 7000, (Leg(a, b, route_b), Leg(b, a, route_a)))
    lines = script.splitlines()
    assert lines[:2] == ["add counter netdev t c7_9_1", "add counter netdev t c7_9_0"]
    assert (
        'ip saddr 10.0.1.2 udp sport 1000 counter name "c7_9_0" '
        "ip saddr set 10.0.2.1 udp sport set 7000 ip daddr set 10.0.2.2 udp dport set 2000 "
        'fwd ip to 10.0.2.2 device "rb"'
    ) in script
    assert 'counter name "c7_9_1" ip saddr set 10.0.1.1' in script
    assert 'fwd ip to 10.0.1.254 device "ra"' in script
    assert lines[-1] == "add element netdev t vnis { 7 : jump e7_9 }"
    removal = nftables.remove_endpoint("t", 7, 9)
    assert removal.splitlines()[0] == "delete element netdev t vnis { 7 }", "unmapped first"
    assert "delete chain netdev t e7_9" in removal


def test_ipv6_endpoints_use_ip6_matches():
    route = Route(device="eth0", source="fd00::1", next_hop="fd00::3")
    a, b = ("fd00::2", 1), ("fd00::3", 2)
    script = nftables.install_endpoint("t", 1, 1, 7000, (Leg(a, b, route), Leg(b, a, route)))
    assert "ip6 saddr fd00::2 udp sport 1" in script
    assert "fwd ip6 to fd00::3" in script
    assert nftables.header_bytes("fd00::2") == 48
    assert nftables.header_bytes("10.0.0.1") == 28


@pytest.mark.parametrize(
    ("listen", "families"), [(None, ["ip", "ip6"]), ("10.0.0.1", ["ip"]), ("fd00::1", ["ip6"])]
)
def test_device_hook_takes_only_data_packets_to_the_relay_port(listen, families):
    script = nftables.hook_device("t", "in_0", "eth0", 7000, listen)
    assert 'hook ingress device "eth0"' in script
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    assert [rule.split("meta protocol ")[1].split()[0] for rule in rules] == families
    for rule in rules:
        assert "udp dport 7000 @th,72,1 0 @th,96,24 vmap @vnis" in rule
        if listen:
            assert f"daddr {listen} " in rule


def test_table_is_replaced_not_merged():
    script = nftables.create_table("relayfleet_7000")
    assert script.splitlines()[:3] == [
        "add table netdev relayfleet_7000",
        "delete table netdev relayfleet_7000",
        "add table netdev relayfleet_7000",
    ]


def test_parse_counters_reads_nft_json():
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {
                    "counter": {
                        "family": "netdev",
                        "name": "c5_1_0",
                        "table": "t",
                        "handle": 3,
                        "packets": 2,
                        "bytes": 272,
                    }
                },
            ]
        }
    )
    assert nftables.parse_counters(text) == {"c5_1_0": (2, 272)}
    assert nftables.parse_counters('{"nftables": []}') == {}


def test_parse_routes_reads_a_batch_and_skips_failures():
    text = (
        '[{"dst":"10.0.2.2","dev":"rb","prefsrc":"10.0.2.1","flags":[],"cache":[]}]\n'
        '[{"dst":"8.8.8.8","gateway":"10.0.0.1","dev":"eth0","prefsrc":"10.0.0.5"}]\n'
        '[{"type":"unreachable","dst":"10.9.9.9"}]\n'
    )
    assert nftables.parse_routes(text) == {
        "10.0.2.2": Route("rb", "10.0.2.1", "10.0.2.2"),
        "8.8.8.8": Route("eth0", "10.0.0.5", "10.0.0.1"),
    }
    assert nftables.parse_routes("") == {}


def test_client_addresses_are_unmapped_and_scoped_ones_refused():
    assert client_address(("::ffff:10.0.0.1", 5)) == ("10.0.0.1", 5)
    assert client_address(("fd00::1", 6)) == ("fd00::1", 6)
    assert client_address(("fe80::1%2", 6)) is None
