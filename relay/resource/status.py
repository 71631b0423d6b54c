"""RelayEndpoint status, as the operator and the relays write it. Pure functions.

The operator writes the allocation; a relay writes its endpoints' live state
and their expiry. Both build the status here, so the two halves agree.

Conditions follow the Kubernetes API conventions: one entry per type, status
"True"/"False"/"Unknown", a CamelCase reason, a human message, the
metadata.generation it was written at (``observedGeneration``), and a
lastTransitionTime that moves only when the status does.

Three conditions: ``Allocated`` and ``Ready`` (the operator's, and the
relay's on expiry), ``Bound`` (the relay's, and the operator's "waiting" on
allocation). ``Ready`` follows from the phase, and every builder that sets the
phase sets it in the same patch: True in Allocated and Bound (reason the
phase), False in Pending (reason why: NoRelayAvailable, PairInUse, RelayDead,
RelayRekeyed) and Expired. So the two writers never disagree on it: the relay
moving an endpoint from Allocated to Bound keeps Ready True, and its
lastTransitionTime with it.

``serverDiscoShort`` and ``clientsBound`` exist for ``kubectl get rep -o wide``
(a printer column is a JSONPath, which cannot cut a string or count).
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
    READY_CONDITION,
    REALLOCATE_ANNOTATION,
)
from relay.store import Allocation, RelayRecord

SHORT_DISCO_HEX = 12
"""Hex digits of ``serverDisco`` in ``serverDiscoShort`` (48 bits: unique across a fleet)."""


def short_disco(key: str) -> str:
    """The first hex digits of a disco key (``discokey:0123…`` gives ``0123…``)."""
    return key.removeprefix("discokey:")[:SHORT_DISCO_HEX]


def clients_bound(bound: int, total: int = 2) -> str:
    """``status.clientsBound``: how many of the endpoint's peers are bound, e.g. "1/2"."""
    return f"{bound}/{total}"


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
    where = relay.addr_ports[0] if relay.addr_ports else "no address"
    conditions = set_condition(
        conditions,
        READY_CONDITION,
        "True",
        ALLOCATED,
        f"VNI {allocation.vni} on relay {relay.name} at {where}; waiting for both peers to bind",
        generation=generation,
        now=now,
    )
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
        "serverDiscoShort": short_disco(str(relay.server_disco)),
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
        "clientsBound": clients_bound(0, len(allocation.disco_keys)),
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
    """What a relay reports for an endpoint it serves: each peer's state, and Bound or not.

    Ready stays True either way (the endpoint is allocated on a live relay): only its
    reason and message follow the phase, so its lastTransitionTime stays put."""
    allocation = endpoint.allocation
    if endpoint.bound:
        bound = ("True", BOUND, "both peers bound; relaying")
        ready = ("True", BOUND, f"VNI {allocation.vni} on relay {allocation.relay}; relaying")
    else:
        waiting = [c.handshake.label for c in endpoint.clients]
        bound = ("False", "WaitingForPeers", f"handshakes: {waiting[0]}, {waiting[1]}")
        ready = (
            "True",
            ALLOCATED,
            f"VNI {allocation.vni} on relay {allocation.relay}; waiting for both peers to bind",
        )
    conditions = set_condition(conditions, READY_CONDITION, *ready, generation=generation, now=now)
    return {
        "phase": BOUND if endpoint.bound else ALLOCATED,
        "clients": [
            client_status(key, client)
            for key, client in zip(allocation.disco_keys, endpoint.clients, strict=True)
        ],
        "clientsBound": clients_bound(
            sum(c.handshake.label == "Bound" for c in endpoint.clients), len(endpoint.clients)
        ),
        "observedGeneration": generation,
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
    conditions = set_condition(
        conditions, READY_CONDITION, "False", "Expired", message, generation=generation, now=now
    )
    return {
        "phase": EXPIRED,
        "clientsBound": clients_bound(0),
        "observedGeneration": generation,
        "conditions": conditions,
    }


def pending_status(
    reason: str,
    message: str,
    *,
    generation: int,
    now: float,
    conditions: list[dict[str, Any]] | None = None,
    ready_reason: str | None = None,
    ready_message: str | None = None,
) -> dict[str, Any]:
    """The status of an endpoint still waiting for an allocation (e.g. NoRelayAvailable).

    Ready is False with the same reason and message, unless ``ready_reason`` says more
    (RelayDead: the relay it was on died, and none is left to place it on)."""
    conditions = set_condition(
        conditions,
        READY_CONDITION,
        "False",
        ready_reason or reason,
        ready_message or message,
        generation=generation,
        now=now,
    )
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


def missing_status(status: dict[str, Any], *, generation: int, now: float) -> dict[str, Any] | None:
    """What a status written before ``Ready``, ``serverDiscoShort`` and ``clientsBound``
    existed lacks, derived from what it has; None when it lacks nothing (the usual case:
    no write). The operator adds it when it resumes a resource that needs nothing else."""
    patch: dict[str, Any] = {}
    conditions = status.get("conditions") or []
    phase = status.get("phase")
    if phase in (ALLOCATED, BOUND) and not any(
        c.get("type") == READY_CONDITION for c in conditions
    ):
        message = f"VNI {status.get('vni')} on relay {status.get('relay')}"
        patch["conditions"] = set_condition(
            conditions, READY_CONDITION, "True", phase, message, generation=generation, now=now
        )
    if status.get("serverDisco") and "serverDiscoShort" not in status:
        patch["serverDiscoShort"] = short_disco(status["serverDisco"])
    if phase in (ALLOCATED, BOUND) and "clientsBound" not in status:
        clients = status.get("clients") or []
        bound = sum(c.get("handshake") == "Bound" for c in clients)
        patch["clientsBound"] = clients_bound(bound, len(clients) or 2)
    return patch or None
