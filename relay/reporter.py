"""Reporting endpoints' live state into their RelayEndpoints' status on Kubernetes.

The relay knows what no one else does: each peer's handshake, address, last
packet, and counts, and when an endpoint expires. The reporter finds the
RelayEndpoints placed on this relay (label ``relayfleet.io/relay``, checked
against ``status.relay``, since a tenant may edit labels but not status), and
at most once per interval patches the status of those whose state changed.
Kubernetes calls run in a thread (the kubernetes client is synchronous) and
never on the packet path; each has a timeout (``--report-timeout``), so that a
silent API server neither stalls reporting nor holds up the process's exit for
longer, and a failed patch is retried at the next interval. On shutdown,
:meth:`StatusReporter.close` writes a last report within a given time, so that
the status shows the final state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from relay.protocol.core import Endpoint, Handshake, RelayCore
from relay.resource.client import RelayEndpointsApi
from relay.resource.definition import EXPIRED
from relay.resource.status import expired_status, live_status

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 10.0


class StatusReporter:
    def __init__(
        self,
        core: RelayCore,
        relay: str,
        endpoints: RelayEndpointsApi,
        clock: Callable[[], float] = time.time,
        interval: float = 2.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._core = core
        self._relay = relay
        self._endpoints = endpoints
        self._clock = clock
        self.interval = interval
        self.request_timeout = request_timeout
        self._reported: dict[tuple[str, str], Any] = {}
        self._expired: dict[tuple[int, int], str] = {}
        self.patches = 0

    def note_expired(self, endpoints: list[Endpoint]) -> None:
        """Endpoints the agent expired, to report at the next pass."""
        for endpoint in endpoints:
            lifetime = "steady-state" if endpoint.bound else "bind"
            self._expired[(endpoint.allocation.vni, endpoint.allocation.lamport_id)] = lifetime

    async def run(self) -> None:
        while True:
            try:
                await self.report_once()
            except Exception as exc:  # the API server may be away; report again next time
                log.warning("status report failed: %s", exc)
            await asyncio.sleep(self.interval)

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

        now = self._clock()
        resources = await self._endpoints.on_relay(self._relay, timeout())
        listed = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in resources}
        self._reported = {k: v for k, v in self._reported.items() if k in listed}
        for resource in resources:
            status = resource.get("status") or {}
            meta = resource["metadata"]
            key = (meta["namespace"], meta["name"])
            if status.get("vni") is None or status.get("phase") == EXPIRED:
                continue
            if status.get("relay") != self._relay:  # relabelled by someone who may patch labels
                continue
            identity = (int(status["vni"]), int(status.get("lamportID", -1)))
            generation = meta.get("generation", 0)
            conditions = status.get("conditions")
            lifetime = self._expired.get(identity)
            endpoint = self._core.endpoint(identity[0])
            if lifetime is not None:
                patch = expired_status(
                    lifetime, generation=generation, now=now, conditions=conditions
                )
                snapshot: Any = "expired"
            elif endpoint is not None and endpoint.allocation.lamport_id == identity[1]:
                snapshot = (
                    endpoint.bound,
                    tuple(
                        (c.handshake, c.addr, c.packets, c.bytes, c.version, c.bound_generation)
                        for c in endpoint.clients
                    ),
                )
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


def _untouched(endpoint: Endpoint, status: dict[str, Any]) -> bool:
    """Nothing happened yet and the status says so: the operator's own write stands."""
    return (
        not endpoint.bound
        and all(
            c.handshake is Handshake.INIT and c.addr is None and c.packets == 0
            for c in endpoint.clients
        )
        and all(c.get("handshake") == "Init" for c in status.get("clients", ()))
    )
