"""The fleet-wide relay check: one loop over the relays, not one timer per RelayEndpoint.

A timer per resource costs the operator work in proportion to the number of
resources, every interval, even while every relay is alive (at 10 000
resources and 5 s, 2 000 handler runs a second). This loop reads the relays'
heartbeats once per ``--relay-check-interval`` and marks with the relay-dead
annotation (the relay's name) each RelayEndpoint allocated on a relay that
stopped heart-beating, and each whose ``serverDisco`` is not the key its relay
now registers (the relay came back under another disco key and freed what it
held under the old one). The ``relay-dead`` handler (relay_operator/handlers.py)
then warns and places the resource again, through kopf like every other
change, and removes the annotation once it has. A pass costs a comparison per
resource in memory and a Kubernetes call per resource marked, none while every
relay lives under its key.

Which resources sit on which relay comes from the ``by_relay`` part of the
operator's kopf index (relay_operator/endpoint_index.py), which kopf keeps
current from its watch: no listing. A standby replica (kopf
peering) runs the check too; the mark is the same whoever sets it, and only
the active replica's handler acts on it. The operator's startup handler
starts :func:`run_relay_check`, its cleanup handler stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from relay.resource.definition import (
    ALLOCATED,
    BOUND,
    RELAY_DEAD_ANNOTATION,
)
from relay.store import StoreUnavailable
from relay_operator.allocating import Allocator

log = logging.getLogger(__name__)

Mark = Callable[[str, str, str], Awaitable[None]]
"""Sets the relay-dead annotation: ``mark(namespace, name, relay)``."""

Served = tuple[str, str, str | None, str | None]
"""A resource a relay serves: (namespace, name, its relay-dead annotation if any, the
``serverDisco`` its status gave the clients)."""

ByRelay = Mapping[str, Collection[Served]]
"""The index's ``by_relay`` part: the resources each relay serves."""


def index_entry(status: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Served] | None:
    """``{relay: (namespace, name, relay-dead annotation, serverDisco)}`` for a resource served
    by a relay."""
    relay = status.get("relay")
    if not relay or status.get("phase") not in (ALLOCATED, BOUND):
        return None
    marked = (meta.get("annotations") or {}).get(RELAY_DEAD_ANNOTATION)
    return {relay: (meta.get("namespace") or "", meta["name"], marked, status.get("serverDisco"))}


async def check_relays(by_relay: ByRelay, allocator: Allocator, mark: Mark) -> int:
    """One pass: mark every resource on a relay that is not alive, or whose serverDisco is not
    its relay's key; how many were marked."""
    relays = await allocator.relays()
    marked = 0
    for relay in list(by_relay):
        record = relays.get(relay)
        alive = record is not None and record.alive
        key = str(record.server_disco) if record is not None else None
        for namespace, name, already, server_disco in list(by_relay.get(relay, ())):
            if already == relay or (alive and server_disco in (None, key)):
                continue
            try:
                await mark(namespace, name, relay)
                marked += 1
            except Exception as exc:  # the next pass tries again
                log.warning("could not mark %s/%s (relay %s gone): %s", namespace, name, relay, exc)
    return marked


async def run_relay_check(
    by_relay: ByRelay, allocator: Allocator, mark: Mark, interval: float
) -> None:
    """:func:`check_relays` every ``interval`` seconds, until cancelled."""
    unreachable = False
    while True:
        await asyncio.sleep(interval)
        try:
            await check_relays(by_relay, allocator, mark)
            unreachable = False
        except StoreUnavailable as exc:
            if not unreachable:
                log.warning("relay check: store unavailable (%s); retrying", exc)
            unreachable = True


def kubernetes_mark() -> Mark:
    """Sets the annotation with the kubernetes client (KUBECONFIG, or the service account)."""
    from relay.resource.client import RelayEndpointsApi

    api = RelayEndpointsApi(None)

    async def mark(namespace: str, name: str, relay: str) -> None:
        await api.annotate(namespace, name, {RELAY_DEAD_ANNOTATION: relay})

    return mark
