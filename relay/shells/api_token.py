"""The bearer token that may guard the relay's allocation API.

The API listens on loopback by default; once it listens where others can
reach it (a pod's address, so that Prometheus and the kubelet can), anyone
who reaches it could allocate endpoints and read every client's address.
``--api-token-file`` closes that: the allocation endpoints then require
``Authorization: Bearer <token>``, while ``/healthz`` and ``/metrics`` stay
open for probes and scrapers, which carry no token. The token comes from a
file (in Kubernetes, a mounted Secret), never from a flag, so that it shows
in no process list, and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

OPEN_PATHS = frozenset({"/healthz", "/metrics"})
_TOKEN = re.compile(r"[\x21-\x7e]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiTokenError(Exception):
    """The token file cannot be read or holds no usable token."""


def read_token_file(path: str | Path) -> str:
    """The token in ``path``: its content without surrounding whitespace."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ApiTokenError(f"cannot read API token file {path}: {reason}") from None
    if not token:
        raise ApiTokenError(f"API token file {path} is empty")
    if not _TOKEN.fullmatch(token):
        raise ApiTokenError(
            f"API token file {path}: the token must be one word of printable ASCII "
            "(it travels in an HTTP header)"
        )
    return token


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode(errors="surrogateescape")).digest()


def refusal(authorization: str | None, token: str) -> str | None:
    """Why a request with this ``Authorization`` header is refused, or None to let it in.

    Both sides are hashed first, so that the comparison takes the same time
    whatever the length or content of what was sent.
    """
    if not authorization:
        return "missing 'Authorization: Bearer <token>' header"
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "the Authorization header must be 'Bearer <token>'"
    if not hmac.compare_digest(_digest(given.strip()), _digest(token)):
        return "wrong bearer token"
    return None


def bearer_middleware(
    token: str,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware answering 401 to requests beyond OPEN_PATHS without ``token``."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            reason = refusal(request.headers.get("Authorization"), token)
            if reason is not None:
                raise web.HTTPUnauthorized(
                    text=reason + "\n",
                    content_type="text/plain",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    return require_token
