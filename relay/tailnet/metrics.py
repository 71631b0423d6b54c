"""Prometheus metrics of a relay's tailnet node, read from its plain counters at scrape time.

An operator wants to see that the relay is in the tailnet (control and DERP
connected), that peers ask it for endpoints, and why requests went
unanswered (the door's drop reasons, and refusals by the relay's allocate).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.shells.metrics import PREFIX
from relay.tailnet.allocation_requests import Drop
from relay.tailnet.node import TailnetNode


class TailnetCollector(Collector):
    def __init__(self, node: TailnetNode) -> None:
        self.node = node

    def collect(self) -> Iterator:
        node, door = self.node, self.node.door
        requests = CounterMetricFamily(
            f"{PREFIX}_tailnet_allocation_requests",
            "Packets from tailnet peers over DERP, by what became of them: answered with an "
            "endpoint, dropped by a rule (the rule's name) or refused by the relay",
            labels=["result"],
        )
        requests.add_metric(["answered"], door.answered)
        for reason in Drop:
            requests.add_metric([reason.value], door.drops[reason])
        for refusal, count in sorted(door.refused.items()):
            requests.add_metric([f"refused_{refusal}"], count)
        yield requests
        connected = GaugeMetricFamily(
            f"{PREFIX}_tailnet_connected",
            "1 while this part of the tailnet node is up: the map poll (control) and the "
            "home region's DERP connection (derp)",
            labels=["part"],
        )
        connected.add_metric(["control"], 1 if node.netmap is not None else 0)
        connected.add_metric(["derp"], 1 if node.derp_connected else 0)
        yield connected
        netmap = node.netmap
        peers = GaugeMetricFamily(
            f"{PREFIX}_tailnet_peers",
            "Peers in this node's map that could ask it over disco (their disco key known)",
        )
        peers.add_metric(
            [], sum(p.disco_key is not None for p in netmap.peers.values()) if netmap else 0
        )
        yield peers
        clients = GaugeMetricFamily(
            f"{PREFIX}_tailnet_relay_clients",
            "Peers the control server's policy lets ask this relay for endpoints",
        )
        clients.add_metric([], len(netmap.relay_clients()) if netmap else 0)
        yield clients
