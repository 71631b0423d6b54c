"""The Relay objects: one cluster-scoped object per registered relay, kept from the registry.

The registry (the relays' heartbeats in Redis) is where the fleet lives, but a user
outside the cluster cannot reach that Redis. So the operator mirrors each relay into a
``Relay`` object (crds/relay.yaml), and ``kubectl get relays`` and ``relayfleet
status`` read the fleet with a kubeconfig alone.

One object per relay rather than one fleet object with a list: each is small and
written on its own (no write conflicts, no size limit at thousands of relays), gets
its own Ready condition and Events (``kubectl describe relay``), and reads like
``kubectl get nodes``.

Writes are bounded. Every ``--relay-check-interval`` the operator reads the registry
(one Redis call) and compares each relay with what it last wrote:

- Rule 1: a relay not yet mirrored is created, and its status written.
- Rule 2: a change of liveness, key, addresses, capacity, version or metrics address
  is written at that pass, with an Event (Stopped, CameBack, Rekeyed).
- Rule 3: otherwise a live relay's object is rewritten (its endpoints in use and
  heartbeat time) at most once per ``--relay-object-refresh``; a dead one's, never.

So an idle fleet of R relays costs at most R writes per refresh interval (100 relays
and 60 s: under two a second), and a restarted operator, which first lists the objects
(one LIST) and takes their status as written, writes none that is current. Objects of
relays no longer in the registry are deleted. A standby replica (kopf peering) keeps
them too; its writes are the same, and Events are named after what they report, so
the second copy of one is refused by the API server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.resource.definition import (
    CAME_BACK,
    GROUP,
    MANAGED_BY_LABEL,
    OPERATOR_NAME,
    REGISTERED,
    REKEYED,
    RELAY_KIND,
    RELAY_PLURAL,
    STATE_ALIVE,
    STOPPED,
    VERSION,
)
from relay.resource.relay_status import identity, relay_status
from relay.store import RelayRecord, StoreUnavailable
from relay_operator.allocating import Allocator

log = logging.getLogger(__name__)

EVENTS_NAMESPACE = "default"
"""Where Events about cluster-scoped objects go, as Kubernetes puts those about nodes."""

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def object_name(relay: str) -> str | None:
    """The Relay object's name: the relay's, where Kubernetes allows it as a name."""
    return relay if _DNS_SUBDOMAIN.fullmatch(relay) else None


@dataclass(frozen=True)
class Written:
    """A Relay object's status as last written (or read), and when."""

    status: dict[str, Any]
    at: float
    uid: str


@dataclass(frozen=True)
class Write:
    """What a pass does to one relay's object."""

    create: bool
    status: dict[str, Any]
    event: tuple[str, str, str] | None
    """(type, reason, message) of the Event to post, if any."""


def plan(
    record: RelayRecord, written: Written | None, *, now: float, refresh: float
) -> Write | None:
    """What to write for ``record``, by the module's rules; None: nothing."""
    previous = written.status if written is not None else None
    status = relay_status(record, previous, generation=1, now=now)
    if written is None:
        return Write(True, status, ("Normal", REGISTERED, _registered(record)))
    if identity(status) != identity(written.status):
        return Write(False, status, _transition(record, written.status))
    if record.alive and now - written.at >= refresh and _differs(status, written.status):
        return Write(False, status, None)
    return None


def _differs(status: dict[str, Any], previous: dict[str, Any]) -> bool:
    return any(status.get(k) != previous.get(k) for k in ("endpoints", "lastHeartbeatTime"))


def _registered(record: RelayRecord) -> str:
    where = ", ".join(record.addr_ports) or "no address"
    return f"Relay {record.name} registered at {where} as {record.server_disco}."


def _transition(record: RelayRecord, previous: dict[str, Any]) -> tuple[str, str, str] | None:
    was_alive = previous.get("state") == STATE_ALIVE
    if was_alive and not record.alive:
        return (
            "Warning",
            STOPPED,
            f"Relay {record.name} stopped heart-beating; its endpoints are placed again.",
        )
    if record.alive and not was_alive:
        return ("Normal", CAME_BACK, f"Relay {record.name} heart-beats again.")
    if str(record.server_disco) != previous.get("serverDisco"):
        return (
            "Warning",
            REKEYED,
            f"Relay {record.name} runs under a new disco key {record.server_disco}; "
            f"the endpoints it held under {previous.get('serverDisco')} are placed again.",
        )
    return None


