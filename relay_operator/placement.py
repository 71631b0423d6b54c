"""Placement: which relay serves a new RelayEndpoint. Pure: relays and loads in, a choice out.

A relay qualifies while its heartbeat is current and it has a free VNI. A
pinned endpoint takes its relay or waits for it; any other goes to the
relay with the smallest share of its capacity in use, counting what this
operator placed there since the relay's last heartbeat, so that a burst of
creations spreads over the fleet instead of piling onto one stale figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from relay.store import RelayRecord


def choose_relay(
    relays: Iterable[RelayRecord],
    pinned: str | None = None,
    placed_since_heartbeat: Mapping[str, int] | None = None,
) -> RelayRecord | None:
    """The relay to allocate on, or None when none qualifies."""
    extra = placed_since_heartbeat or {}

    def load(relay: RelayRecord) -> int:
        return relay.load + extra.get(relay.name, 0)

    candidates = [r for r in relays if r.alive and load(r) < r.capacity]
    if pinned is not None:
        candidates = [r for r in candidates if r.name == pinned]
    return min(candidates, key=lambda r: (load(r) / r.capacity, load(r), r.name), default=None)
