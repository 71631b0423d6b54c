"""A node's view of its tailnet (relay/tailnet/netmap.py): map messages and their deltas,
applied as tailscale.com v1.102.5's controlclient applies them, and the grants a relay reads."""

from __future__ import annotations

import ipaddress

import pytest

from relay.protocol.keys import DiscoPrivateKey
from relay.tailnet.control_messages import ControlProtocolError
from relay.tailnet.netmap import (
    CAP_RELAY,
    CAP_RELAY_TARGET,
    DerpMap,
    DerpNode,
    DerpRegion,
    NetMap,
    choose_home_derp,
    parse_ip_set,
)
from relay.tailnet.nodekeys import NodePrivateKey

KEYS = {n: NodePrivateKey.generate().public for n in range(1, 6)}
DISCO = {n: DiscoPrivateKey.generate().public for n in range(1, 6)}


def node(n: int, **extra: object) -> dict[str, object]:
    return {
        "ID": n,
        "Key": str(KEYS[n]),
        "DiscoKey": str(DISCO[n]),
        "Addresses": [f"100.64.0.{n}/32", f"fd7a:115c:a1e0::{n}/128"],
        "Hostinfo": {"Hostname": f"node{n}"},
        "Cap": 142,
        **extra,
    }


def relay_grant(sources: list[str], destinations: list[str], cap: str = CAP_RELAY) -> dict:
    return {"SrcIPs": sources, "CapGrant": [{"Dsts": destinations, "CapMap": {cap: [{}]}}]}


DERP_MAP = {
    "Regions": {
        "999": {
            "RegionID": 999,
            "RegionCode": "test",
            "Nodes": [
                {
                    "Name": "999",
                    "RegionID": 999,
                    "HostName": "127.0.0.1",
                    "IPv4": "127.0.0.1",
                    "DERPPort": 8080,
                    "STUNPort": 3479,
                },
            ],
        },
        "5": None,
    }
}


def full_map() -> NetMap:
    netmap = NetMap()
    changes = netmap.apply(
        {"Node": node(1), "DERPMap": DERP_MAP, "Peers": [node(2), node(3)],
         "PacketFilters": {"base": [relay_grant(["100.64.0.2"], ["100.64.0.1/32"])]}}
    )  # fmt: skip
    assert changes.self_node and changes.derp_map and changes.peers_full and changes.packet_filter
    return netmap


def test_a_full_map_gives_our_node_the_derp_map_and_the_peers():
    netmap = full_map()
    assert netmap.self_node.key == KEYS[1]
    assert [str(a) for a in netmap.self_node.single_addresses()] == [
        "100.64.0.1",
        "fd7a:115c:a1e0::1",
    ]
    assert sorted(netmap.peers) == [2, 3]
    assert netmap.peers[2].disco_key == DISCO[2] and netmap.peers[2].hostname == "node2"
    assert list(netmap.derp_map.regions) == [999]  # the null region is dropped
    derp = netmap.derp_map.regions[999].nodes[0]
    assert (derp.host_name, derp.ipv4, derp.derp_port, derp.stun_port) == (
        "127.0.0.1", "127.0.0.1", 8080, 3479,
    )  # fmt: skip


def test_deltas_add_change_remove_and_patch_peers():
    netmap = full_map()
    changes = netmap.apply({"PeersChanged": [node(4), node(3, Cap=150)], "PeersRemoved": [2, 9]})
    assert changes.peers_added == (4,) and changes.peers_changed == (3,)
    assert changes.peers_removed == (2,)
    assert sorted(netmap.peers) == [3, 4] and netmap.peers[3].cap == 150

    new_disco = DiscoPrivateKey.generate().public
    changes = netmap.apply(
        {"PeersChangedPatch": [
            {"NodeID": 4, "DiscoKey": str(new_disco), "DERPRegion": 999, "Cap": 0, "Online": True},
            {"NodeID": 77, "DERPRegion": 1},
        ], "OnlineChange": {"3": False}}
    )  # fmt: skip
    peer = netmap.peers[4]
    assert (peer.disco_key, peer.home_derp, peer.cap, peer.online) == (new_disco, 999, 142, True)
    assert netmap.peers[3].online is False
    assert set(changes.peers_changed) == {3, 4}
    assert 77 not in netmap.peers


def test_a_full_peer_list_replaces_every_peer_and_ignores_the_deltas_beside_it():
    netmap = full_map()
    netmap.apply({"Peers": [node(5)], "PeersRemoved": [5], "PeersChanged": [node(4)]})
    assert sorted(netmap.peers) == [5]


def test_keep_alives_and_empty_messages_change_nothing():
    netmap = full_map()
    assert not netmap.apply({"KeepAlive": True})
    assert not netmap.apply({"Peers": [], "PeersChanged": []})
    assert sorted(netmap.peers) == [2, 3]


def test_the_home_derp_region_may_come_in_the_legacy_form():
    netmap = NetMap()
    netmap.apply({"Peers": [node(2, DERP="127.3.3.40:999"), node(3, DERP="10.0.0.1:5")]})
    assert (netmap.peers[2].home_derp, netmap.peers[3].home_derp) == (999, 0)


