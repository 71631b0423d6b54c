"""The kopf handlers: thin glue between RelayEndpoint resources, the allocator and status.

Every handler is registered on :data:`registry`, which
:func:`relay_operator.main.run_operator` runs, and finds the operator's parts
(allocator, metrics, configuration) in kopf's ``memo``: an :class:`OperatorMemo`.

Create and resume place and allocate in one pass; a crash between allocating
and writing the status is survived because the next pass finds the relay the
allocation went to (the relay label, or the store holding the pair) and asks
it again for the same pair, which gives the same allocation back. Only one
resource per pair of keys is allocated (the index's pairs part). An edit of
``spec.relay`` moves a placed resource to the relay now pinned. Delete frees
the allocation before the finalizer lets the resource go. The reallocate
annotation allocates afresh; the relay-dead annotation, set by the fleet-wide
relay check (relay_operator/relay_check.py, started and stopped here), places
a resource whose relay died or came back under another disco key. The Relay
objects (relay_operator/relay_objects.py) are kept by a loop started and
stopped here too, and so is the take-up loop, which has a resource left without
a phase after its handler ran (its writes lost) allocated again. A store outage
has kopf run the handler again. A RelayEndpoint a relay made for its tailnet's
peers (:data:`OPERATORS`) is only freed when deleted, and told when its relay is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

import kopf

from relay.aio import stop_tasks
from relay.protocol.keys import DiscoPublicKey, InvalidKey
from relay.resource.definition import (
    ALLOCATED,
    BOUND,
    EXPIRED,
    GROUP,
    NO_RELAY_AVAILABLE,
    ORIGIN_LABEL,
    PAIR_IN_USE,
    PLURAL,
    REALLOCATE_ANNOTATION,
    RELAY_DEAD_ANNOTATION,
    RELAY_LABEL,
    TAKE_UP_ANNOTATION,
    VERSION,
)
from relay.resource.status import (
    allocated_status,
    expired_status,
    missing_status,
    pending_status,
)
from relay.resource.tailnet_endpoint import from_tailnet
from relay.store import StoreUnavailable, VNIExhausted
from relay_operator import endpoint_index, relay_check, relay_objects, take_up
from relay_operator.allocating import (
    RELAY_DEAD,
    Allocator,
    CurrentAllocation,
    NoRelayAvailable,
    Placement,
)
from relay_operator.api_session import ConnectionWaits, bounded_session
from relay_operator.config import OperatorConfig
from relay_operator.endpoint_index import (
    BY_RELAY,
    PAIRS,
    UNPLACED,
    WAITING,
    IndexKey,
    IndexPart,
)
from relay_operator.metrics import OperatorMetrics
from relay_operator.pending import Waiting, waiting_entry

MAX_RETRY_DELAY = 30.0
PAIR_IN_USE_RETRY = 30.0

PairClaim = tuple[bool, str, str]
"""A resource's claim on its pair of keys: (not yet allocated, creation time, uid)."""

PairClaims = Mapping[str, Collection[PairClaim]]
"""The claims on each pair of keys (the index's :data:`PAIRS` part)."""

registry = kopf.OperatorRegistry()
"""Every handler of the operator, and nothing else's."""

OPERATORS = {ORIGIN_LABEL: kopf.ABSENT}
"""The filter of the handlers that place and allocate (and of the index parts that feed them): a
RelayEndpoint a relay made for its tailnet's peers (relay/resource/tailnet_endpoint.py) is the
relay's to write. The operator frees its allocation when it is deleted, counts it as holding
its pair, and says when its relay is gone (:func:`relay_dead`)."""

log = logging.getLogger(__name__)


class OperatorMemo(kopf.Memo):
    """What the handlers find in kopf's ``memo``, put there by run_operator.

    kopf gives each resource a shallow copy, so every handler shares the one
    allocator and the one set of metrics.
    """

    allocator: Allocator
    metrics: OperatorMetrics
    config: OperatorConfig
    api_waits: ConnectionWaits
    """When the operator's requests to kube-apiserver last waited for a connection."""
    relay_check: asyncio.Task[None]
    relay_objects: asyncio.Task[None]
    take_up: asyncio.Task[None]
    """All three set by startup handlers, stopped by cleanup handlers."""
    allocate_ran: float
    """In a resource's own memo (kopf copies the memo per resource): when its create, resume
    or take-up handler last ran to its end in this operator (``time.monotonic()``)."""
    finalized_seen: float
    """In a resource's own memo: when kopf first showed it without a phase and with the
    operator's finalizer (``time.monotonic()``; relay_operator/take_up.py, Rule 1)."""


