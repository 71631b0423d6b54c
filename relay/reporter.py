"""Reporting endpoints' live state into their RelayEndpoints' status on Kubernetes.

The relay knows what no one else does: each peer's handshake, address, last
packet, and counts, and when an endpoint expires. The reporter keeps a view of
the RelayEndpoints placed on this relay (label ``relayfleet.io/relay``, checked
against ``status.relay``, since a tenant may edit labels but not status), and
at most once per interval patches the status of those whose state changed.
It also makes the RelayEndpoints of the allocations its tailnet's peers ask
for (relay/resource/tailnet_endpoint.py), and deletes them when they expire.

The view costs the API server in proportion to what changes, not to what
exists: one list, then a watch from the list's resourceVersion. A watch is
asked to end after three quarters of ``--report-timeout`` (``timeoutSeconds``)
and is started again from the last resourceVersion it saw (bookmarks keep
that current while nothing changes); only a watch that expired (410 Gone) or
failed (the API server away) lists again. Credentials that may list but not
watch (a role from before watches) fall back to a list every interval, as
reporters did before, and try the watch again every few minutes.

Kubernetes calls run in a thread (the kubernetes client is synchronous) and
never on the packet path; each has a timeout (``--report-timeout``; no read
of a watch waits longer either), so that a silent API server neither stalls
reporting nor holds up the process's exit for longer, and a failed patch is
retried at the next interval. A watch is read by a daemon thread whose socket
is shut when the watch is closed, so it never holds up the exit. On shutdown,
:meth:`StatusReporter.close` writes a last report within a given time, so that
the status shows the final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.aio import stop_tasks
from relay.protocol.core import Endpoint, Handshake
from relay.resource.client import RelayEndpointsApi, WatchExpired, WatchForbidden
from relay.resource.definition import ALLOCATED, EXPIRED
from relay.resource.status import allocated_status, expired_status, live_status
from relay.resource.tailnet_endpoint import from_tailnet, tailnet_endpoint
from relay.store import Allocation, RelayRecord

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 10.0
WATCH_AGAIN_AFTER_FORBIDDEN = 300.0
"""Seconds of listing every interval, after a refused watch, before trying to watch again
(a role may be updated while the relay runs)."""

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TailnetAllocation:
    """An allocation a tailnet peer asked for, whose RelayEndpoint is to be made or updated."""

    body: dict[str, Any]
    allocation: Allocation
    relay: RelayRecord


def watch_timeout(request_timeout: float) -> int:
    """The ``timeoutSeconds`` a watch asks for: three quarters of the request timeout (at
    least 1 s), so that the server ends an idle watch before the client's read gives up."""
    return max(1, int(request_timeout * 0.75))


class EndpointSource(Protocol):
    """Where the reporter reads an endpoint's live state: a relay's core, or a parent's copy
    of its workers' endpoints (relay/workers.py)."""

    def endpoint(self, vni: int) -> Endpoint | None: ...


