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

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_PREFIX = "relayfleet:"


def open_store(url: str, *, max_vni: int, prefix: str = DEFAULT_PREFIX) -> Store:
    """The store a ``--store`` value names: ``memory``, or a Redis URL."""
    if url == "memory":
        return MemoryStore(max_vni)
    if url.startswith(REDIS_SCHEMES):
        from relay.store.redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix, max_vni=max_vni)
    raise ValueError(f"unknown store {url!r}: use 'memory' or a redis://, rediss:// or unix:// URL")


def redact_url(url: str) -> str:
    """A store URL fit for logs: any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


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
    "open_store",
    "redact_url",
]
