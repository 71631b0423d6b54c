"""The operator's connections to kube-apiserver: kopf's credentials, a bounded pool.

kopf opens its own aiohttp session with no limit on connections, so a burst of
RelayEndpoints (every resource's handler at once) opened one connection per
request in flight: 868-949 at 1 000 created at once (bench/operator_scale.py),
each a TLS handshake that kube-apiserver pays for and closes again when idle.
The login handler hands kopf a session of ours instead, made from the same
credentials kopf finds (a pod's service account, else the kubeconfig), whose
pool holds at most :data:`API_CONNECTIONS`; requests beyond wait for one, and
:class:`ConnectionWaits` says when they last did (relay_operator/take_up.py,
Rule 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

API_CONNECTIONS = 64
"""Connections to kube-apiserver at most: its watch streams (a few, each holding one)
and requests in flight together."""


class ConnectionWaits:
    """When a request last began or ended waiting for a connection of the pool.

    A burst's writes wait behind each other there, for as long as the backlog
    takes: while requests wait, a write not yet seen is late, not lost. Kept
    as a time, not a count: aiohttp says when a wait ends only if it ends with
    a connection, not when its request is cancelled.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last: float | None = None
        """``clock()`` when a request last began or ended waiting; None: none ever waited."""

    def trace(self) -> aiohttp.TraceConfig:
        """What a session reports its waits through."""
        config = aiohttp.TraceConfig()
        config.on_connection_queued_start.append(self._waited)
        config.on_connection_queued_end.append(self._waited)
        return config

    async def _waited(self, *_: Any) -> None:
        self.last = self._clock()


def bounded_session(
    info: kopf.ConnectionInfo,
    limit: int = API_CONNECTIONS,
    waits: ConnectionWaits | None = None,
) -> kopf.AiohttpSession:
    """The credentials of ``info`` as kopf's own session would use them, over a pool of at
    most ``limit`` connections, its waits told to ``waits``. Call it on the event loop the
    session will serve."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        trace_configs=[waits.trace()] if waits is not None else None,
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
