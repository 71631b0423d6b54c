"""The fast path's nftables text and the parsers of nft's and ip's output (pure; no kernel).

The rules' effect in a real kernel is tested in test_fastpath.py.
"""

from __future__ import annotations

import json

import pytest

from relay.fastpath import rules as nft_rules
from relay.fastpath.kernel import client_address, count_changes
from relay.fastpath.rules import Leg, Route


def test_endpoint_rules_send_each_bound_client_to_the_other():
    route_b = Route(device="rb", source="10.0.2.1", next_hop="10.0.2.2")
    route_a = Route(device="ra", source="10.0.1.1", next_hop="10.0.1.254")
    a, b = ("10.0.1.2", 1000), ("10.0.2.2", 2000)
    script = nft_rules.install_endpoint("t", 7, 9, 7000, (Leg(a, b, route_b), Leg(b, a, route_a)))
    lines = script.splitlines()
    assert lines[:4] == [
        "add chain netdev t e7_9_0",
        "add rule netdev t e7_9_0 ip saddr set 10.0.2.1 udp sport set 7000 "
        'ip daddr set 10.0.2.2 udp dport set 2000 fwd ip to 10.0.2.2 device "rb"',
        "add chain netdev t e7_9_1",
        "add rule netdev t e7_9_1 ip saddr set 10.0.1.1 udp sport set 7000 "
        'ip daddr set 10.0.1.2 udp dport set 1000 fwd ip to 10.0.1.254 device "ra"',
    ]
    assert lines[4:] == [
        "add element netdev t legs4 { 7 . 10.0.1.2 . 1000 counter : jump e7_9_0 }",
        "add element netdev t legs4 { 7 . 10.0.2.2 . 2000 counter : jump e7_9_1 }",
    ], "the map points at chains only once they exist"
    assert nft_rules.remove_endpoint("t", 7, 9, (a, b)).splitlines() == [
        "delete element netdev t legs4 { 7 . 10.0.1.2 . 1000 }",
        "delete element netdev t legs4 { 7 . 10.0.2.2 . 2000 }",
        "delete chain netdev t e7_9_0",
        "delete chain netdev t e7_9_1",
    ], "unmapped before the chains go"


def test_ipv6_endpoints_use_ip6_matches():
    route = Route(device="eth0", source="fd00::1", next_hop="fd00::3")
    a, b = ("fd00::2", 1), ("fd00::3", 2)
    script = nft_rules.install_endpoint("t", 1, 1, 7000, (Leg(a, b, route), Leg(b, a, route)))
    assert (
        "ip6 saddr set fd00::1 udp sport set 7000 ip6 daddr set fd00::3 udp dport set 2" in script
    )
    assert "fwd ip6 to fd00::3" in script
    assert "add element netdev t legs6 { 1 . fd00::2 . 1 counter : jump e1_1_0 }" in script
    assert nft_rules.header_bytes("fd00::2") == 48
    assert nft_rules.header_bytes("10.0.0.1") == 28


@pytest.mark.parametrize(
    ("listen", "families"), [(None, ["ip", "ip6"]), ("10.0.0.1", ["ip"]), ("fd00::1", ["ip6"])]
)
def test_device_hook_takes_only_data_packets_to_the_relay_port(listen, families):
    script = nft_rules.hook_device("t", "in_0", "eth0", 7000, listen)
    assert 'hook ingress device "eth0"' in script
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    assert [rule.split("meta protocol ")[1].split()[0] for rule in rules] == families
    for rule, family in zip(rules, families, strict=True):
        legs = "legs4" if family == "ip" else "legs6"
        assert (
            f"udp dport 7000 @th,72,1 0 @th,96,24 . {family} saddr . udp sport vmap @{legs}" in rule
        )
        if listen:
            assert f"daddr {listen} " in rule


def test_table_is_replaced_not_merged():
    script = nft_rules.create_table("relayfleet_7000")
    assert script.splitlines()[:3] == [
        "add table netdev relayfleet_7000",
        "delete table netdev relayfleet_7000",
        "add table netdev relayfleet_7000",
    ]


def element(key, packets, size, chain="e1_1_0"):
    counter = {"packets": packets, "bytes": size}
    return [
        {"elem": {"val": {"concat": list(key)}, "counter": counter}},
        {"jump": {"target": chain}},
    ]


def test_parse_legs_reads_the_maps_counters():
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {
                    "map": {
                        "table": "t",
                        "name": "legs4",
                        "elem": [element((5, "10.0.0.1", 1000), 2, 272)],
                    }
                },
                {
                    "map": {
                        "table": "t",
                        "name": "legs6",
                        "elem": [element((6, "fd00::1", 7), 0, 0)],
                    }
                },
                {"map": {"table": "t", "name": "legs4"}},
                {
                    "map": {
                        "table": "another_relay",
                        "name": "legs4",
                        "elem": [element((7, "10.0.0.1", 1000), 2, 272)],
                    }
                },
                {
                    "map": {
                        "table": "t",
                        "name": "not_ours",
                        "elem": [element((8, "10.0.0.1", 1000), 2, 272)],
                    }
                },
            ]
        }
    )
    assert nft_rules.parse_legs(text, "t") == {
        (5, "10.0.0.1", 1000): (2, 272),
        (6, "fd00::1", 7): (0, 0),
    }, "only this table's leg maps"
    assert nft_rules.parse_legs('{"nftables": []}', "t") == {}


def test_count_changes_reports_only_legs_that_moved_and_survives_reinstalls():
    def sets(*legs):
        elems = [element(key, packets, size) for key, packets, size in legs]
        return json.dumps({"nftables": [{"map": {"table": "t", "name": "legs4", "elem": elems}}]})

    x, y = (1, "10.0.0.1", 5), (1, "10.0.0.2", 6)
    counts, moved = count_changes(sets((x, 3, 300), (y, 0, 0)), "t", {})
    assert moved == [(x, 3, 300)]
    counts, moved = count_changes(sets((x, 3, 300), (y, 1, 90)), "t", counts)
    assert moved == [(y, 1, 90)]
    _, moved = count_changes(sets((x, 1, 100)), "t", counts)
    assert moved == [(x, 1, 100)], "a count that went down is a leg installed afresh"


def test_parse_routes_reads_a_batch_and_skips_failures():
    text = (
        '[{"dst":"10.0.2.2","dev":"rb","prefsrc":"10.0.2.1","flags":[],"cache":[]}]\n'
        '[{"dst":"8.8.8.8","gateway":"10.0.0.1","dev":"eth0","prefsrc":"10.0.0.5"}]\n'
        '[{"type":"unreachable","dst":"10.9.9.9"}]\n'
    )
    assert nft_rules.parse_routes(text) == {
        "10.0.2.2": Route("rb", "10.0.2.1", "10.0.2.2"),
        "8.8.8.8": Route("eth0", "10.0.0.5", "10.0.0.1"),
    }
    assert nft_rules.parse_routes("") == {}


def test_client_addresses_are_unmapped_and_scoped_ones_refused():
    assert client_address(("::ffff:10.0.0.1", 5)) == ("10.0.0.1", 5)
    assert client_address(("fd00::1", 6)) == ("fd00::1", 6)
    assert client_address(("fe80::1%2", 6)) is None
