"""A kubernetes API client for the relay and the operator, configured as kubectl would be."""

from __future__ import annotations

from typing import Any


def api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: from ``kubeconfig`` if given, else in a pod its
    service account, else the default kubeconfig (``KUBECONFIG`` or ``~/.kube/config``)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)
