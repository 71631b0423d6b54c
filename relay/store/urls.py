"""Store URLs: which ones open a store, what they say, and how to show them safely.

``--store`` takes ``memory`` or a Redis URL of one of :data:`REDIS_SCHEMES`
(one Redis, a Redis Cluster, Redis Sentinel; the grammar is in
:meth:`relay.store.redis.RedisStore.from_url`). Parsing never puts a
password in an error, and :func:`redact_url` makes any URL fit for a log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)


def check_store_url(url: str) -> None:
    """Raise ValueError, naming the problem but never the password, unless ``url`` opens a store."""
    if url == "memory":
        return
    if not url.startswith(REDIS_SCHEMES):
        schemes = ", ".join(REDIS_SCHEMES)
        raise ValueError(f"unknown store {redact_url(url)!r}: use 'memory' or a URL of {schemes}")
    check_url(url)


def redact_url(url: str) -> str:
    """A store URL fit for logs: any password replaced by ``***``.

    Whatever precedes the last '@' is taken for credentials, even in a URL
    without '://' (a mistyped scheme), and all after their first ':' is hidden.
    """
    credentials, at, host = url.rpartition("@")
    if not at:
        return url
    start = credentials.find("://") + 3 if "://" in credentials else 0
    user, colon, _ = credentials[start:].partition(":")
    return f"{credentials[:start]}{user}{':***' if colon else ''}@{host}"


_TOPOLOGIES = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_DEFAULT_PORTS = {"cluster": 6379, "sentinel": 26379}
_TIMEOUT_OPTIONS = ("socket_connect_timeout", "socket_timeout")
_TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_CERT_REQS = ("none", "optional", "required")
_WORD = re.compile(r"\w+")
_URL_DROPPED = str.maketrans("", "", "\t\r\n")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class _Topology:
    """What a ``redis+cluster://`` or ``redis+sentinel://`` URL says."""

    kind: str  # "cluster" or "sentinel"
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service: str | None = None
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def check_url(url: str) -> None:
    """Raise ValueError naming the problem (never the password) unless ``url`` is usable here."""
    if url.partition("://")[0] in _TOPOLOGIES:
        _parse_topology(url)
    else:
        _redis_client(url)


def _redis_client(url: str, **options: Any) -> aioredis.Redis:
    """``Redis.from_url`` (nothing connects); a ValueError names the problem, not the password."""
    try:
        return aioredis.Redis.from_url(url, **options)
    except ValueError as exc:
        scheme = url.partition("://")[0]
        raise ValueError(f"bad {scheme}:// store URL: {_without_password(str(exc), url)}") from None


def _without_password(message: str, url: str) -> str:
    """``message`` with each word of ``url``'s password replaced by ``***``.

    In a malformed URL (an unencoded '?' or '/' in the password, say) parsers
    take part of the password for a host, a port or an option, and may quote
    it: percent-decoded, as a repr, or without tabs and newlines (urllib). So
    the password is all from the first ':' after '://' to the last '@', and its
    words are looked for in each of those forms.
    """
    credentials = url.partition("://")[2].rpartition("@")[0]
    password = credentials.partition(":")[2]
    if not password:
        return message
    forms = {password, password.translate(_URL_DROPPED)}
    forms |= {unquote_plus(form) for form in forms}
    forms |= {repr(form) for form in forms}
    words = {word for form in forms for word in _WORD.findall(form)}
    return _WORD.sub(lambda m: "***" if m[0] in words else m[0], message)


