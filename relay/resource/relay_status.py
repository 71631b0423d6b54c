"""A Relay object's status, built from the relay's registry record (pure).

The operator writes it (relay_operator/relay_objects.py) and ``relayfleet status``
reads it back, so both agree on every field here. :func:`identity` is what, when it
changes, is written at once; the rest (endpoints in use, the heartbeat's time) is
written at most once per refresh interval.
"""

from __future__ import annotations

from typing import Any

from relay.resource.definition import (
    HEARTBEAT_CURRENT,
    HEARTBEAT_STOPPED,
    READY_CONDITION,
    STATE_ALIVE,
    STATE_DEAD,
)
from relay.resource.status import set_condition, short_disco, timestamp
from relay.store import RelayRecord


def relay_status(
    record: RelayRecord, previous: dict[str, Any] | None, *, generation: int, now: float
) -> dict[str, Any]:
    """The status of ``record``'s Relay; ``previous`` (the status as last written) keeps the
    Ready condition's transition time while its status stays."""
    heartbeat = timestamp(record.heartbeat_at)
    if record.alive:
        ready = ("True", HEARTBEAT_CURRENT, "The relay's heartbeat in the registry is current.")
    else:
        ready = (
            "False",
            HEARTBEAT_STOPPED,
            f"No heartbeat since {heartbeat}: its endpoints are placed on other relays.",
        )
    status: dict[str, Any] = {
        "state": STATE_ALIVE if record.alive else STATE_DEAD,
        "endpoints": record.load,
        "capacity": record.capacity,
        "addrPorts": list(record.addr_ports),
        "serverDisco": str(record.server_disco),
        "serverDiscoShort": short_disco(str(record.server_disco)),
        "version": record.version,
        "lastHeartbeatTime": heartbeat,
        "metricsAddress": record.metrics,
        "pod": record.pod,
    }
    status["conditions"] = set_condition(
        (previous or {}).get("conditions"),
        READY_CONDITION,
        *ready,
        generation=generation,
        now=now,
    )
    return status


IDENTITY_FIELDS = (
    "state", "capacity", "addrPorts", "serverDisco", "version", "metricsAddress", "pod"
)  # fmt: skip
"""The fields whose change is written at the next check, not at the next refresh."""


def identity(status: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_hashable(status.get(field)) for field in IDENTITY_FIELDS)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
