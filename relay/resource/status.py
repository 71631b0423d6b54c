"""RelayEndpoint status, as the operator and the relays write it. Pure functions.

The operator writes the allocation; a relay writes its endpoints' live state
and their expiry. Both build the status here, so the two halves agree.

Conditions follow the Kubernetes API conventions: one entry per type, status
"True"/"False"/"Unknown", a CamelCase reason, a human message, and a
lastTransitionTime that moves only when the status does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relay.protocol.addresses import format_address
from relay.protocol.durations import format_duration
from relay.resource.definition import (
    ALLOCATED,
    ALLOCATED_CONDITION,
    BOUND,
    BOUND_CONDITION,
    EXPIRED,
    PENDING,
    REALLOCATE_ANNOTATION,
)
from relay.store import Allocation, RelayRecord


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: float,
) -> list[dict[str, Any]]:
    """``conditions`` with the one of ``type_`` set; the others are kept as they are."""
    previous = next((c for c in conditions or () if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": timestamp(now) if changed else previous["lastTransitionTime"],
    }
    kept = [c for c in conditions or () if c.get("type") != type_]
    return sorted([*kept, condition], key=lambda c: c["type"])


def allocated_status(
    allocation: Allocation,
    relay: RelayRecord,
    *,
    bind_lifetime: float,
    steady_state_lifetime: float,
    generation: int,
    now: float,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status of a freshly allocated endpoint, waiting for its peers to bind."""
    conditions = set_condition(
        conditions,
        ALLOCATED_CONDITION,
        "True",
        "Allocated",
        f"VNI {allocation.vni} on relay {relay.name} (LamportID {allocation.lamport_id})",
        generation=generation,
        now=now,
    )
    conditions = set_condition(
        conditions,
        BOUND_CONDITION,
        "False",
        "WaitingForPeers",
        "waiting for both peers to bind",
        generation=generation,
        now=now,
    )
    return {
        "phase": ALLOCATED,
        "relay": relay.name,
        "serverDisco": str(relay.server_disco),
        "addrPorts": list(relay.addr_ports),
        "vni": allocation.vni,
        "lamportID": allocation.lamport_id,
        "bindLifetime": format_duration(bind_lifetime),
        "steadyStateLifetime": format_duration(steady_state_lifetime),
        "allocatedAt": timestamp(allocation.allocated_at),
        "clients": [
            {"discoKey": str(key), "handshake": "Init", "packets": 0, "bytes": 0}
            for key in allocation.disco_keys
        ],
        "observedGeneration": generation,
        "conditions": conditions,
    }


def client_status(key: object, client: Any) -> dict[str, Any]:
    """One peer's entry in ``status.clients``, from the relay core's ClientState."""
    entry: dict[str, Any] = {
        "discoKey": str(key),
        "handshake": client.handshake.label,
        "packets": client.packets,
        "bytes": client.bytes,
    }
    if client.version is not None:
        entry["protocolVersion"] = client.version
    generation = client.bound_generation or client.generation
    if generation:
        entry["generation"] = generation
    if client.addr is not None:
        entry["addr"] = format_address(client.addr)
    if client.last_seen is not None:
        entry["lastSeen"] = timestamp(client.last_seen)
    return entry


def live_status(
    endpoint: Any, *, generation: int, now: float, conditions: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """What a relay reports for an endpoint it serves: each peer's state, and Bound or not."""
    if endpoint.bound:
        bound = ("True", "Bound", "both peers bound; relaying")
    else:
        waiting = [c.handshake.label for c in endpoint.clients]
        bound = ("False", "WaitingForPeers", f"handshakes: {waiting[0]}, {waiting[1]}")
    return {
        "phase": BOUND if endpoint.bound else ALLOCATED,
        "clients": [
            client_status(key, client)
            for key, client in zip(endpoint.allocation.disco_keys, endpoint.clients, strict=True)
        ],
        "conditions": set_condition(
            conditions, BOUND_CONDITION, *bound, generation=generation, now=now
        ),
    }


def expired_status(
    lifetime: str, *, generation: int, now: float, conditions: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """An endpoint whose bind or steady-state lifetime ran out; its VNI is free again."""
    message = (
        f"the {lifetime} lifetime ran out; annotate {REALLOCATE_ANNOTATION} to allocate afresh"
    )
    conditions = set_condition(
        conditions, ALLOCATED_CONDITION, "False", "Expired", message, generation=generation, now=now
    )
    conditions = set_condition(
        conditions, BOUND_CONDITION, "False", "Expired", message, generation=generation, now=now
    )
    return {"phase": EXPIRED, "conditions": conditions}


def pending_status(
    reason: str,
    message: str,
    *,
    generation: int,
    now: float,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status of an endpoint still waiting for an allocation (e.g. NoRelayAvailable)."""
    return {
        "phase": PENDING,
        "observedGeneration": generation,
        "conditions": set_condition(
            conditions,
            ALLOCATED_CONDITION,
            "False",
            reason,
            message,
            generation=generation,
            now=now,
        ),
    }
