"""The kernel fast path's nftables rules as text, and parsers of what ``nft`` and ``ip`` print.

Pure functions only: the shell that runs ``nft -f -`` and ``ip route get``
is relay/fastpath/kernel.py. One table per relay, named for its UDP port so that
relays sharing a network namespace keep apart::

    table netdev relayfleet_<port>
      map legs4, legs6          VNI . client ip . client port of every bound
                                client -> jump to its leg's chain; each
                                element counts the packets it matched
      chain in_<n>              one per network device, at its ingress hook:
                                UDP to the relay's port with the Geneve control
                                bit clear (docs/protocol.md "Data packets") -> look the leg up
      chain e<vni>_<lamport>_<i>   one per client i of a bound endpoint, one
                                rule: rewrite source and destination to the
                                other client, forward out of its device

One lookup per packet decides, so a packet runs one short rule after it.
The counters live in the maps rather than in named counters because ``nft``
lists a map without reading every chain: at 10 000 endpoints, reading the maps
takes about 0.5 s, reading named counters 1.0 s.

Whatever no rule takes (control packets, unknown VNIs, endpoints not yet
bound, any other source, devices not hooked) goes on to the socket and is
handled in user space exactly as without the fast path.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

TABLE_PREFIX = "relayfleet_"
LEG_MAPS = {"ip": "legs4", "ip6": "legs6"}
_VNI_FIELD = "@th,96,24"  # Geneve bytes 4-6, after the 8-byte UDP header
_DATA_PACKET = "@th,72,1 0"  # Geneve byte 1, top bit (O, control) clear
_HEADER_BYTES = {"ip": 20 + 8, "ip6": 40 + 8}


@dataclass(frozen=True)
class Route:
    """How the relay reaches one client: out of ``device`` via ``next_hop``, from ``source``."""

    device: str
    source: str
    next_hop: str


@dataclass(frozen=True)
class Leg:
    """One direction of a bound endpoint: packets from ``sender`` go to ``receiver``."""

    sender: tuple[str, int]
    receiver: tuple[str, int]
    route: Route


def table_name(port: int, worker: int | None = None) -> str:
    """The relay's table; each worker of a relay of several (relay/workers.py) has its own,
    holding the endpoints it owns, all hooked at the same devices."""
    return f"{TABLE_PREFIX}{port}" if worker is None else f"{TABLE_PREFIX}{port}_w{worker}"


def family(ip: str) -> str:
    """nftables' name of an address's family: ``ip`` or ``ip6``."""
    return "ip" if ipaddress.ip_address(ip).version == 4 else "ip6"


def header_bytes(ip: str) -> int:
    """IP and UDP header bytes that a kernel counter counts on top of each datagram."""
    return _HEADER_BYTES[family(ip)]


def chain_name(vni: int, lamport_id: int, index: int) -> str:
    """The chain of client ``index``'s leg of an endpoint."""
    return f"e{vni}_{lamport_id}_{index}"


def create_table(table: str) -> str:
    """A fresh, empty table: one left by an earlier process with this name is replaced."""
    return (
        f"add table netdev {table}\n"
        f"delete table netdev {table}\n"
        f"add table netdev {table}\n"
        + "".join(
            f"add map netdev {table} {legs} "
            f"{{ typeof {_VNI_FIELD} . {name} saddr . udp sport : verdict ; counter ; }}\n"
            for name, legs in LEG_MAPS.items()
        )
    )


def delete_table(table: str) -> str:
    return f"delete table netdev {table}\n"


