"""Taking up RelayEndpoints whose handler's writes were lost.

When kube-apiserver goes away in the middle of a handler, kopf gives up on its
patch after a few retries: the resource keeps no phase and gets no further event,
so nothing would run for it again. One loop for the whole operator looks, every
``--take-up-after`` / 3, for resources still without a phase (the ``unplaced``
part of the operator's kopf index, kept from kopf's watch) whose create, resume or
take-up handler ran to its end ``--take-up-after`` ago or more, and sets the
take-up annotation on each; the take-up handler (relay_operator/handlers.py)
allocates it and removes the annotation.

Rule 1: a resource whose handler has not run yet in this operator (a burst's
backlog, or a restart's) is marked only ``--take-up-after`` after kopf first showed
it with the operator's finalizer. kopf runs the create handler on that very event,
so by then the handler has run, unless kopf dropped the resource: when kopf's own
finalizer patch got through just before kube-apiserver went away, its retry is
refused as a conflict, and kopf then waits for an event that never comes.
Rule 2: a resource is marked at most once per ``--take-up-after``.
Rule 3: every resource's clock starts again whenever one of the operator's requests
to kube-apiserver waits for a connection (relay_operator/api_session.py). In a burst
of thousands, the handlers' writes queue there behind each other for longer than
``--take-up-after``: they are late, not lost, and marking them only adds writes to
the queue. Once nothing waits, the writes have all been sent, and those lost show.

Not a kopf timer per resource: kopf keeps the whole body of every resource of a
kind that has a timer for as long as the resource exists (about 17 KiB each), and
runs a task for each one without a phase.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from relay.resource.definition import FINALIZER, TAKE_UP_ANNOTATION

Unplaced = tuple[str, str, Any]
"""A resource without a phase: (namespace, name, its own kopf memo), the memo holding
``allocate_ran``, when its handler last ran to its end, and ``finalized_seen``, when
kopf first showed it with the operator's finalizer (both ``time.monotonic()``)."""

Mark = Callable[[str, str], Awaitable[None]]
"""Sets the take-up annotation on the resource (namespace, name)."""

log = logging.getLogger(__name__)


async def take_up_stranded(
    stranded: Mapping[str, Collection[Unplaced]],
    mark: Mark,
    now: float,
    after: float,
    waited: float | None = None,
) -> int:
    """One pass: marks every resource without a phase whose handler ran ``after`` seconds
    before ``now`` or earlier, unless a request waited for a connection since (``waited``,
    when one last did); how many were marked. A mark that fails is tried again in the
    next pass."""
    if waited is not None and now - waited < after:
        return 0
    marked = 0
    for entries in list(stranded.values()):
        for namespace, name, memo in list(entries):
            ran = memo.get("allocate_ran", memo.get("finalized_seen"))
            if ran is None or now - ran < after:
                continue
            memo.allocate_ran = now
            try:
                await mark(namespace, name)
                marked += 1
            except Exception as exc:
                log.warning("could not mark %s/%s to be taken up: %s", namespace, name, exc)
    if marked:
        log.info("taking up %d RelayEndpoints left without a phase", marked)
    return marked


def note_finalized(memo: Any, finalizers: Collection[str], now: float) -> None:
    """Remember in a resource's memo when kopf first showed it with the operator's
    finalizer (Rule 1's clock); called on every event of a resource without a phase."""
    if "finalized_seen" not in memo and FINALIZER in finalizers:
        memo.finalized_seen = now


async def run_take_up(
    stranded: Mapping[str, Collection[Unplaced]],
    mark: Mark,
    after: float,
    count: Callable[[int], None],
    waited: Callable[[], float | None] = lambda: None,
) -> None:
    """:func:`take_up_stranded` every ``after`` / 3 seconds, until cancelled, with
    ``waited()``; ``count`` is told how many each pass marked."""
    while True:
        await asyncio.sleep(after / 3)
        now = time.monotonic()
        count(await take_up_stranded(stranded, mark, now, after, waited()))


def kubernetes_mark() -> Mark:
    """Sets the take-up annotation, to the time it is set, with the kubernetes client
    (KUBECONFIG, or the service account)."""
    from relay.resource.client import RelayEndpointsApi

    api = RelayEndpointsApi(None)

    async def mark(namespace: str, name: str) -> None:
        await api.annotate(namespace, name, {TAKE_UP_ANNOTATION: str(int(time.time()))})

    return mark