class RelayObjectsApi:
    """Relay objects and their Events on the API server, through the kubernetes client."""

    def __init__(self, kubeconfig: str | None = None, timeout: float = 10.0) -> None:
        from kubernetes import client

        from relay.resource.client import api_client

        api = api_client(kubeconfig, retries=0)
        self._objects = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._timeout = timeout

    async def list(self) -> list[dict[str, Any]]:
        """The Relay objects the operator keeps."""
        listing = await asyncio.to_thread(
            self._objects.list_cluster_custom_object,
            GROUP,
            VERSION,
            RELAY_PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={OPERATOR_NAME}",
            _request_timeout=self._timeout,
        )
        return listing["items"]

    async def create(self, name: str) -> dict[str, Any]:
        """A new Relay object, or the one of that name already there."""
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": RELAY_KIND,
            "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: OPERATOR_NAME}},
            "spec": {},
        }
        try:
            return await self._call(
                self._objects.create_cluster_custom_object, GROUP, VERSION, RELAY_PLURAL, body
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            return await self._call(
                self._objects.get_cluster_custom_object, GROUP, VERSION, RELAY_PLURAL, name
            )

    async def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self._call(
            self._objects.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            RELAY_PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    async def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await self._call(
                self._objects.delete_cluster_custom_object, GROUP, VERSION, RELAY_PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def post_event(
        self, name: str, uid: str, event: tuple[str, str, str], key: str, now: str
    ) -> None:
        """Post ``event`` about Relay ``name``; one per ``key``, however many replicas post it."""
        from kubernetes.client.exceptions import ApiException

        type_, reason, message = event
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{reason.lower()}.{key}", "namespace": EVENTS_NAMESPACE},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": RELAY_KIND,
                "name": name,
                "uid": uid,
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": OPERATOR_NAME},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call(self._core.create_namespaced_event, EVENTS_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, _request_timeout=self._timeout, **kwargs)


class RelayObjects:
    """Keeps the Relay objects in step with the registry, by the module's rules."""

    def __init__(self, api: RelayObjectsApi, refresh: float) -> None:
        self._api = api
        self._refresh = refresh
        self._written: dict[str, Written] | None = None
        self._unnamed: set[str] = set()
        self.writes = 0
        """Creates, status patches and deletes made; Events not counted."""

    async def sync(self, records: Iterable[RelayRecord], now: float) -> None:
        """One pass. A failed write is retried at the next pass."""
        from relay.resource.status import timestamp

        first = self._written is None
        if self._written is None:
            self._written = {
                item["metadata"]["name"]: Written(
                    item.get("status") or {}, now, item["metadata"]["uid"]
                )
                for item in await self._api.list()
            }
            listed = len(self._written)
        writes = self.writes
        registered: set[str] = set()
        for record in records:
            name = object_name(record.name)
            if name is None:
                if record.name not in self._unnamed:
                    log.warning("relay %r has no Relay object: not a Kubernetes name", record.name)
                    self._unnamed.add(record.name)
                continue
            registered.add(name)
            written = self._written.get(name)
            write = plan(record, written, now=now, refresh=self._refresh)
            if write is None:
                continue
            if write.create:
                uid = (await self._api.create(name))["metadata"]["uid"]
                self.writes += 1
            else:
                assert written is not None
                uid = written.uid
            await self._api.patch_status(name, write.status)
            self.writes += 1
            self._written[name] = Written(write.status, now, uid)
            if write.event is not None:
                key = f"{int(record.heartbeat_at * 1000)}"
                try:
                    await self._api.post_event(name, uid, write.event, key, timestamp(now))
                except Exception as exc:  # an Event is worth a warning, not a retry
                    log.warning("could not post %s about relay %s: %s", write.event[1], name, exc)
        for name in set(self._written) - registered:
            await self._api.delete(name)
            self.writes += 1
            del self._written[name]
        if first:
            log.info(
                "keeping %d Relay objects: %d found, %d writes to bring them up to date",
                len(self._written), listed, self.writes - writes,
            )  # fmt: skip


async def run_relay_objects(
    objects: RelayObjects, allocator: Allocator, interval: float, clock: Any
) -> None:
    """:meth:`RelayObjects.sync` every ``interval`` seconds, until cancelled."""
    failing = False
    while True:
        try:
            await objects.sync((await allocator.relays()).values(), clock())
            failing = False
        except StoreUnavailable:
            pass  # the relay check says so
        except Exception as exc:  # the API server may be away: try again at the next pass
            if not failing:
                log.warning("could not update the Relay objects: %s", exc)
            failing = True
        await asyncio.sleep(interval)