def hook_device(table: str, chain: str, device: str, port: int, listen: str | None) -> str:
    """Send the relay's data packets arriving on ``device`` to the VNI map.

    ``listen`` narrows the match to one destination address (None: any).
    """
    lines = [
        f'add chain netdev {table} {chain} {{ type filter hook ingress device "{device}" '
        f"priority 0 ; policy accept ; }}"
    ]
    for name in ("ip", "ip6"):
        if listen is not None and family(listen) != name:
            continue
        to = f"{name} daddr {listen} " if listen is not None else ""
        lines.append(
            f"add rule netdev {table} {chain} meta protocol {name} {to}udp dport {port} "
            f"{_DATA_PACKET} {_VNI_FIELD} . {name} saddr . udp sport vmap @{LEG_MAPS[name]}"
        )
    return "\n".join(lines) + "\n"


def _leg_element(vni: int, sender: tuple[str, int], value: str = "") -> str:
    return f"{LEG_MAPS[family(sender[0])]} {{ {vni} . {sender[0]} . {sender[1]}{value} }}"


def install_endpoint(
    table: str, vni: int, lamport_id: int, port: int, legs: tuple[Leg, Leg]
) -> str:
    """Relay one bound endpoint in the kernel: a chain per client, then its map elements."""
    lines = []
    for index, leg in enumerate(legs):
        name = family(leg.sender[0])
        chain = chain_name(vni, lamport_id, index)
        lines.append(f"add chain netdev {table} {chain}")
        lines.append(
            f"add rule netdev {table} {chain} "
            f"{name} saddr set {leg.route.source} udp sport set {port} "
            f"{name} daddr set {leg.receiver[0]} udp dport set {leg.receiver[1]} "
            f'fwd {name} to {leg.route.next_hop} device "{leg.route.device}"'
        )
    for index, leg in enumerate(legs):
        chain = chain_name(vni, lamport_id, index)
        element = _leg_element(vni, leg.sender, f" counter : jump {chain}")
        lines.append(f"add element netdev {table} {element}")
    return "\n".join(lines) + "\n"


def remove_endpoint(
    table: str, vni: int, lamport_id: int, senders: tuple[tuple[str, int], tuple[str, int]]
) -> str:
    """Undo :func:`install_endpoint`; the endpoint's packets go to user space again."""
    lines = [f"delete element netdev {table} {_leg_element(vni, sender)}" for sender in senders]
    lines += [f"delete chain netdev {table} {chain_name(vni, lamport_id, i)}" for i in (0, 1)]
    return "\n".join(lines) + "\n"


def parse_legs(text: str, table: str) -> dict[tuple[int, str, int], tuple[int, int]]:
    """``{(vni, client ip, client port): (packets, bytes)}`` of ``table``'s leg maps, from
    ``nft -j list maps netdev`` (which lists every table's maps).

    Each map element is ``[key with its counter, verdict]``.
    """
    legs: dict[tuple[int, str, int], tuple[int, int]] = {}
    for item in json.loads(text).get("nftables", []):
        found = item.get("map") or {}
        if found.get("table") != table or found.get("name") not in LEG_MAPS.values():
            continue
        for element in found.get("elem", ()):
            key = element[0] if isinstance(element, list) and element else None
            entry = key.get("elem") if isinstance(key, dict) else None
            if not entry or "counter" not in entry:
                continue
            vni, ip, port = entry["val"]["concat"]
            counter = entry["counter"]
            legs[int(vni), str(ip), int(port)] = (int(counter["packets"]), int(counter["bytes"]))
    return legs


def parse_routes(text: str) -> dict[str, Route]:
    """``{destination: Route}`` from ``ip -j -batch -`` running ``route get`` lines.

    Each successful lookup prints one JSON array; a failed one prints nothing,
    so its destination is simply missing.
    """
    routes: dict[str, Route] = {}
    decoder = json.JSONDecoder()
    position = 0
    text = text.strip()
    while position < len(text):
        answer, position = decoder.raw_decode(text, position)
        while position < len(text) and text[position].isspace():
            position += 1
        for entry in answer:
            destination, device, source = entry.get("dst"), entry.get("dev"), entry.get("prefsrc")
            if destination and device and source:
                routes[destination] = Route(device, source, entry.get("gateway", destination))
    return routes
