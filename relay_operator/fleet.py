"""``relayfleet status``: the fleet at a glance, its relays and its RelayEndpoints by phase.

The relays come from the Relay objects the operator keeps (a kubeconfig is
enough), or, with ``--store``, from the registry in the fleet's Redis itself
(fresher: the objects' load and heartbeat time are refreshed about once a
minute). Gathering is async and returns plain data, so ``-o json`` prints it as
it is; :func:`format_fleet` is the terminal view of the same data.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

from relay.resource.definition import (
    GROUP,
    PENDING,
    PHASES,
    PLURAL,
    RELAY_PLURAL,
    STATE_ALIVE,
    VERSION,
)
from relay.resource.tailnet_endpoint import from_tailnet
from relay.store import RelayRecord, Store


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
    """Counts of RelayEndpoints by phase and by relay, of those a relay made for its tailnet's
    peers, and of their peers by protocol version (``unknown`` until a peer has sent a bind
    message)."""
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
        "fromTailnet": sum(from_tailnet(item) for item in items),
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


def relay_from_record(record: RelayRecord, now: float) -> dict[str, Any]:
    """A relay as the registry has it, in the shape ``status`` prints."""
    return {
        "name": record.name,
        "alive": record.alive,
        "load": record.load,
        "capacity": record.capacity,
        "addrPorts": list(record.addr_ports),
        "serverDisco": str(record.server_disco),
        "version": record.version,
        "heartbeatAgeSeconds": round(max(0.0, now - record.heartbeat_at), 1),
        "metricsAddress": record.metrics,
        "pod": record.pod,
    }


def relay_from_object(item: dict[str, Any], now: float) -> dict[str, Any]:
    """A relay as its Relay object has it, in the same shape."""
    status = item.get("status") or {}
    heartbeat = status.get("lastHeartbeatTime")
    age = None
    if heartbeat:
        at = datetime.fromisoformat(heartbeat.replace("Z", "+00:00")).timestamp()
        age = round(max(0.0, now - at), 1)
    return {
        "name": item["metadata"]["name"],
        "alive": status.get("state") == STATE_ALIVE,
        "load": status.get("endpoints", 0),
        "capacity": status.get("capacity", 0),
        "addrPorts": list(status.get("addrPorts") or ()),
        "serverDisco": status.get("serverDisco", ""),
        "version": status.get("version", ""),
        "heartbeatAgeSeconds": age,
        "metricsAddress": status.get("metricsAddress"),
        "pod": status.get("pod"),
    }


async def list_relay_objects(kubeconfig: str | None) -> list[dict[str, Any]]:
    """Every Relay object, through the kubernetes client."""
    from kubernetes import client

    from relay.resource.client import api_client

    api = client.CustomObjectsApi(api_client(kubeconfig))
    listing = await asyncio.to_thread(api.list_cluster_custom_object, GROUP, VERSION, RELAY_PLURAL)
    return listing["items"]


async def gather_relays(store: Store | None, kubeconfig: str | None, now: float) -> dict[str, Any]:
    """``{"relays": [...], "relaysFrom": "store" | "kubernetes"}``: from the registry with a
    store, else from the Relay objects."""
    if store is not None:
        relays = [relay_from_record(r, now) for r in await store.relays()]
        return {"relays": relays, "relaysFrom": "store"}
    items = await list_relay_objects(kubeconfig)
    relays = sorted((relay_from_object(item, now) for item in items), key=lambda r: r["name"])
    return {"relays": relays, "relaysFrom": "kubernetes"}


async def gather_fleet(
    store: Store | None, kubeconfig: str | None, now: float, each_endpoint: bool = False
) -> dict[str, Any]:
    """The relays (see :func:`gather_relays`), and the RelayEndpoints by phase (or why they
    could not be read)."""
    fleet = await gather_relays(store, kubeconfig, now)
    try:
        items = await list_endpoints(kubeconfig)
        fleet["endpoints"] = summarise_endpoints(items)
        if each_endpoint:
            fleet["endpoints"]["items"] = endpoint_rows(items)
    except Exception as exc:  # no cluster, no rights, no CRD: say so, show the relays anyway
        fleet["endpoints"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return fleet


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds}s ago"


def format_fleet(fleet: dict[str, Any]) -> str:
    rows = [("RELAY", "STATE", "LOAD", "CAPACITY", "HEARTBEAT", "ADDRESSES")]
    for relay in fleet["relays"]:
        rows.append(
            (
                relay["name"],
                "alive" if relay["alive"] else "dead",
                str(relay["load"]),
                str(relay["capacity"]),
                _age(relay["heartbeatAgeSeconds"]),
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
        lines.append(
            f"\nENDPOINTS  {phases}  (total {endpoints['total']}, "
            f"{endpoints['fromTailnet']} from a tailnet)"
        )
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
