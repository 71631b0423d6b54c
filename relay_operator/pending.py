"""RelayEndpoints waiting for an allocation, as the operator's metrics count them.

A RelayEndpoint waits while it has no phase yet (new, or its first attempts
failed without a status: no free VNI, the store unreachable) or is Pending
(Ready False: NoRelayAvailable, PairInUse, RelayDead, RelayRekeyed). The
``waiting`` part of the operator's kopf index (relay_operator/endpoint_index.py)
keeps one :data:`Waiting` entry per such resource, by the reason it waits; the metrics
(relay_operator/metrics.py) count them and the age of the oldest at scrape
time, for the alert on RelayEndpoints pending over a minute.

It waits since its Ready condition turned False (a resource Allocated once
and Pending again waits from then), or since its creation when it has none.

Only the active replica's view is current: kopf pauses a standby's watch
(peering), freezing its index. The active replica sees every waiting
resource at least every ``MAX_RETRY_DELAY`` (30 s), as kopf retries its
handler (each retry writes kopf's progress annotation, an event that
recomputes the entry), so an entry not seen for :data:`FRESH_FOR` is a
frozen one and is left out: a standby reports none.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relay.resource.definition import (
    NO_RELAY_AVAILABLE,
    PAIR_IN_USE,
    PENDING,
    READY_CONDITION,
    RELAY_DEAD,
    RELAY_REKEYED,
)

NEW = "New"
"""The reason of a resource without a phase: not placed yet."""

REASONS = (NEW, NO_RELAY_AVAILABLE, PAIR_IN_USE, RELAY_DEAD, RELAY_REKEYED)
"""The reasons always reported (as 0 when none waits for them), so their series exist."""

FRESH_FOR = 90.0
"""An entry not recomputed for this long is a standby's frozen view (three of kopf's longest
retry delays, 30 s)."""

Waiting = tuple[float, float]
"""A waiting resource: (since when it waits, when the entry was computed), seconds since the
epoch."""

PendingIndex = Mapping[str, Collection[Waiting]]
"""The index's ``waiting`` part: the waiting resources by reason."""


@dataclass(frozen=True)
class WaitingCount:
    """The resources waiting for one reason: how many, and how long the oldest has waited."""

    count: int = 0
    oldest_seconds: float = 0.0


def _seconds(text: Any) -> float | None:
    """Seconds since the epoch of a Kubernetes timestamp (``2026-01-02T03:04:05Z``)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def waiting_entry(
    status: Mapping[str, Any], meta: Mapping[str, Any], now: float
) -> dict[str, Waiting] | None:
    """``{reason: (since, now)}`` for a resource waiting for an allocation, else None."""
    phase = status.get("phase")
    created = _seconds(meta.get("creationTimestamp"))
    if phase is None:
        return {NEW: (created if created is not None else now, now)}
    if phase != PENDING:
        return None
    ready = next(
        (c for c in status.get("conditions") or () if c.get("type") == READY_CONDITION), {}
    )
    since = _seconds(ready.get("lastTransitionTime"))
    if since is None:
        since = created if created is not None else now
    return {ready.get("reason") or PENDING: (since, now)}


def count_waiting(index: PendingIndex, now: float) -> dict[str, WaitingCount]:
    """Per reason (every one of :data:`REASONS`, and any other seen), the fresh entries' count
    and the oldest one's age."""
    counts = {reason: WaitingCount() for reason in REASONS}
    for reason, entries in list(index.items()):
        fresh = [since for since, seen in list(entries) if now - seen <= FRESH_FOR]
        if fresh:
            counts[reason] = WaitingCount(len(fresh), max(0.0, now - min(fresh)))
        else:
            counts.setdefault(reason, WaitingCount())
    return counts
