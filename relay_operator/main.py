"""Running the operator: kopf with the handlers' registry, its settings, and the memo of parts.

``relayfleet operator`` calls :func:`run_operator`; the end-to-end tests call
it too, in a process of their own, against a real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import kopf

from relay.protocol.geneve import MAX_VNI
from relay.resource.client import api_client
from relay.resource.definition import FINALIZER, GROUP, RELAY_LABEL
from relay.store import open_store, redact_url
from relay_operator import index_barrier, kopf_copies
from relay_operator.allocating import Allocator
from relay_operator.api_session import ConnectionWaits
from relay_operator.config import OperatorConfig
from relay_operator.handlers import OperatorMemo, registry
from relay_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

PROGRESS_PREFIX = f"kopf.{GROUP}"
"""The prefix of the annotations kopf keeps its progress and last-handled state in."""


def operator_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PROGRESS_PREFIX)
    settings.persistence.diffbase_storage = kopf_copies.EssenceDiffBaseStorage(
        prefix=PROGRESS_PREFIX,
        key="last-handled-configuration",
        ignored_fields=[("metadata", "labels", RELAY_LABEL), ("status",)],
    )
    settings.peering.name = config.peering
    settings.peering.standalone = config.standalone
    settings.peering.mandatory = not config.standalone
    settings.peering.clusterwide = not config.namespaces
    settings.peering.priority = config.priority
    settings.peering.lifetime = max(1, round(config.peering_lifetime))
    settings.posting.level = logging.INFO
    return settings


def ensure_peering(config: OperatorConfig) -> None:
    """Create the peering object(s) the replicas meet in, unless they exist."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client())
    body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": config.peering}}
    creations = [
        functools.partial(
            api.create_namespaced_custom_object,
            "kopf.dev", "v1", namespace, "kopfpeerings", {**body, "kind": "KopfPeering"},
        )
        for namespace in config.namespaces
    ] or [
        functools.partial(
            api.create_cluster_custom_object,
            "kopf.dev", "v1", "clusterkopfpeerings", {**body, "kind": "ClusterKopfPeering"},
        )
    ]  # fmt: skip
    for create in creations:
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:
                raise


async def run_operator(
    config: OperatorConfig,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    store = open_store(config.store, max_vni=MAX_VNI, prefix=config.store_prefix)
    log.info("store: %s", redact_url(config.store))
    if not config.standalone:
        await asyncio.to_thread(ensure_peering, config)
    allocator = Allocator(store)
    metrics = OperatorMetrics(lambda: allocator.last_relays)
    memo = OperatorMemo(
        allocator=allocator, metrics=metrics, config=config, api_waits=ConnectionWaits()
    )
    metrics_server = await metrics.serve(*config.metrics_listen) if config.metrics_listen else None
    if not index_barrier.wake_on_change_only():
        log.warning("kopf's start-up barrier is not the one expected: left as it is")
    kopf_copies.skip_copying_empty_patches()
    try:
        await kopf.operator(
            registry=registry,
            memo=memo,
            settings=operator_settings(config),
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=config.liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()
        await store.close()