def _parse_topology(url: str) -> _Topology:
    """Parse a cluster or sentinel URL; errors name the problem, never the password."""
    scheme, _, rest = url.partition("://")
    kind, tls = _TOPOLOGIES[scheme]

    def bad(problem: str) -> ValueError:
        return ValueError(f"bad {scheme}:// store URL: {_without_password(problem, url)}")

    if "#" in url:
        raise bad("'#' is not allowed; percent-encode it (%23) in a password or name")
    rest, _, query = rest.partition("?")
    credentials, at, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        if not colon:
            raise bad("give credentials as ':password@' or 'user:password@', percent-encoded")
        username, password = unquote(user) or None, unquote(secret) or None

    default_port = _DEFAULT_PORTS[kind]
    if not hosts:
        raise bad(f"no host: list one or more as host:port[,host:port...] after {scheme}://")
    nodes = tuple(_parse_node(entry, default_port, bad) for entry in hosts.split(","))

    service, db = None, 0
    if kind == "cluster":
        if path not in ("", "0"):
            raise bad(f"a Redis Cluster has database 0 only, not {path!r}: drop the path")
    else:
        name, _, db_text = path.partition("/")
        service = unquote(name)
        if not service:
            raise bad(f"no service name: {scheme}://host:port[,host:port...]/<service>[/<db>]")
        if db_text:
            if not (db_text.isascii() and db_text.isdigit()):
                raise bad(f"the database must be a number, not {db_text!r}")
            db = int(db_text)

    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _TIMEOUT_OPTIONS:
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds < float("inf"):
                raise bad(f"{name} must be a positive number of seconds, not {value!r}")
            options[name] = seconds
        elif name in _TLS_OPTIONS:
            if not tls:
                raise bad(f"{name} needs TLS: use {scheme.replace('redis+', 'rediss+')}://")
            if name == "ssl_cert_reqs" and value not in _CERT_REQS:
                raise bad(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {value!r}")
            if name == "ssl_check_hostname":
                if value.lower() not in _BOOLEANS:
                    raise bad(f"ssl_check_hostname must be true or false, not {value!r}")
                options[name] = _BOOLEANS[value.lower()]
            else:
                options[name] = value
        else:
            known = ", ".join((*_TIMEOUT_OPTIONS, *_TLS_OPTIONS))
            raise bad(f"unknown option {name!r} (known: {known})")
    return _Topology(kind, tls, nodes, username, password, service, db, options)


def _parse_node(entry: str, default_port: int, bad: Callable[[str], ValueError]) -> tuple[str, int]:
    if not entry:
        raise bad("an empty entry in the host list")
    if entry.startswith("["):
        host, bracket, tail = entry[1:].partition("]")
        if not bracket or not host:
            raise bad(f"{entry!r}: an IPv6 address goes in brackets, as [::1]:{default_port}")
        if tail and not tail.startswith(":"):
            raise bad(f"{entry!r}: expected ':port' after ']'")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text = entry.partition(":")
        if ":" in port_text:
            raise bad(f"{entry!r}: an IPv6 address goes in brackets, as [::1]:{default_port}")
        if not host:
            raise bad(f"{entry!r}: no host name")
        if not colon:
            port_text = None
    if port_text is None:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise bad(f"{entry!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _connect_topology(
    topology: _Topology, connect_timeout: float, timeout: float, retry: Retry
) -> aioredis.Redis | RedisCluster:
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": timeout,
        **topology.options,
    }
    if topology.tls:
        options["ssl"] = True
    auth = {"username": topology.username, "password": topology.password}
    if topology.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in topology.nodes]
        return RedisCluster(startup_nodes=nodes, retry=retry, **auth, **options)
    sentinel = Sentinel(topology.nodes, sentinel_kwargs={"retry": retry, **options})
    return sentinel.master_for(topology.service, db=topology.db, retry=retry, **auth, **options)


def connect(
    url: str, *, connect_timeout: float, timeout: float, retry: Retry
) -> aioredis.Redis | RedisCluster:
    """The client for a Redis URL (nothing connects yet); ValueError names a problem, not
    the password. Timeouts given in the URL win over the arguments."""
    if url.partition("://")[0] in _TOPOLOGIES:
        return _connect_topology(_parse_topology(url), connect_timeout, timeout, retry)
    return _redis_client(
        url, socket_connect_timeout=connect_timeout, socket_timeout=timeout, retry=retry
    )


def _address(kwargs: dict[str, Any]) -> str:
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def describe(client: aioredis.Redis | RedisCluster) -> str:
    """Where the client connects, without credentials."""
    if isinstance(client, RedisCluster):
        return "Redis Cluster at " + ",".join(node.name for node in client.startup_nodes)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        sentinels = ",".join(
            _address(sentinel.connection_pool.connection_kwargs)
            for sentinel in pool.sentinel_manager.sentinels
        )
        return f"Redis master {pool.service_name!r} via Sentinel at {sentinels}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"Redis at unix:{kwargs['path']}"
    return f"Redis at {_address(kwargs)}"