def retry_delay(retry: int) -> float:
    return min(MAX_RETRY_DELAY, 0.5 * 2**retry)


@contextlib.contextmanager
def retried_after_store_outage(retry: int) -> Iterator[None]:
    """Turns the store being unreachable into a kopf retry of the handler, backing off."""
    try:
        yield
    except StoreUnavailable as exc:
        raise kopf.TemporaryError(f"store unavailable: {exc}", delay=retry_delay(retry)) from None


def write_status(
    patch: kopf.Patch,
    body: kopf.Body,
    build: Callable[..., dict[str, Any]],
    *args: Any,
    **kwargs: Any,
) -> None:
    """Patch in the status ``build`` makes (a builder of relay.resource.status), at the
    resource's generation, keeping the conditions it does not set."""
    status = build(
        *args,
        **kwargs,
        generation=body.meta.get("generation", 0),
        now=time.time(),
        conditions=body.status.get("conditions"),
    )
    patch.status.update(status)


def disco_keys(spec: kopf.Spec) -> tuple[DiscoPublicKey, DiscoPublicKey]:
    try:
        a, b = (DiscoPublicKey.parse(k) for k in spec.get("discoKeys", ()))
    except (InvalidKey, ValueError) as exc:
        raise kopf.PermanentError(f"spec.discoKeys: {exc}") from None
    return a, b