class StatusReporter:
    def __init__(
        self,
        core: EndpointSource,
        relay: str,
        endpoints: RelayEndpointsApi,
        clock: Callable[[], float] = time.time,
        interval: float = 2.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        watch_timeout_seconds: int | None = None,
        before_pass: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_pass`` is awaited at the start of every pass (a parent of workers fetches
        their endpoints' state then)."""
        self._core = core
        self._before_pass = before_pass
        self._relay = relay
        self._endpoints = endpoints
        self._clock = clock
        self.interval = interval
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout_seconds or watch_timeout(request_timeout)
        self._reported: dict[Key, Any] = {}
        self._expired: dict[tuple[int, int], str] = {}
        self._tailnet: dict[Key, TailnetAllocation] = {}
        # The RelayEndpoints labelled for this relay: metadata and status, by (namespace, name).
        self._view: dict[Key, dict[str, Any]] = {}
        self._listed = asyncio.Event()  # set once the view was filled by a list
        self._version: str | None = None  # where the next watch resumes; None: list first
        self._listing = asyncio.Lock()
        self._watch_forbidden_until = 0.0
        self._failing = False  # a failure of the list or watch was logged, not yet a recovery
        self.patches = 0
        self.deleted = 0
        self.passes = 0
        self.lists = 0
        self.watches = 0

    def note_expired(self, endpoints: list[Endpoint]) -> None:
        """Endpoints the agent expired, to report at the next pass."""
        for endpoint in endpoints:
            lifetime = "steady-state" if endpoint.bound else "bind"
            self._expired[(endpoint.allocation.vni, endpoint.allocation.lamport_id)] = lifetime

    def note_tailnet_allocation(
        self, namespace: str, allocation: Allocation, relay: RelayRecord
    ) -> None:
        """An allocation a tailnet peer was given, whose RelayEndpoint (made in ``namespace``
        if missing) is to show it from the next pass on."""
        body = tailnet_endpoint(namespace, self._relay, allocation.disco_keys)
        key = (namespace, body["metadata"]["name"])
        self._tailnet[key] = TailnetAllocation(body, allocation, relay)

    async def run(self) -> None:
        """Keep the view (list, then watch) and report from it every interval, until
        cancelled. The first pass waits for the first list; until then the view's keeper
        logs why there is none."""
        keeping = asyncio.create_task(self._keep_view(), name="relayendpoints-view")
        try:
            await self._listed.wait()
            while True:
                try:
                    await self.report_once()
                except Exception as exc:  # the API server may be away; report next time
                    log.warning("status report failed: %s", exc)
                await asyncio.sleep(self.interval)
        finally:
            await stop_tasks(keeping)

    async def close(self, timeout: float) -> bool:
        """A last report of what changed since the previous one, given at most ``timeout``
        seconds; whether it was written. Stop :meth:`run` first."""
        try:
            await asyncio.wait_for(self.report_once(time.monotonic() + timeout), timeout)
        except TimeoutError:
            log.warning("final status report not done in %.1fs; the status may lag", timeout)
            return False
        except Exception as exc:
            log.warning("final status report failed: %s", exc)
            return False
        return True

    async def report_once(self, deadline: float | None = None) -> None:
        """Patch the status of every endpoint whose state changed; each Kubernetes call
        has ``request_timeout``, or what is left until ``deadline`` (``time.monotonic()``)."""

        def timeout() -> float:
            if deadline is None:
                return self.request_timeout
            return max(0.001, deadline - time.monotonic())

        if self._before_pass is not None:
            await self._before_pass()
        now = self._clock()
        if not self._listed.is_set():  # no view yet: not running, or the list failed
            async with self._listing:
                if not self._listed.is_set():
                    await self._list(timeout())
        await self._write_tailnet_allocations(now, timeout)
        view = list(self._view.items())  # the watch may change the view while a patch waits
        self._reported = {k: v for k, v in self._reported.items() if k in self._view}
        for key, resource in view:
            status = resource.get("status") or {}
            meta = resource["metadata"]
            if status.get("vni") is None or status.get("phase") == EXPIRED:
                continue
            if status.get("relay") != self._relay:  # relabelled by someone who may patch labels
                continue
            identity = (int(status["vni"]), int(status.get("lamportID", -1)))
            generation = meta.get("generation", 0)
            conditions = status.get("conditions")
            lifetime = self._expired.get(identity)
            endpoint = self._core.endpoint(identity[0])
            if lifetime is not None and meta["fromTailnet"]:
                # Its VNI is free; nothing is left to show (the pair asks again if it must).
                await self._endpoints.delete(*key, timeout())
                self._view.pop(key, None)
                self._expired.pop(identity, None)
                self.deleted += 1
                continue
            if lifetime is not None:
                patch = expired_status(
                    lifetime, generation=generation, now=now, conditions=conditions
                )
                snapshot: Any = "expired"
            elif endpoint is not None and endpoint.allocation.lamport_id == identity[1]:
                snapshot = endpoint_snapshot(endpoint)
                if self._reported.get(key) == snapshot:
                    continue
                if key not in self._reported and _untouched(endpoint, status):
                    self._reported[key] = snapshot
                    continue
                patch = live_status(endpoint, generation=generation, now=now, conditions=conditions)
            else:
                continue
            await self._endpoints.patch_status(*key, patch, timeout())
            self._expired.pop(identity, None)
            self._reported[key] = snapshot
            self.patches += 1
        self._expired.clear()
        self.passes += 1

    async def _write_tailnet_allocations(self, now: float, timeout: Callable[[], float]) -> None:
        """Make the RelayEndpoint of each tailnet allocation noted since the last pass, or
        bring its status to that allocation (the pair was allocated afresh). One that is
        being deleted (it expired) is waited for: its finalizer frees what its status names,
        which must not be the new allocation."""
        for key, noted in list(self._tailnet.items()):
            try:
                await self._write_tailnet_allocation(key, noted, now, timeout)
            except Exception as exc:  # e.g. a role without create: the other reports go on
                log.warning(
                    "cannot write RelayEndpoint %s/%s for a tailnet allocation: %s; "
                    "trying again next pass",
                    *key,
                    exc,
                )
                return

    async def _write_tailnet_allocation(
        self, key: Key, noted: TailnetAllocation, now: float, timeout: Callable[[], float]
    ) -> None:
        """One of :meth:`_write_tailnet_allocations`: forgotten once written."""
        resource = self._view.get(key)
        if resource is None:
            made = await self._endpoints.create(key[0], noted.body, timeout())
            if made is None:  # there already, but not yet in the view
                made = await self._endpoints.get(*key, timeout())
            if made is None:  # deleted in between: next pass
                return
            resource = self._view[key] = _kept(made)
        if resource["metadata"]["deleting"]:
            return
        status = resource["status"]
        allocation = noted.allocation
        if (status.get("vni"), status.get("lamportID")) != (allocation.vni, allocation.lamport_id):
            patch = allocated_status(
                allocation,
                noted.relay,
                bind_lifetime=noted.relay.bind_lifetime,
                steady_state_lifetime=noted.relay.steady_state_lifetime,
                generation=resource["metadata"]["generation"],
                now=now,
                conditions=status.get("conditions"),
            )
            await self._endpoints.patch_status(*key, patch, timeout())
            resource["status"] = {**status, **patch}
            self._reported.pop(key, None)
            self.patches += 1
        if self._tailnet.get(key) is noted:  # not noted again meanwhile
            del self._tailnet[key]

    async def _list(self, timeout: float) -> None:
        listing = await self._endpoints.listing(self._relay, timeout)
        # Off the event loop: thousands of resources take milliseconds.
        self._view = await asyncio.to_thread(_view_of, listing.items)
        self._version = listing.resource_version
        self._listed.set()
        self.lists += 1
        self._recovered()

    async def _keep_view(self) -> None:
        """List, then watch from the list's resourceVersion, and watch again from the last
        one seen each time a watch ends; list again only when a watch expired (410) or
        failed. While the API server fails, warn once and try again every interval."""
        while True:
            try:
                if time.monotonic() < self._watch_forbidden_until:
                    async with self._listing:
                        await self._list(self.request_timeout)
                    await asyncio.sleep(self.interval)
                    continue
                if self._version is None:
                    async with self._listing:
                        await self._list(self.request_timeout)
                started = time.monotonic()
                events = await self._watch()
                self._recovered()
                if not events and time.monotonic() - started < min(1.0, self.watch_timeout / 2):
                    await asyncio.sleep(self.interval)  # ended at once: never a tight loop
            except WatchExpired as exc:
                log.info("RelayEndpoints watch expired (%s); listing them again", exc)
                self._version = None
            except WatchForbidden as exc:
                log.warning(
                    "may not watch RelayEndpoints (%s): listing them every %.1fs instead; "
                    "grant the relay's role watch on relayendpoints",
                    exc,
                    self.interval,
                )
                self._watch_forbidden_until = time.monotonic() + WATCH_AGAIN_AFTER_FORBIDDEN
            except Exception as exc:  # the API server may be away; try again
                if self._failing:
                    log.debug("watching RelayEndpoints failed again: %s", exc)
                else:
                    log.warning(
                        "watching RelayEndpoints failed: %s; trying again every %.1fs",
                        exc,
                        self.interval,
                    )
                self._failing = True
                self._version = None  # what was missed meanwhile, the next list shows
                await asyncio.sleep(self.interval)

    def _recovered(self) -> None:
        """The API server answered: say so, once, after a failure was logged."""
        if self._failing:
            self._failing = False
            log.info("watching RelayEndpoints again")

    async def _watch(self) -> int:
        """One watch, applied to the view as its events come; how many came."""
        assert self._version is not None
        self.watches += 1
        events = 0
        async with contextlib.aclosing(
            self._endpoints.watch(
                self._relay,
                self._version,
                timeout_seconds=self.watch_timeout,
                read_timeout=self.request_timeout,
            )
        ) as stream:
            async for event in stream:
                if not events:
                    self._recovered()
                events += 1
                self._apply(event)
        return events

    def _apply(self, event: dict[str, Any]) -> None:
        resource = event.get("object") or {}
        meta = resource.get("metadata") or {}
        kind = event.get("type")
        if kind in ("ADDED", "MODIFIED"):
            self._view[_key(resource)] = _kept(resource)
        elif kind == "DELETED":  # deleted, or relabelled away from this relay
            self._view.pop(_key(resource), None)
        if meta.get("resourceVersion"):  # BOOKMARK: nothing but a newer resourceVersion
            self._version = meta["resourceVersion"]


def _view_of(resources: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {_key(resource): _kept(resource) for resource in resources}


def _key(resource: dict[str, Any]) -> Key:
    return (resource["metadata"]["namespace"], resource["metadata"]["name"])


def _kept(resource: dict[str, Any]) -> dict[str, Any]:
    """What a report reads of a resource: its name, generation, origin, whether it is being
    deleted, and status."""
    meta = resource["metadata"]
    return {
        "metadata": {
            "namespace": meta["namespace"],
            "name": meta["name"],
            "generation": meta.get("generation", 0),
            "fromTailnet": from_tailnet(resource),
            "deleting": bool(meta.get("deletionTimestamp")),
        },
        "status": resource.get("status") or {},
    }


def endpoint_snapshot(endpoint: Endpoint) -> tuple[Any, ...]:
    """What of an endpoint its status shows: a change of it is worth a patch."""
    return (
        endpoint.bound,
        tuple(
            (c.handshake, c.addr, c.packets, c.bytes, c.version, c.bound_generation)
            for c in endpoint.clients
        ),
    )


def _untouched(endpoint: Endpoint, status: dict[str, Any]) -> bool:
    """Nothing happened yet and the status says so: the operator's own write stands."""
    return (
        status.get("phase") == ALLOCATED
        and not endpoint.bound
        and all(
            c.handshake is Handshake.INIT and c.addr is None and c.packets == 0
            for c in endpoint.clients
        )
        and all(c.get("handshake") == "Init" for c in status.get("clients", ()))
    )
