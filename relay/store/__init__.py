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

__all__ = [
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
]
