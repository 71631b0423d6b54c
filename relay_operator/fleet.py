"""``relayfleet status``: the fleet at a glance, from Redis (relays) and Kubernetes (endpoints).

Gathering is async and returns plain data, so ``-o json`` prints it as it
is; :func:`format_fleet` is the terminal view of the same data.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from relay.resource.definition import GROUP, PENDING, PHASES, PLURAL, VERSION
from relay.store import Store


async def list_endpoints(kubeconfig: str | None) -> list[dict[str, Any]]:
    """Every RelayEndpoint in the cluster, through the kubernetes client."""
    from kubernetes import client

    from relay.resource.client import api_client

    api = client.CustomObjectsApi(api_client(kubeconfig))
    listing = await asyncio.to_thread(
        api.list_custom_object_for_all_namespaces, GROUP, VERSION, PLURAL
    )
    return listing["items"]


def summarise_endpoints(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of RelayEndpoints by phase and by relay, and of their peers by protocol version
    (``unknown`` until a peer has sent a bind message)."""
    by_phase: Counter[str] = Counter()
    by_relay: dict[str, Counter[str]] = {}
    clients: Counter[str] = Counter()
    for item in items:
        status = item.get("status") or {}
        phase = status.get("phase", PENDING)
        by_phase[phase] += 1
        if status.get("relay"):
            by_relay.setdefault(status["relay"], Counter())[phase] += 1
        for client in status.get("clients") or ():
            version = client.get("protocolVersion")
            clients["unknown" if version is None else f"v{version}"] += 1
    return {
        "total": len(items),
        "byPhase": {phase: by_phase.get(phase, 0) for phase in PHASES},
        "byRelay": {relay: dict(counts) for relay, counts in sorted(by_relay.items())},
        "clientsByProtocol": {v: clients.get(v, 0) for v in ("v0", "v1", "unknown")},
    }


def endpoint_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each RelayEndpoint with its peers as its relay reported them: handshake, protocol
    version and (version 1) generation, sorted by namespace and name."""
    rows = []
    for item in items:
        meta, status = item["metadata"], item.get("status") or {}
        rows.append(
            {
                "namespace": meta.get("namespace", ""),
                "name": meta["name"],
                "phase": status.get("phase", PENDING),
                "relay": status.get("relay"),
                "vni": status.get("vni"),
                "clients": [
                    {
                        "discoKey": client.get("discoKey"),
                        "handshake": client.get("handshake"),
                        "protocolVersion": client.get("protocolVersion"),
                        "generation": client.get("generation"),
                    }
                    for client in status.get("clients") or ()
                ],
            }
        )
    return sorted(rows, key=lambda row: (row["namespace"], row["name"]))


def _peer(client: dict[str, Any]) -> str:
    version = client["protocolVersion"]
    text = f"{client['handshake'] or '?'} v{'?' if version is None else version}"
    return text + (f" gen {client['generation']}" if client["generation"] else "")


async def gather_fleet(
    store: Store, kubeconfig: str | None, now: float, each_endpoint: bool = False
) -> dict[str, Any]:
    """The registry's relays, and the RelayEndpoints by phase (or why they could not be read)."""
    relays = [
        {
            "name": r.name,
            "alive": r.alive,
            "load": r.load,
            "capacity": r.capacity,
            "addrPorts": list(r.addr_ports),
            "serverDisco": str(r.server_disco),
            "version": r.version,
            "heartbeatAgeSeconds": round(max(0.0, now - r.heartbeat_at), 1),
        }
        for r in await store.relays()
    ]
    fleet: dict[str, Any] = {"relays": relays}
    try:
        items = await list_endpoints(kubeconfig)
        fleet["endpoints"] = summarise_endpoints(items)
        if each_endpoint:
            fleet["endpoints"]["items"] = endpoint_rows(items)
    except Exception as exc:  # no cluster, no rights, no CRD: say so, show the relays anyway
        fleet["endpoints"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return fleet


def format_fleet(fleet: dict[str, Any]) -> str:
    rows = [("RELAY", "STATE", "LOAD", "CAPACITY", "HEARTBEAT", "ADDRESSES")]
    for relay in fleet["relays"]:
        rows.append(
            (
                relay["name"],
                "alive" if relay["alive"] else "dead",
                str(relay["load"]),
                str(relay["capacity"]),
                f"{relay['heartbeatAgeSeconds']}s ago",
                ", ".join(relay["addrPorts"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
             for row in rows]  # fmt: skip
    if len(rows) == 1:
        lines.append("(no relay registered)")
    endpoints = fleet["endpoints"]
    if "error" in endpoints:
        lines.append(f"\nENDPOINTS  unknown: {endpoints['error']}")
    else:
        phases = "  ".join(f"{phase} {n}" for phase, n in endpoints["byPhase"].items())
        lines.append(f"\nENDPOINTS  {phases}  (total {endpoints['total']})")
        versions = "  ".join(f"{v} {n}" for v, n in endpoints["clientsByProtocol"].items())
        lines.append(f"PEERS      by protocol: {versions}")
        for relay, counts in endpoints["byRelay"].items():
            detail = "  ".join(f"{phase} {n}" for phase, n in counts.items())
            lines.append(f"  {relay}: {detail}")
        for row in endpoints.get("items", ()):
            peers = ", ".join(_peer(client) for client in row["clients"]) or "-"
            where = f"{row['relay']} VNI {row['vni']}" if row["relay"] else "not placed"
            lines.append(f"  {row['namespace']}/{row['name']}  {row['phase']}  {where}  {peers}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
