"""The relay's HTTP API: allocation (the reference's JSON), the endpoint table, health, metrics.

``POST /v0/relay/endpoint`` takes ``{"DiscoKeys": [A, B]}`` and answers a
ServerEndpoint. Bad requests get 400 with a one-line reason; no free VNI, a
closed server or an unreachable store get 503; a relay that takes no
allocations through its API (``--api-allocations``) answers 403, and one
asked too often (:mod:`relay.shells.api_limits`) 429 with ``Retry-After``.
With an API token (:mod:`relay.shells.api_token`), all but ``/healthz`` and
``/metrics`` need it (401).

The routes come in two groups, so that a relay can serve them on two
listeners (:func:`make_app`): the privileged allocation API
(``/v0/relay/endpoint``, ``/v0/relay/endpoints``) and the public ``/metrics``
and ``/healthz`` for probes and scrapers. A listener serving only the public
group answers 404 to everything else.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay.protocol.addresses import format_address
from relay.protocol.core import Endpoint, RelayCore
from relay.protocol.keys import DiscoPublicKey, InvalidKey
from relay.protocol.server_endpoint import ServerEndpoint
from relay.shells.api_limits import TooManyRequests
from relay.shells.api_token import bearer_middleware
from relay.store import StoreUnavailable, VNIExhausted

MAX_REQUEST_BYTES = 4096


class InvalidRequest(ValueError):
    """A request the API refuses with 400; its message is the one-line reason."""


class ServerClosed(Exception):
    """The relay is shutting down and takes no new allocations."""


class AllocationsOff(Exception):
    """This relay takes no allocations through its API (403); the message says how to allocate."""


def parse_allocation_request(body: bytes) -> tuple[DiscoPublicKey, DiscoPublicKey]:
    """The two keys of an allocation request; raises InvalidRequest with the reason."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("malformed JSON: nested too deeply") from None
    if not isinstance(request, dict) or "DiscoKeys" not in request:
        raise InvalidRequest(
            'expected a JSON object {"DiscoKeys": ["discokey:...", "discokey:..."]}'
        )
    keys = request["DiscoKeys"]
    if not isinstance(keys, list):
        raise InvalidRequest("DiscoKeys must be a list of two disco keys")
    if len(keys) != 2:
        raise InvalidRequest(f"DiscoKeys must hold exactly 2 keys, got {len(keys)}")
    parsed = []
    for index, text in enumerate(keys):
        try:
            parsed.append(DiscoPublicKey.parse(text))
        except InvalidKey as exc:
            raise InvalidRequest(f"DiscoKeys[{index}]: {exc}") from None
    return parsed[0], parsed[1]


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def endpoint_json(endpoint: Endpoint, expires_at: float) -> dict[str, Any]:
    allocation = endpoint.allocation
    return {
        "VNI": allocation.vni,
        "LamportID": allocation.lamport_id,
        "AllocatedAt": _timestamp(allocation.allocated_at),
        "Bound": endpoint.bound,
        "BoundAt": _timestamp(endpoint.bound_at),
        "ExpiresAt": _timestamp(expires_at),
        "Clients": [
            {
                "DiscoKey": str(key),
                "Handshake": client.handshake.label,
                "Version": client.version,
                "Generation": client.bound_generation or client.generation or None,
                "Addr": format_address(client.addr),
                "LastSeen": _timestamp(client.last_seen),
                "Packets": client.packets,
                "Bytes": client.bytes,
            }
            for key, client in zip(allocation.disco_keys, endpoint.clients, strict=True)
        ],
    }


def _text_error(status: type[web.HTTPException], reason: str) -> web.HTTPException:
    return status(text=reason.replace("\n", " ") + "\n", content_type="text/plain")


class ApiHost(Protocol):
    """What the API serves from: a relay's core, its allocation step and its metrics.

    A RelayServer is one. :meth:`admit` is asked before an allocation request
    is read and raises AllocationsOff or TooManyRequests (403, 429);
    :meth:`allocate` raises InvalidRequest, ServerClosed, TooManyRequests,
    VNIExhausted or StoreUnavailable, which the API turns into 400, 503 and 429.
    """

    core: RelayCore
    metrics: CollectorRegistry
    api_token: str | None
    api_errors: Counter[int]
    closed: bool

    def admit(self, client: str) -> None: ...

    async def allocate(self, a: DiscoPublicKey, b: DiscoPublicKey) -> ServerEndpoint: ...

    async def endpoints_json(self) -> list[dict[str, Any]]: ...


def _counting_errors(server: ApiHost) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Counts every answer of 400 or above by its status code, for /metrics."""

    @web.middleware
    async def count(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            server.api_errors[exc.status] += 1
            raise
        if response.status >= 400:
            server.api_errors[response.status] += 1
        return response

    return count


def make_app(server: ApiHost, *, allocation: bool = True, public: bool = True) -> web.Application:
    """The API as one listener serves it: the allocation routes, the public ``/metrics`` and
    ``/healthz``, or both (a relay with one listener). Only a listener with the allocation
    routes takes the API token: the public routes need none, and with it a stranger's
    request to a public listener would get 401 where 404 is the truth."""
    routes = web.RouteTableDef()

    if allocation:

        @routes.post("/v0/relay/endpoint")
        async def allocate(request: web.Request) -> web.Response:
            try:
                server.admit(request.remote or "")
                keys = parse_allocation_request(await request.read())
                endpoint = await server.allocate(*keys)
            except AllocationsOff as exc:
                raise _text_error(web.HTTPForbidden, str(exc)) from None
            except TooManyRequests as exc:
                error = _text_error(web.HTTPTooManyRequests, str(exc))
                error.headers["Retry-After"] = exc.retry_after_header
                raise error from None
            except InvalidRequest as exc:
                raise _text_error(web.HTTPBadRequest, str(exc)) from None
            except VNIExhausted as exc:
                raise _text_error(web.HTTPServiceUnavailable, f"no VNI free: {exc}") from None
            except ServerClosed:
                raise _text_error(web.HTTPServiceUnavailable, "relay is shutting down") from None
            except StoreUnavailable as exc:
                raise _text_error(web.HTTPServiceUnavailable, f"store unavailable: {exc}") from None
            return web.json_response(endpoint.to_json())

        @routes.get("/v0/relay/endpoints")
        async def endpoints(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "ServerDisco": str(server.core.server_key),
                    "Endpoints": await server.endpoints_json(),
                }
            )

    if public:

        @routes.get("/healthz")
        async def healthz(request: web.Request) -> web.Response:
            if server.closed:
                return web.Response(status=503, text="shutting down\n")
            return web.Response(text="ok\n")

        @routes.get("/metrics")
        async def metrics(request: web.Request) -> web.Response:
            response = web.Response(body=generate_latest(server.metrics))
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

    middlewares = [_counting_errors(server)]
    if allocation and server.api_token:
        middlewares.append(bearer_middleware(server.api_token))
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=middlewares)
    app.add_routes(routes)
    return app
