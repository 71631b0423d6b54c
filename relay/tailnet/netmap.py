"""A node's view of its tailnet, built from the control server's map messages, sans I/O.

The map poll (:mod:`relay.tailnet.control`) brings a first full map and then
deltas. :class:`NetMap` applies them in the order and with the rules of
tailscale.com v1.102.5 (``controlclient/map.go``, ``updateStateFromResponse``
and ``updatePeersStateFromResponse``) and keeps only what a relay needs:

- our own node (its addresses, home DERP, capabilities);
- the DERP map (regions and their nodes: host, IPs, DERP and STUN ports);
- the peers: node key, disco key, addresses, home DERP, capability version,
  CapMap, online state;
- the packet filter's capability grants, from which :meth:`NetMap.capabilities`
  tells what a peer may ask of us. A peer may ask a relay for an endpoint
  when the filter grants it ``tailscale.com/cap/relay`` toward the relay's
  address, exactly as ``nodeHasCap`` in ``wgengine/magicsock/magicsock.go``
  decides (the src's and dst's first single addresses of the same family).
  Headscale also sends the companion rule granting the relay
  ``tailscale.com/cap/relay-target`` toward the peer; clients use that one to
  find relays, a relay does not need it.

Ignored (a relay carries no tailnet IP traffic and serves no DNS or SSH):
the packet filter's port rules and ``cap:`` sources, DNS, SSH policy, user
profiles, domain, health and display messages, TKA, ping requests, the
control dial plan, ``PeerSeenChange``/``LastSeen``, key signatures and expiry.
A new poll starts a new :class:`NetMap`: its first message is a full map.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.protocol.keys import DiscoPublicKey, InvalidKey
from relay.tailnet.control_messages import ControlProtocolError
from relay.tailnet.nodekeys import NodePublicKey

CAP_RELAY = "tailscale.com/cap/relay"
"""Granted to a peer toward a relay: the peer may ask the relay to allocate endpoints."""
CAP_RELAY_TARGET = "tailscale.com/cap/relay-target"
"""The companion grant: the relay may allocate endpoints for the peer (what clients look at)."""
DERP_MAGIC_IP = "127.3.3.40"
"""Old servers write a node's home DERP region as the port of this address (``DERP``)."""
DEFAULT_DERP_PORT = 443
DEFAULT_STUN_PORT = 3478

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CapMap = Mapping[str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Node:
    """A node of the tailnet (ours or a peer) as far as a relay cares."""

    id: int
    key: NodePublicKey
    disco_key: DiscoPublicKey | None
    addresses: tuple[IPInterface, ...]
    name: str = ""
    hostname: str = ""
    stable_id: str = ""
    endpoints: tuple[str, ...] = ()
    home_derp: int = 0
    cap: int = 0
    """The node's capability version."""
    cap_map: CapMap = field(default_factory=dict)
    """Node capabilities (``CapMap``, with ``Capabilities`` folded in for our own node)."""
    online: bool | None = None
    tags: tuple[str, ...] = ()
    peer_relay: bool = False
    """``Hostinfo.PeerRelay``: the node says it serves as a peer relay."""
    unsigned_peer_api_only: bool = False

    def single_addresses(self) -> list[IPAddress]:
        """The node's own addresses (the /32 and /128 ones), in the server's order."""
        return [a.ip for a in self.addresses if a.network.prefixlen == a.max_prefixlen]


@dataclass(frozen=True, slots=True)
class DerpNode:
    """One DERP server of a region. ``ipv4``/``ipv6`` empty: resolve ``host_name``."""

    name: str
    region_id: int
    host_name: str
    ipv4: str = ""
    ipv6: str = ""
    derp_port: int = DEFAULT_DERP_PORT
    stun_port: int = DEFAULT_STUN_PORT
    """-1: no STUN on this node."""
    stun_only: bool = False
    insecure_for_tests: bool = False
    """Skip TLS verification. Whether to speak plain HTTP is the client's own choice (the
    reference's TS_DEBUG_USE_DERP_HTTP); the map does not say."""
    can_port80: bool = False


@dataclass(frozen=True, slots=True)
class DerpRegion:
    region_id: int
    region_code: str
    region_name: str
    nodes: tuple[DerpNode, ...]
    avoid: bool = False
    no_measure_no_home: bool = False


@dataclass(frozen=True, slots=True)
class DerpMap:
    regions: Mapping[int, DerpRegion]
    omit_default_regions: bool = False


@dataclass(frozen=True, slots=True)
class CapGrant:
    destinations: tuple[IPNetwork, ...]
    cap_map: CapMap


@dataclass(frozen=True, slots=True)
class FilterRule:
    """The part of a packet filter rule a relay uses: who (sources) gets what (grants)."""

    sources: tuple[IPNetwork, ...]
    grants: tuple[CapGrant, ...]


@dataclass(frozen=True, slots=True)
class Changes:
    """What one map message changed, so that the caller can react only to that."""

    self_node: bool = False
    derp_map: bool = False
    packet_filter: bool = False
    peers_full: bool = False
    peers_added: tuple[int, ...] = ()
    peers_changed: tuple[int, ...] = ()
    peers_removed: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


class NetMap:
    """The state of one map poll, updated by :meth:`apply` with each of its messages."""

    def __init__(self) -> None:
        self.self_node: Node | None = None
        self.derp_map: DerpMap | None = None
        self.peers: dict[int, Node] = {}
        self.session_handle = ""
        self._named_filters: dict[str, tuple[FilterRule, ...]] = {}
        self.filter_rules: tuple[FilterRule, ...] = ()
        """The concatenation of the named packet filters, in name order."""
        self.messages = 0

    def apply(self, message: Mapping[str, Any]) -> Changes:
        """Apply one MapResponse (a parsed JSON object); keep-alives change nothing.

        Raises :class:`ControlProtocolError` when a part it uses is malformed;
        the state is then as before that message only if the error came
        before any change (treat it as a broken stream and poll anew).
        """
        self.messages += 1
        if handle := message.get("MapSessionHandle"):
            self.session_handle = str(handle)
        changes: dict[str, Any] = self._apply_peers(message)
        if (node := message.get("Node")) is not None:
            self.self_node = parse_node(node, own=True)
            changes["self_node"] = True
        if (derp_map := message.get("DERPMap")) is not None:
            self.derp_map = _merge_derp_map(self.derp_map, derp_map)
            changes["derp_map"] = True
        if self._apply_filters(message):
            changes["packet_filter"] = True
        return Changes(**changes)

    def _apply_peers(self, message: Mapping[str, Any]) -> dict[str, Any]:
        peers = message.get("Peers")
        if peers:
            # Not delta encoded: the list replaces every peer, and other delta fields are moot.
            new = {node.id: node for node in (parse_node(p) for p in peers)}
            self.peers = new
            return {"peers_full": True}
        removed, added, changed = [], [], []
        for node_id in message.get("PeersRemoved") or ():
            if self.peers.pop(int(node_id), None) is not None:
                removed.append(int(node_id))
        for raw in message.get("PeersChanged") or ():
            node = parse_node(raw)
            (changed if node.id in self.peers else added).append(node.id)
            self.peers[node.id] = node
        for node_id, online in (message.get("OnlineChange") or {}).items():
            if (peer := self.peers.get(int(node_id))) is not None:
                self.peers[peer.id] = dataclasses.replace(peer, online=bool(online))
                changed.append(peer.id)
        for patch in message.get("PeersChangedPatch") or ():
            node_id = int(patch.get("NodeID", 0))
            if (peer := self.peers.get(node_id)) is not None:
                self.peers[node_id] = _patch(peer, patch)
                changed.append(node_id)
        return {
            "peers_added": tuple(added),
            "peers_changed": tuple(dict.fromkeys(changed)),
            "peers_removed": tuple(removed),
        }

    def _apply_filters(self, message: Mapping[str, Any]) -> bool:
        touched = False
        if (legacy := message.get("PacketFilter")) is not None:
            touched = True
            self._named_filters["base"] = _parse_rules(legacy)
        if (named := message.get("PacketFilters")) is not None:
            touched = True
            if "*" in named and named["*"] is None:
                self._named_filters.clear()
            for name, rules in named.items():
                if name == "*":
                    continue
                if rules is None:
                    self._named_filters.pop(name, None)
                else:
                    self._named_filters[name] = _parse_rules(rules)
        if touched:
            self.filter_rules = tuple(
                rule for name in sorted(self._named_filters) for rule in self._named_filters[name]
            )
        return touched

    # What a relay asks of the map.

    def peer_by_key(self, key: NodePublicKey) -> Node | None:
        return next((p for p in self.peers.values() if p.key == key), None)

    def peer_by_disco(self, disco_key: DiscoPublicKey) -> Node | None:
        return next((p for p in self.peers.values() if p.disco_key == disco_key), None)

    def capabilities(self, source: Node, destination: Node) -> dict[str, list[Any]]:
        """The peer capabilities the packet filter grants ``source`` toward ``destination``,
        with their values, compared on their first single addresses of the same family."""
        if source.unsigned_peer_api_only:
            return {}
        for src in source.single_addresses():
            for dst in destination.single_addresses():
                if src.version == dst.version:
                    return self._caps_with_values(src, dst)
        return {}

    def granted(self, peer: Node, capability: str = CAP_RELAY) -> bool:
        """Whether ``peer`` holds ``capability`` toward our node."""
        if self.self_node is None:
            return False
        return capability in self.capabilities(peer, self.self_node)

    def relay_clients(self) -> list[Node]:
        """The peers that may ask us (a relay) to allocate endpoints."""
        return [peer for peer in self.peers.values() if self.granted(peer, CAP_RELAY)]

    def _caps_with_values(self, src: IPAddress, dst: IPAddress) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for rule in self.filter_rules:
            if not any(src in network for network in rule.sources):
                continue
            for grant in rule.grants:
                if any(dst in network for network in grant.destinations):
                    for capability, values in grant.cap_map.items():
                        out.setdefault(capability, []).extend(values)
        return out


def choose_home_derp(derp_map: DerpMap, current: int = 0) -> int:
    """Our home DERP region: the current one while the map still has it, else the lowest
    region that may be a home and has a DERP (not STUN-only) node; 0 when there is none.
    (The reference measures latency to choose; a relay in a test bed or a one-region
    tailnet has one choice.)"""
    usable = sorted(
        region_id
        for region_id, region in derp_map.regions.items()
        if not region.no_measure_no_home and any(not n.stun_only for n in region.nodes)
    )
    if current in usable:
        return current
    return usable[0] if usable else 0


def parse_node(raw: Mapping[str, Any], *, own: bool = False) -> Node:
    """A tailcfg.Node; for our own node (``own``) ``Capabilities`` join the CapMap."""
    try:
        key = NodePublicKey.parse(raw["Key"])
        disco = _disco_key(raw.get("DiscoKey"))
        addresses = tuple(ipaddress.ip_interface(a) for a in raw.get("Addresses") or ())
        cap_map = _cap_map(raw.get("CapMap"))
        if own:
            for capability in raw.get("Capabilities") or ():
                cap_map.setdefault(str(capability), ())
        hostinfo = raw.get("Hostinfo") or {}
        return Node(
            id=int(raw["ID"]),
            key=key,
            disco_key=disco,
            addresses=addresses,
            name=str(raw.get("Name") or ""),
            hostname=str(hostinfo.get("Hostname") or ""),
            stable_id=str(raw.get("StableID") or ""),
            endpoints=tuple(str(e) for e in raw.get("Endpoints") or ()),
            home_derp=_home_derp(raw),
            cap=int(raw.get("Cap") or 0),
            cap_map=cap_map,
            online=raw.get("Online"),
            tags=tuple(str(t) for t in raw.get("Tags") or ()),
            peer_relay=bool(hostinfo.get("PeerRelay")),
            unsigned_peer_api_only=bool(raw.get("UnsignedPeerAPIOnly")),
        )
    except (KeyError, TypeError, ValueError, InvalidKey) as error:
        raise ControlProtocolError(f"malformed node in the map: {error!r}") from None


def _patch(peer: Node, patch: Mapping[str, Any]) -> Node:
    """A PeerChange applied as the reference does: zero and absent fields change nothing."""
    try:
        changes: dict[str, Any] = {}
        if region := patch.get("DERPRegion"):
            changes["home_derp"] = int(region)
        if cap := patch.get("Cap"):
            changes["cap"] = int(cap)
        if (endpoints := patch.get("Endpoints")) is not None:
            changes["endpoints"] = tuple(str(e) for e in endpoints)
        if (key := patch.get("Key")) is not None:
            changes["key"] = NodePublicKey.parse(key)
        if (disco := patch.get("DiscoKey")) is not None:
            changes["disco_key"] = _disco_key(disco)
        if (online := patch.get("Online")) is not None:
            changes["online"] = bool(online)
        if (cap_map := patch.get("CapMap")) is not None:
            changes["cap_map"] = _cap_map(cap_map)
    except (TypeError, ValueError, InvalidKey) as error:
        raise ControlProtocolError(f"malformed peer patch: {error!r}") from None
    return dataclasses.replace(peer, **changes)


def _disco_key(text: Any) -> DiscoPublicKey | None:
    if not text:
        return None
    key = DiscoPublicKey.parse(text)
    return None if key.raw == bytes(len(key.raw)) else key


def _home_derp(raw: Mapping[str, Any]) -> int:
    if home := raw.get("HomeDERP"):
        return int(home)
    legacy = str(raw.get("DERP") or "")
    host, _, port = legacy.rpartition(":")
    return int(port) if host == DERP_MAGIC_IP and port.isdigit() else 0


def _cap_map(raw: Any) -> dict[str, tuple[Any, ...]]:
    if not raw:
        return {}
    return {str(name): tuple(values or ()) for name, values in raw.items()}


def _parse_rules(raw: Iterable[Mapping[str, Any]] | None) -> tuple[FilterRule, ...]:
    rules = []
    try:
        for rule in raw or ():
            grants = tuple(_parse_grant(g) for g in rule.get("CapGrant") or ())
            if not grants:
                continue  # a port rule: nothing a relay uses
            sources = tuple(n for s in rule.get("SrcIPs") or () for n in parse_ip_set(s))
            rules.append(FilterRule(sources, grants))
    except (AttributeError, TypeError, ValueError) as error:
        raise ControlProtocolError(f"malformed packet filter: {error!r}") from None
    return tuple(rules)


def _parse_grant(raw: Mapping[str, Any]) -> CapGrant:
    destinations = tuple(ipaddress.ip_network(d) for d in raw.get("Dsts") or ())
    cap_map = _cap_map(raw.get("CapMap"))
    for capability in raw.get("Caps") or ():  # the older form: capabilities without values
        cap_map.setdefault(str(capability), ())
    return CapGrant(destinations, cap_map)


def parse_ip_set(text: str) -> list[IPNetwork]:
    """A filter source as the reference reads it: ``*``, an address, a prefix (no host bits),
    or a range ``a-b``; ``cap:`` sources (node capabilities) match no address here."""
    if text == "*":
        return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    if text.startswith("cap:"):
        return []
    if "/" in text:
        return [ipaddress.ip_network(text, strict=True)]
    if text.count("-") == 1:
        first, last = (ipaddress.ip_address(part) for part in text.split("-"))
        if first.version != last.version or first > last:
            raise ValueError(f"invalid IP range {text!r}")
        return list(ipaddress.summarize_address_range(first, last))  # type: ignore[arg-type]
    return [ipaddress.ip_network(ipaddress.ip_address(text))]


def _merge_derp_map(previous: DerpMap | None, raw: Mapping[str, Any]) -> DerpMap:
    """A new DERP map; without ``Regions`` it keeps the previous regions (as the reference)."""
    try:
        regions_raw = raw.get("Regions")
        if regions_raw is None and previous is not None:
            return previous
        regions = {}
        for region_id, region in (regions_raw or {}).items():
            if region is None:  # Headscale was seen to send these; the reference drops them
                continue
            regions[int(region_id)] = _parse_region(region)
        return DerpMap(regions, bool(raw.get("OmitDefaultRegions")))
    except (AttributeError, TypeError, ValueError) as error:
        raise ControlProtocolError(f"malformed DERP map: {error!r}") from None


def _parse_region(raw: Mapping[str, Any]) -> DerpRegion:
    nodes = tuple(
        DerpNode(
            name=str(n.get("Name") or ""),
            region_id=int(n.get("RegionID") or 0),
            host_name=str(n.get("HostName") or ""),
            ipv4=str(n.get("IPv4") or ""),
            ipv6=str(n.get("IPv6") or ""),
            derp_port=int(n.get("DERPPort") or DEFAULT_DERP_PORT),
            stun_port=int(n.get("STUNPort") or DEFAULT_STUN_PORT),
            stun_only=bool(n.get("STUNOnly")),
            insecure_for_tests=bool(n.get("InsecureForTests")),
            can_port80=bool(n.get("CanPort80")),
        )
        for n in raw.get("Nodes") or ()
    )
    return DerpRegion(
        region_id=int(raw["RegionID"]),
        region_code=str(raw.get("RegionCode") or ""),
        region_name=str(raw.get("RegionName") or ""),
        nodes=nodes,
        avoid=bool(raw.get("Avoid")),
        no_measure_no_home=bool(raw.get("NoMeasureNoHome")),
    )
