"""A kubernetes API client for the relay and the operator, configured as kubectl would be."""

from __future__ import annotations

from typing import Any


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
