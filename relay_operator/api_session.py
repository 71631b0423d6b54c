"""The operator's connections to kube-apiserver: kopf's credentials, a bounded pool.

kopf opens its own aiohttp session with no limit on connections, so a burst of
RelayEndpoints (every resource's handler at once) opened one connection per
request in flight: 868-949 at 1 000 created at once (bench/operator_scale.py),
each a TLS handshake that kube-apiserver pays for and closes again when idle.
The login handler hands kopf a session of ours instead, made from the same
credentials kopf finds (a pod's service account, else the kubeconfig), whose
pool holds at most :data:`API_CONNECTIONS`; requests beyond wait for one.
"""

from __future__ import annotations

import aiohttp
import kopf

API_CONNECTIONS = 64
"""Connections to kube-apiserver at most: its watch streams (a few, each holding one)
and requests in flight together."""


def bounded_session(info: kopf.ConnectionInfo, limit: int = API_CONNECTIONS) -> kopf.AiohttpSession:
    """The credentials of ``info`` as kopf's own session would use them, over a pool of at
    most ``limit`` connections. Call it on the event loop the session will serve."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        priority=info.priority,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session,
    )