def pair_id(keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> str:
    """The same text for a pair of keys in either order."""
    return " ".join(sorted(str(k) for k in keys))


def pair_holder(claims: PairClaims, keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> str | None:
    """The uid of the RelayEndpoint that holds a pair: one already allocated, else the oldest.

    The store keeps one allocation per pair, so two resources naming the same
    pair would share it, and deleting either would free it for both; only the
    holder gets the allocation, the others wait Pending (reason PairInUse).
    """
    claimants = list(claims.get(pair_id(keys), ()))
    return min(claimants)[-1] if claimants else None


def current_allocation(status: kopf.Status) -> CurrentAllocation | None:
    if not status.get("relay") or status.get("vni") is None or status.get("lamportID") is None:
        return None
    return CurrentAllocation(
        status["relay"], int(status["vni"]), int(status["lamportID"]), status.get("serverDisco")
    )


def server_gone_message(current: CurrentAllocation, reason: str) -> str:
    if reason == RELAY_DEAD:
        return f"relay {current.relay} stopped heart-beating"
    return (
        f"relay {current.relay} restarted under a new disco key and freed the allocations "
        f"made under {current.server_disco}"
    )


def warn_server_gone(body: kopf.Body, current: CurrentAllocation, reason: str) -> None:
    """The Event of a resource about to be placed again because its server is gone."""
    again = "placing on another relay" if reason == RELAY_DEAD else "placing again"
    kopf.warn(body, reason=reason, message=f"{server_gone_message(current, reason)}; {again}")


def write_allocated(patch: kopf.Patch, body: kopf.Body, placement: Placement) -> None:
    relay = placement.relay
    write_status(
        patch,
        body,
        allocated_status,
        placement.allocation,
        relay,
        bind_lifetime=relay.bind_lifetime,
        steady_state_lifetime=relay.steady_state_lifetime,
    )
    patch.metadata.labels[RELAY_LABEL] = relay.name


async def labelled_relay(allocator: Allocator, meta: kopf.Meta) -> str | None:
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
    memo: OperatorMemo,
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
    previous: CurrentAllocation | None,
    gone: str | None = None,
) -> Placement:
    """Allocate for the resource: where an earlier attempt left it, or on a chosen relay.

    One pass, no retry in between: a crash after allocating and before the
    status is written leaves either the relay label (kopf writes metadata
    first) or just the allocation in the store, and the next pass finds the
    relay by one or the other and gets the same allocation back.
    ``previous`` is freed if the new allocation is elsewhere; ``gone`` is why its
    server is gone (RelayDead, RelayRekeyed), Ready's reason if no relay can take
    it. A store outage is counted and raised: the caller retries it.
    """
    allocator, metrics = memo.allocator, memo.metrics
    keys = disco_keys(body.spec)
    pinned = body.spec.get("relay")
    try:
        relay_name = await labelled_relay(allocator, body.meta) if previous is None else None
        if relay_name is None:
            exclude = previous.relay if previous is not None else None
            relay_name = await allocator.holding(keys, exclude)
        if relay_name is None or (pinned is not None and relay_name != pinned):
            relay_name = (await allocator.choose(pinned)).name
        placement = await allocator.allocate(keys, relay_name, previous)
    except NoRelayAvailable as exc:
        metrics.allocations.labels("no_relay").inc()
        why = None
        if gone is not None and previous is not None:
            why = f"{server_gone_message(previous, gone)}, and no relay can take it: {exc}"
        write_status(
            patch,
            body,
            pending_status,
            NO_RELAY_AVAILABLE,
            str(exc),
            ready_reason=gone,
            ready_message=why,
        )
        kopf.warn(body, reason=NO_RELAY_AVAILABLE, message=str(exc))
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
    except VNIExhausted as exc:
        metrics.allocations.labels("no_vni").inc()
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
    except StoreUnavailable:
        metrics.allocations.labels("store_unavailable").inc()
        raise
    metrics.allocations.labels("created" if placement.created else "reused").inc()
    created_at = body.meta.get("creationTimestamp")
    if not body.status.get("allocatedAt") and created_at:
        created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        metrics.allocation_seconds.observe(max(0.0, time.time() - created.timestamp()))
    write_allocated(patch, body, placement)
    allocation = placement.allocation
    kopf.info(
        body,
        reason="Allocated",
        message=f"VNI {allocation.vni} on relay {placement.relay.name} "
        f"(LamportID {allocation.lamport_id})",
    )
    return placement


@kopf.on.login(registry=registry)
async def login(memo: OperatorMemo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """In a pod, the service account; elsewhere, the kubeconfig (KUBECONFIG or ~/.kube/config);
    over a bounded pool of connections (relay_operator/api_session.py)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    return None if info is None else bounded_session(info, waits=memo.api_waits)


# The index returns {} for a resource that leaves it, never None: kopf keeps what an index
# handler returned before when it returns None, so the resource would stay indexed as it was.


def pair_claim(spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status) -> dict[str, PairClaim]:
    try:
        keys = disco_keys(spec)
    except kopf.PermanentError:
        return {}
    allocated = current_allocation(status) is not None
    return {pair_id(keys): (not allocated, meta.get("creationTimestamp") or "", meta["uid"])}


@kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="endpoints")
async def endpoints(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    labels: kopf.Labels,
    memo: OperatorMemo,
    **_: Any,
) -> dict[IndexKey, Any]:
    """Every RelayEndpoint's claim on its pair and the relay serving it; and, for those the
    operator places (:data:`OPERATORS`), why it waits for an allocation (the metrics,
    relay_operator/pending.py) and, without a phase, its own memo (the take-up loop)."""
    placed_here = ORIGIN_LABEL not in labels
    unplaced = placed_here and status.get("phase") is None
    if unplaced:
        take_up.note_finalized(memo, meta.get("finalizers") or (), time.monotonic())
    return endpoint_index.entries(
        {
            PAIRS: pair_claim(spec, meta, status),
            BY_RELAY: relay_check.index_entry(status, meta),
            WAITING: waiting_entry(status, meta, time.time()) if placed_here else None,
            UNPLACED: (
                {meta["uid"]: (meta.get("namespace") or "", meta["name"], memo)}
                if unplaced
                else None
            ),
        }
    )


@kopf.on.startup(registry=registry, id="count-waiting")
async def count_waiting_endpoints(
    endpoints: kopf.Index[IndexKey, Any], memo: OperatorMemo, **_: Any
) -> None:
    memo.metrics.count_pending(IndexPart[Waiting](endpoints, WAITING))


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="allocate", labels=OPERATORS)
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="allocate", labels=OPERATORS)
async def allocate(
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
    endpoints: kopf.Index[IndexKey, Any],
    memo: OperatorMemo,
    **_: Any,
) -> None:
    try:
        await allocate_once(body, patch, retry, IndexPart(endpoints, PAIRS), memo)
    finally:
        memo.allocate_ran = time.monotonic()


# The take-up loop and its rules: relay_operator/take_up.py.


@kopf.on.field(
    GROUP,
    VERSION,
    PLURAL,
    field=("metadata", "annotations", TAKE_UP_ANNOTATION),
    registry=registry,
    labels=OPERATORS,
    id="take-up",
)
async def allocate_taken_up(
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
    new: Any,
    endpoints: kopf.Index[IndexKey, Any],
    memo: OperatorMemo,
    **_: Any,
) -> None:
    if new is None:
        return
    try:
        if body.status.get("phase") is None:
            await allocate_once(body, patch, retry, IndexPart(endpoints, PAIRS), memo)
    finally:
        memo.allocate_ran = time.monotonic()
    patch.metadata.annotations[TAKE_UP_ANNOTATION] = None


@kopf.on.startup(registry=registry, id="take-up")
async def start_take_up(endpoints: kopf.Index[IndexKey, Any], memo: OperatorMemo, **_: Any) -> None:
    unplaced = IndexPart[take_up.Unplaced](endpoints, UNPLACED)
    loop = take_up.run_take_up(
        unplaced,
        take_up.kubernetes_mark(),
        memo.config.take_up_after,
        memo.metrics.taken_up.inc,
        lambda: memo.api_waits.last,
    )
    memo.take_up = asyncio.create_task(loop, name="take-up")


@kopf.on.cleanup(registry=registry, id="take-up")
async def stop_take_up(memo: OperatorMemo, **_: Any) -> None:
    await stop_tasks(memo.get("take_up"))


async def allocate_once(
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
    pairs: PairClaims,
    memo: OperatorMemo,
) -> None:
    """Place and allocate a resource without an allocation that stands, or keep its own."""
    status = body.status
    if status.get("phase") == EXPIRED:
        return
    current = current_allocation(status)
    holder = pair_holder(pairs, disco_keys(body.spec))
    if current is None and holder not in (None, body.meta["uid"]):
        message = "another RelayEndpoint already holds this pair of disco keys"
        write_status(patch, body, pending_status, PAIR_IN_USE, message)
        if not any(c.get("reason") == PAIR_IN_USE for c in status.get("conditions") or ()):
            kopf.warn(body, reason=PAIR_IN_USE, message=message)
        memo.metrics.allocations.labels("pair_in_use").inc()
        raise kopf.TemporaryError(message, delay=PAIR_IN_USE_RETRY)
    allocator = memo.allocator
    gone = None
    with retried_after_store_outage(retry):
        held = await allocator.current(disco_keys(body.spec), current)
        if held is None and current is not None:
            gone = await allocator.server_gone(current)
            if gone is None:
                # The relay lives but freed the allocation while no operator watched: it expired.
                write_status(patch, body, expired_status, "bind or steady-state")
                return
            if gone != RELAY_DEAD:  # a dead relay's Event is the relay-dead handler's
                warn_server_gone(body, current, gone)
        if held is None:
            await place(memo, body, patch, retry, current, gone)
        else:
            # Written before Ready and the -o wide fields existed: add them, once.
            missing = missing_status(
                dict(status), generation=body.meta.get("generation", 0), now=time.time()
            )
            if missing is not None:
                patch.status.update(missing)


@kopf.on.field(
    GROUP,
    VERSION,
    PLURAL,
    field=("metadata", "annotations", REALLOCATE_ANNOTATION),
    registry=registry,
    labels=OPERATORS,
    id="reallocate",
)
async def reallocate(
    body: kopf.Body, patch: kopf.Patch, retry: int, new: Any, memo: OperatorMemo, **_: Any
) -> None:
    if new is None:
        return
    previous = current_allocation(body.status)
    with retried_after_store_outage(retry):
        if previous is not None:
            await memo.allocator.free(previous)
        await place(memo, body, patch, retry, None)


@kopf.on.field(
    GROUP, VERSION, PLURAL, field=("spec", "relay"), registry=registry, id="pin", labels=OPERATORS
)
async def pin(
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
    new: Any,
    reason: kopf.Reason,
    memo: OperatorMemo,
    **_: Any,
) -> None:
    """``spec.relay`` edited on a placed resource: an endpoint served elsewhere moves to the
    relay now pinned (its old allocation freed); whatever happens, the conditions then
    observe the new generation, as kstatus, Flux and Argo CD expect."""
    if reason == kopf.Reason.CREATE:
        return  # the allocate handler places it
    status = body.status
    current = current_allocation(status)
    if (
        current is not None
        and new is not None
        and current.relay != new
        and status.get("phase") in (ALLOCATED, BOUND)
    ):
        with retried_after_store_outage(retry):
            await place(memo, body, patch, retry, current)
        return
    generation = body.meta.get("generation", 0)
    if status.get("conditions"):
        patch.status["conditions"] = [
            {**condition, "observedGeneration": generation} for condition in status["conditions"]
        ]


@kopf.on.field(
    GROUP,
    VERSION,
    PLURAL,
    field=("metadata", "annotations", RELAY_DEAD_ANNOTATION),
    registry=registry,
    id="relay-dead",
)
async def relay_dead(
    body: kopf.Body, patch: kopf.Patch, retry: int, new: Any, memo: OperatorMemo, **_: Any
) -> None:
    """The relay check marked this resource's relay dead, or come back under another disco
    key: the server its clients were given is gone, so place it again.

    Not a resource a relay made for its tailnet's peers: they asked that relay, not the
    fleet, so it waits Pending, saying why, keeping its allocation, until the relay serves
    it again (its reporter writes it back) or the pair asks again."""
    if new is None:
        return
    current = current_allocation(body.status)
    with retried_after_store_outage(retry):
        gone = await memo.allocator.server_gone(current) if current is not None else None
        if (
            current is not None
            and current.relay == new
            and body.status.get("phase") in (ALLOCATED, BOUND)
            and gone is not None
        ):
            if from_tailnet(body):
                message = server_gone_message(current, gone)
                write_status(patch, body, pending_status, gone, message)
                kopf.warn(body, reason=gone, message=f"{message}; its tailnet peers use DERP")
            else:
                warn_server_gone(body, current, gone)
                await place(memo, body, patch, retry, current, gone)
    patch.metadata.annotations[RELAY_DEAD_ANNOTATION] = None


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="free")
async def free(
    status: kopf.Status, retry: int, logger: kopf.Logger, memo: OperatorMemo, **_: Any
) -> None:
    current = current_allocation(status)
    if current is None:
        return
    with retried_after_store_outage(retry):
        freed = await memo.allocator.free(current)
    logger.info("freed VNI %d on %s: %s", current.vni, current.relay, freed)


@kopf.on.startup(registry=registry, id="relay-check")
async def start_relay_check(
    endpoints: kopf.Index[IndexKey, Any], memo: OperatorMemo, **_: Any
) -> None:
    check = relay_check.run_relay_check(
        IndexPart[relay_check.Served](endpoints, BY_RELAY),
        memo.allocator,
        relay_check.kubernetes_mark(),
        memo.config.relay_check_interval,
    )
    memo.relay_check = asyncio.create_task(check, name="relay-check")


@kopf.on.cleanup(registry=registry, id="relay-check")
async def stop_relay_check(memo: OperatorMemo, **_: Any) -> None:
    await stop_tasks(memo.get("relay_check"))


@kopf.on.startup(registry=registry, id="relay-objects")
async def start_relay_objects(memo: OperatorMemo, **_: Any) -> None:
    objects = relay_objects.RelayObjects(
        relay_objects.RelayObjectsApi(), memo.config.relay_object_refresh
    )
    keep = relay_objects.run_relay_objects(
        objects, memo.allocator, memo.config.relay_check_interval, time.time
    )
    memo.relay_objects = asyncio.create_task(keep, name="relay-objects")


@kopf.on.cleanup(registry=registry, id="relay-objects")
async def stop_relay_objects(memo: OperatorMemo, **_: Any) -> None:
    await stop_tasks(memo.get("relay_objects"))
