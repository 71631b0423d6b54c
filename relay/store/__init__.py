"""Where a relay's allocations live, behind one interface, so no caller knows which store it has.

:mod:`~relay.store.interface` is the interface every store offers the relay
and the operator (allocate, mark bound, free, read, follow changes, the
relay registry), applying docs/protocol.md "Allocation" atomically.
:mod:`~relay.store.memory` keeps one process's allocations in dicts (the
standalone relay, the tests); :mod:`~relay.store.redis` keeps a fleet's in
Redis, with its Lua scripts in :mod:`~relay.store.scripts`;
:mod:`~relay.store.urls` reads ``--store`` URLs and shows them without the
password. :func:`open_store` picks the store a ``--store`` value names.
"""

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
from relay.store.urls import REDIS_SCHEMES, check_store_url, redact_url

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
