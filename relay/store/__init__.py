"""Stores of allocations: one interface (:mod:`relay.store.interface`), several implementations."""

from relay.store.interface import (
    Allocation,
    AllocationResult,
    Store,
    StoreError,
    StoreUnavailable,
    VNIExhausted,
)
from relay.store.memory import MemoryStore

__all__ = [
    "Allocation",
    "AllocationResult",
    "MemoryStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "VNIExhausted",
]