def test_a_zero_disco_key_is_no_disco_key():
    netmap = NetMap()
    netmap.apply({"Peers": [node(2, DiscoKey="discokey:" + "0" * 64)]})
    assert netmap.peers[2].disco_key is None


def test_a_derp_map_without_regions_keeps_the_previous_regions():
    netmap = full_map()
    netmap.apply({"DERPMap": {"HomeParams": {}}})
    assert list(netmap.derp_map.regions) == [999]
    netmap.apply({"DERPMap": {"Regions": {}}})
    assert netmap.derp_map.regions == {}


def test_named_packet_filters_are_replaced_deleted_and_reset():
    netmap = full_map()
    peer = netmap.peers[2]
    assert netmap.granted(peer) and not netmap.granted(netmap.peers[3])
    assert [p.id for p in netmap.relay_clients()] == [2]

    netmap.apply({"PacketFilters": {"extra": [relay_grant(["100.64.0.3"], ["100.64.0.1/32"])]}})
    assert [p.id for p in netmap.relay_clients()] == [2, 3]
    netmap.apply({"PacketFilters": {"base": None}})
    assert [p.id for p in netmap.relay_clients()] == [3]
    netmap.apply({"PacketFilters": {"*": None, "new": []}})
    assert netmap.relay_clients() == [] and netmap.filter_rules == ()
    netmap.apply({"PacketFilter": [relay_grant(["*"], ["100.64.0.0/24"])]})
    assert [p.id for p in netmap.relay_clients()] == [2, 3]


def test_capabilities_compare_the_first_addresses_of_one_family():
    netmap = full_map()
    # Granted toward our IPv6 address only: the reference compares IPv4 first, so no grant.
    netmap.apply({"PacketFilters": {"*": None, "base": [
        relay_grant(["fd7a:115c:a1e0::2"], ["fd7a:115c:a1e0::1/128"])]}})  # fmt: skip
    assert not netmap.granted(netmap.peers[2])
    # A peer with only an IPv6 address is compared on IPv6.
    netmap.apply({"PeersChanged": [node(2, Addresses=["fd7a:115c:a1e0::2/128"])]})
    assert netmap.granted(netmap.peers[2])


def test_values_of_a_capability_are_collected_from_every_matching_rule():
    netmap = full_map()
    netmap.apply({"PacketFilters": {"base": [
        {"SrcIPs": ["100.64.0.0-100.64.0.9"],
         "CapGrant": [{"Dsts": ["100.64.0.1/32"], "CapMap": {CAP_RELAY: [{"a": 1}]}},
                      {"Dsts": ["100.64.0.0/10"], "Caps": [CAP_RELAY_TARGET]}]},
        {"SrcIPs": ["cap:some-node-cap"], "CapGrant": [{"Dsts": ["100.64.0.1/32"],
                                                        "CapMap": {"x": [1]}}]},
        {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]},
    ]}})  # fmt: skip
    assert netmap.capabilities(netmap.peers[2], netmap.self_node) == {
        CAP_RELAY: [{"a": 1}],
        CAP_RELAY_TARGET: [],
    }
    assert len(netmap.filter_rules) == 2  # the port rule is not kept


def test_an_unsigned_peer_holds_no_capability():
    netmap = full_map()
    netmap.apply({"PeersChanged": [node(2, UnsignedPeerAPIOnly=True)]})
    assert not netmap.granted(netmap.peers[2])


def test_ip_sets_are_read_as_the_reference_reads_them():
    assert parse_ip_set("100.64.0.1") == [ipaddress.ip_network("100.64.0.1/32")]
    assert parse_ip_set("100.64.0.0-100.64.0.3") == [ipaddress.ip_network("100.64.0.0/30")]
    assert len(parse_ip_set("*")) == 2 and parse_ip_set("cap:x") == []
    for bad in ("100.64.0.1/24", "100.64.0.5-100.64.0.1", "nonsense"):
        with pytest.raises(ValueError):
            parse_ip_set(bad)


def test_malformed_parts_are_protocol_errors():
    for message in (
        {"Peers": [{"ID": 2}]},
        {"Node": node(1, Key="nodekey:zz")},
        {"PacketFilters": {"base": [{"SrcIPs": ["bad"], "CapGrant": [{"Dsts": ["1.2.3.4/32"]}]}]}},
        {"DERPMap": {"Regions": {"x": {"RegionID": 1}}}},
    ):
        with pytest.raises(ControlProtocolError):
            NetMap().apply(message)


def test_the_home_derp_region_is_kept_while_it_exists_else_the_lowest_usable():
    def region(region_id: int, *, stun_only: bool = False, no_home: bool = False) -> DerpRegion:
        derp = DerpNode(str(region_id), region_id, "h", stun_only=stun_only)
        return DerpRegion(region_id, "", "", (derp,), no_measure_no_home=no_home)

    derp_map = DerpMap(
        {7: region(7), 3: region(3, stun_only=True), 5: region(5), 1: region(1, no_home=True)}
    )
    assert choose_home_derp(derp_map) == 5
    assert choose_home_derp(derp_map, current=7) == 7
    assert choose_home_derp(derp_map, current=3) == 5
    assert choose_home_derp(DerpMap({})) == 0
