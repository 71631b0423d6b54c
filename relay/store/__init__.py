"""Stores of allocations: one interface (:mod:`relay.store.interface`), several implementations."""

from relay.store.interface import (
    SUBSCRIBED,
    Allocation,
    AllocationResult,
    Change,
    RelayRecord,
    Store,
    StoreError,
    StoreUnavailable,
    VNIExhausted,
)
from relay.store.memory import MemoryStore

REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)
DEFAULT_PREFIX = "relayfleet:"


def open_store(url: str, *, max_vni: int, prefix: str = DEFAULT_PREFIX) -> Store:
    """The store a ``--store`` value names: ``memory``, or a Redis URL.

    The Redis URL forms are in :meth:`relay.store.redis.RedisStore.from_url`;
    a malformed one raises ValueError, which never shows the password.
    """
    if url == "memory":
        return MemoryStore(max_vni)
    if url.startswith(REDIS_SCHEMES):
        from relay.store.redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix, max_vni=max_vni)
    schemes = ", ".join(REDIS_SCHEMES)
    raise ValueError(f"unknown store {redact_url(url)!r}: use 'memory' or a URL of {schemes}")


def check_store_url(url: str) -> None:
    """Raise ValueError, naming the problem but never the password, unless ``url`` opens a store."""
    if url == "memory":
        return
    if not url.startswith(REDIS_SCHEMES):
        schemes = ", ".join(REDIS_SCHEMES)
        raise ValueError(f"unknown store {redact_url(url)!r}: use 'memory' or a URL of {schemes}")
    from relay.store.redis import check_url

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


__all__ = [
    "DEFAULT_PREFIX",
    "REDIS_SCHEMES",
    "SUBSCRIBED",
    "Allocation",
    "AllocationResult",
    "Change",
    "MemoryStore",
    "RelayRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "VNIExhausted",
    "check_store_url",
    "open_store",
    "redact_url",
]
