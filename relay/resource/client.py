"""The Kubernetes API client of the relays and the operator, configured as kubectl would be.

:func:`api_client` is the one place a client is made. :class:`RelayEndpointsApi`
is what a relay's reporter needs of the API server: its RelayEndpoints, and
their status to patch. The kubernetes client is synchronous, so its calls run
in a thread, each within a timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from relay.resource.definition import GROUP, PLURAL, RELAY_LABEL, VERSION


def api_client(kubeconfig: str | None = None, retries: int | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: from ``kubeconfig`` if given, else in a pod its
    service account, else the default kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).

    ``retries`` replaces urllib3's default (3 retries of a failed connection or read), for
    callers that retry by themselves and need a call to end within its timeout."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)


class RelayEndpointsApi:
    """RelayEndpoints on the API server, through the kubernetes client."""

    def __init__(self, kubeconfig: str | None) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client(kubeconfig, retries=0))

    async def on_relay(self, relay: str, timeout: float) -> list[dict[str, Any]]:
        """The RelayEndpoints labelled as placed on ``relay``."""
        listing = await asyncio.to_thread(
            self._api.list_custom_object_for_all_namespaces,
            GROUP,
            VERSION,
            PLURAL,
            label_selector=f"{RELAY_LABEL}={relay}",
            _request_timeout=timeout,
        )
        return listing["items"]

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], timeout: float
    ) -> None:
        await asyncio.to_thread(
            self._api.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _request_timeout=timeout,
        )
