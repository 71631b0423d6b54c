"""The kopf handlers: thin glue between RelayEndpoint resources, the allocator and status.

Create and resume place and allocate in one pass; a crash between allocating
and writing the status is survived because the next pass finds the relay the
allocation went to (the relay label, or the store holding the pair) and asks
it again for the same pair, which gives the same allocation back. Only one
resource per pair of keys is allocated (a kopf index by pair). Delete frees
the allocation before the finalizer lets the resource go. The
``relayfleet.io/reallocate`` annotation allocates afresh; the
``relayfleet.io/relay-dead`` annotation, set by the fleet-wide relay check
(relay_operator/relay_check.py), places a resource whose relay died.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import kopf

from relay.protocol.keys import DiscoPublicKey, InvalidKey
from relay.resource.definition import (
    GROUP,
    PLURAL,
    RELAY_LABEL,
    VERSION,
)
from relay.resource.definition import (
    REALLOCATE_ANNOTATION as REALLOCATE,
)
from relay.resource.status import allocated_status, expired_status, pending_status
from relay.store import StoreUnavailable, VNIExhausted
from relay_operator import relay_check
from relay_operator.allocating import Allocator, CurrentAllocation, NoRelayAvailable, Placement
from relay_operator.metrics import OperatorMetrics

PROGRESS_PREFIX = "kopf.relayfleet.io"
MAX_RETRY_DELAY = 30.0
PAIR_IN_USE = "PairInUse"
PAIR_IN_USE_RETRY = 30.0
TAKE_UP_AFTER = 30.0


def retry_delay(retry: int) -> float:
    return min(MAX_RETRY_DELAY, 0.5 * 2**retry)


def disco_keys(spec: Any) -> tuple[DiscoPublicKey, DiscoPublicKey]:
    try:
        a, b = (DiscoPublicKey.parse(k) for k in spec.get("discoKeys", ()))
    except (InvalidKey, ValueError) as exc:
        raise kopf.PermanentError(f"spec.discoKeys: {exc}") from None
    return a, b


def pair_id(keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> str:
    """The same text for a pair of keys in either order."""
    return " ".join(sorted(str(k) for k in keys))


def pair_holder(claims: Any, keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> str | None:
    """The uid of the RelayEndpoint that holds a pair: one already allocated, else the oldest.

    The store keeps one allocation per pair, so two resources naming the same
    pair would share it, and deleting either would free it for both; only the
    holder gets the allocation, the others wait Pending (reason PairInUse).
    """
    claimants = list(claims.get(pair_id(keys), ()))
    return min(claimants)[-1] if claimants else None


def current_allocation(status: Any) -> CurrentAllocation | None:
    if not status.get("relay") or status.get("vni") is None or status.get("lamportID") is None:
        return None
    return CurrentAllocation(status["relay"], int(status["vni"]), int(status["lamportID"]))


def write_allocated(patch: kopf.Patch, body: Any, placement: Placement, meta: Any) -> None:
    relay = placement.relay
    status = allocated_status(
        placement.allocation,
        relay,
        bind_lifetime=relay.bind_lifetime,
        steady_state_lifetime=relay.steady_state_lifetime,
        generation=meta.get("generation", 0),
        now=time.time(),
        conditions=body.get("status", {}).get("conditions"),
    )
    patch.status.update(status)
    patch.metadata.labels[RELAY_LABEL] = relay.name


async def labelled_relay(allocator: Allocator, meta: Any) -> str | None:
    """The live relay the resource's label names, if any.

    kopf writes a handler's patch in two requests, metadata first: a crash in
    between leaves the relay label and no status, while the store holds the
    allocation. Allocating on the labelled relay again gets that allocation
    back instead of leaking it.
    """
    name = meta.get("labels", {}).get(RELAY_LABEL)
    if name is not None and await allocator.relay_alive(name):
        return name
    return None


async def place(
    allocator: Allocator,
    metrics: OperatorMetrics,
    body: Any,
    spec: Any,
    status: Any,
    meta: Any,
    patch: kopf.Patch,
    retry: int,
    previous: CurrentAllocation | None,
) -> Placement:
    """Allocate for the resource: where an earlier attempt left it, or on a chosen relay.

    One pass, no retry in between: a crash after allocating and before the
    status is written leaves either the relay label (kopf writes metadata
    first) or just the allocation in the store, and the next pass finds the
    relay by one or the other and gets the same allocation back.
    ``previous`` is freed if the new allocation is elsewhere.
    """
    keys = disco_keys(spec)
    generation = meta.get("generation", 0)
    pinned = spec.get("relay")
    try:
        relay_name = await labelled_relay(allocator, meta) if previous is None else None
        if relay_name is None:
            exclude = previous.relay if previous is not None else None
            relay_name = await allocator.holding(keys, exclude)
        if relay_name is None or (pinned is not None and relay_name != pinned):
            relay_name = (await allocator.choose(pinned)).name
        placement = await allocator.allocate(keys, relay_name, previous)
    except NoRelayAvailable as exc:
        metrics.allocations.labels("no_relay").inc()
        conditions = status.get("conditions")
        pending = pending_status(
            "NoRelayAvailable",
            str(exc),
            generation=generation,
            now=time.time(),
            conditions=conditions,
        )
        patch.status.update(pending)
        kopf.warn(body, reason="NoRelayAvailable", message=str(exc))
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
    except VNIExhausted as exc:
        metrics.allocations.labels("no_vni").inc()
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
    except StoreUnavailable as exc:
        metrics.allocations.labels("store_unavailable").inc()
        raise kopf.TemporaryError(f"store unavailable: {exc}", delay=retry_delay(retry)) from None
    metrics.allocations.labels("created" if placement.created else "reused").inc()
    if not status.get("allocatedAt") and meta.get("creationTimestamp"):
        created = datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
        metrics.allocation_seconds.observe(max(0.0, time.time() - created.timestamp()))
    write_allocated(patch, body, placement, meta)
    allocation = placement.allocation
    kopf.info(
        body,
        reason="Allocated",
        message=f"VNI {allocation.vni} on relay {placement.relay.name} "
        f"(LamportID {allocation.lamport_id})",
    )
    return placement


def register_handlers(
    registry: kopf.OperatorRegistry,
    allocator: Allocator,
    metrics: OperatorMetrics,
    relay_check_interval: float = 5.0,
    relay_mark: relay_check.Mark | None = None,
) -> None:
    """Register every RelayEndpoint handler on ``registry`` (one registry per operator).

    ``relay_mark`` sets the relay-dead annotation (default: the kubernetes client).
    """

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="pairs")
    async def pairs(spec, meta, status, **_) -> dict[str, tuple[bool, str, str]] | None:
        try:
            keys = disco_keys(spec)
        except kopf.PermanentError:
            return None
        allocated = current_allocation(status) is not None
        return {pair_id(keys): (not allocated, meta.get("creationTimestamp") or "", meta["uid"])}

    async def allocate(body, spec, status, meta, patch, retry, pairs, **_) -> None:
        if status.get("phase") == "Expired":
            return
        current = current_allocation(status)
        holder = pair_holder(pairs, disco_keys(spec))
        if current is None and holder not in (None, meta["uid"]):
            message = "another RelayEndpoint already holds this pair of disco keys"
            patch.status.update(
                pending_status(
                    PAIR_IN_USE,
                    message,
                    generation=meta.get("generation", 0),
                    now=time.time(),
                    conditions=status.get("conditions"),
                )
            )
            if not any(c.get("reason") == PAIR_IN_USE for c in status.get("conditions") or ()):
                kopf.warn(body, reason=PAIR_IN_USE, message=message)
            metrics.allocations.labels("pair_in_use").inc()
            raise kopf.TemporaryError(message, delay=PAIR_IN_USE_RETRY)
        try:
            held = await allocator.current(disco_keys(spec), current)
            if held is None and current is not None and await allocator.relay_alive(current.relay):
                # The relay lives but freed the allocation while no operator watched: it expired.
                patch.status.update(
                    expired_status(
                        "bind or steady-state",
                        generation=meta.get("generation", 0),
                        now=time.time(),
                        conditions=status.get("conditions"),
                    )
                )
                return
        except StoreUnavailable as exc:
            raise kopf.TemporaryError(
                f"store unavailable: {exc}", delay=retry_delay(retry)
            ) from None
        if held is None:
            await place(allocator, metrics, body, spec, status, meta, patch, retry, current)

    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="allocate")(allocate)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="allocate")(allocate)
    # A resource whose handler's writes were lost (the API server went away in the
    # middle: kopf gives up on a patch after its retries) gets no further event, so
    # nothing would ever run for it again. Any resource still without a phase is
    # taken up again here; once allocated (or Pending) it has one and the timer stops.
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="take-up",
        interval=TAKE_UP_AFTER,
        initial_delay=TAKE_UP_AFTER,
        field="status.phase",
        value=kopf.ABSENT,
    )(allocate)

    @kopf.on.field(
        GROUP,
        VERSION,
        PLURAL,
        field=("metadata", "annotations", REALLOCATE),
        registry=registry,
        id="reallocate",
    )
    async def reallocate(body, spec, status, meta, patch, retry, new, **_) -> None:
        if new is None:
            return
        previous = current_allocation(status)
        if previous is not None:
            try:
                await allocator.free(previous)
            except StoreUnavailable as exc:
                raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
        await place(allocator, metrics, body, spec, status, meta, patch, retry, None)

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="by_relay")
    async def by_relay(status, meta, **_) -> dict[str, tuple[str, str, str | None]] | None:
        return relay_check.index_entry(status, meta)

    checks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry, id="relay-check")
    async def start_relay_check(by_relay, **_) -> None:
        mark = relay_mark or relay_check.kubernetes_mark()
        checks.append(
            asyncio.create_task(
                relay_check.run_relay_check(by_relay, allocator, mark, relay_check_interval),
                name="relay-check",
            )
        )

    @kopf.on.cleanup(registry=registry, id="relay-check")
    async def stop_relay_check(**_) -> None:
        for task in checks:
            task.cancel()
        for task in checks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        checks.clear()

    @kopf.on.field(
        GROUP,
        VERSION,
        PLURAL,
        field=("metadata", "annotations", relay_check.RELAY_DEAD),
        registry=registry,
        id="relay-dead",
    )
    async def relay_dead(body, spec, status, meta, patch, retry, new, **_) -> None:
        """The relay check marked this resource's relay dead: place it on a live one."""
        if new is None:
            return
        current = current_allocation(status)
        if (
            current is not None
            and current.relay == new
            and status.get("phase") in ("Allocated", "Bound")
            and not await allocator.relay_alive(current.relay)
        ):
            kopf.warn(
                body,
                reason="RelayDead",
                message=f"relay {current.relay} stopped heart-beating; placing on another relay",
            )
            await place(allocator, metrics, body, spec, status, meta, patch, retry, current)
        patch.metadata.annotations[relay_check.RELAY_DEAD] = None

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="free")
    async def free(status, retry, logger, **_) -> None:
        current = current_allocation(status)
        if current is None:
            return
        try:
            freed = await allocator.free(current)
        except StoreUnavailable as exc:
            raise kopf.TemporaryError(
                f"store unavailable: {exc}", delay=retry_delay(retry)
            ) from None
        logger.info("freed VNI %d on %s: %s", current.vni, current.relay, freed)
