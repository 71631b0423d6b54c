"""What only the memory store must show: it does not pre-allocate the VNI space.

The allocation rules every store shares are tested in test_rules.py.
"""

import tracemalloc

from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPrivateKey
from relay.store import MemoryStore


def pair():
    return DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public


async def test_memory_grows_with_allocations_not_with_the_vni_space():
    """The reference pre-allocates a 64 MB pool of 2^24 VNIs; this store must not."""
    tracemalloc.start()
    try:
        store = MemoryStore(max_vni=MAX_VNI)
        await store.allocate("r", pair(), 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
