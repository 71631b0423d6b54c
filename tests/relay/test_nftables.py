"""The fast path's nftables text and the parsers of nft's and ip's output (pure; no kernel).

The rules' effect in a real kernel is tested in test_fastpath.py.
"""

from __future__ import annotations

import json

import pytest

from relay import nftables
from relay.fastpath import client_address, count_changes
from relay.nftables import Leg, Route


def test_endpoint_rules_match_each_bound_client_and_rewrite_to_the_other():
    route_b = Route(device="rb", source="10.0.2.1", next_hop="10.0.2.2")
    route_a = Route(device="ra", source="10.0.1.1", next_hop="10.0.1.254")
    a, b = ("10.0.1.2", 1000), ("10.0.2.2", 2000)
    script = nftables.install_endpoint("t", 7, 9, 7000, (Leg(a, b, route_b), Leg(b, a, route_a)))
    lines = script.splitlines()
    assert lines[0] == "add chain netdev t e7_9"
    assert (
        "add rule netdev t e7_9 ip saddr 10.0.1.2 udp sport 1000 "
        "ip saddr set 10.0.2.1 udp sport set 7000 ip daddr set 10.0.2.2 udp dport set 2000 "
        'fwd ip to 10.0.2.2 device "rb"'
    ) in lines
    assert 'fwd ip to 10.0.1.254 device "ra"' in script
    assert "add element netdev t legs4 { 7 . 10.0.1.2 . 1000 counter }" in lines
    assert "add element netdev t legs4 { 7 . 10.0.2.2 . 2000 counter }" in lines
    assert lines[-1] == "add element netdev t vnis { 7 : jump e7_9 }", "mapped last"
    removal = nftables.remove_endpoint("t", 7, 9, (a, b)).splitlines()
    assert removal[0] == "delete element netdev t vnis { 7 }", "unmapped first"
    assert "delete element netdev t legs4 { 7 . 10.0.2.2 . 2000 }" in removal
    assert removal[-1] == "delete chain netdev t e7_9"


def test_ipv6_endpoints_use_ip6_matches():
    route = Route(device="eth0", source="fd00::1", next_hop="fd00::3")
    a, b = ("fd00::2", 1), ("fd00::3", 2)
    script = nftables.install_endpoint("t", 1, 1, 7000, (Leg(a, b, route), Leg(b, a, route)))
    assert "ip6 saddr fd00::2 udp sport 1" in script
    assert "fwd ip6 to fd00::3" in script
    assert "add element netdev t legs6 { 1 . fd00::2 . 1 counter }" in script
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
    for rule, family in zip(rules, families, strict=True):
        legs = "legs4" if family == "ip" else "legs6"
        assert (
            f"udp dport 7000 @th,72,1 0 @th,96,24 . {family} saddr . udp sport @{legs} "
            "@th,96,24 vmap @vnis"
        ) in rule
        if listen:
            assert f"daddr {listen} " in rule


def test_table_is_replaced_not_merged():
    script = nftables.create_table("relayfleet_7000")
    assert script.splitlines()[:3] == [
        "add table netdev relayfleet_7000",
        "delete table netdev relayfleet_7000",
        "add table netdev relayfleet_7000",
    ]


def test_parse_legs_reads_the_sets_counters():
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {"set": {"name": "legs4", "elem": [
                    {"elem": {"val": {"concat": [5, "10.0.0.1", 1000]},
                              "counter": {"packets": 2, "bytes": 272}}}]}},
                {"set": {"name": "legs6", "elem": [
                    {"elem": {"val": {"concat": [6, "fd00::1", 7]},
                              "counter": {"packets": 0, "bytes": 0}}}]}},
                {"set": {"name": "empty"}},
            ]
        }
    )  # fmt: skip
    assert nftables.parse_legs(text) == {(5, "10.0.0.1", 1000): (2, 272), (6, "fd00::1", 7): (0, 0)}
    assert nftables.parse_legs('{"nftables": []}') == {}


def test_count_changes_reports_only_legs_that_moved_and_survives_reinstalls():
    def sets(*legs):
        elems = [
            {"elem": {"val": {"concat": list(key)}, "counter": {"packets": p, "bytes": b}}}
            for key, p, b in legs
        ]
        return json.dumps({"nftables": [{"set": {"name": "legs4", "elem": elems}}]})

    x, y = (1, "10.0.0.1", 5), (1, "10.0.0.2", 6)
    counts, moved = count_changes(sets((x, 3, 300), (y, 0, 0)), {})
    assert moved == [(x, 3, 300)]
    counts, moved = count_changes(sets((x, 3, 300), (y, 1, 90)), counts)
    assert moved == [(y, 1, 90)]
    _, moved = count_changes(sets((x, 1, 100)), counts)
    assert moved == [(x, 1, 100)], "a count that went down is a leg installed afresh"


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
