"""What only the memory store must show: it does not pre-allocate the VNI space.

The allocation rules every store shares are tested in test_rules.py.
"""

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPrivateKey
from relay.store import MemoryStore
from relay.store.memory import _VniBits


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


@given(st.lists(st.tuples(st.booleans(), st.integers(1, MAX_VNI)), max_size=60))
def test_the_bound_marks_hold_exactly_the_vnis_marked_and_not_discarded(steps):
    """Bound marks are bits of a bitmap grown up to the highest VNI marked: every VNI
    keeps its own bit, however far the bitmap has grown."""
    bits, marked = _VniBits(), set()
    for add, vni in steps:
        if add:
            bits.add(vni)
            marked.add(vni)
        else:
            bits.discard(vni)
            marked.discard(vni)
    probes = {v + d for v in marked for d in (-1, 0, 1)} | {1, MAX_VNI}
    assert {v for v in probes if v in bits} == marked


async def test_bound_marks_of_a_million_low_vnis_take_a_bit_each():
    store = MemoryStore()
    state = store._relay("r")
    for vni in range(1, 1_000_001, 997):
        state.bound.add(vni)
    assert len(state.bound._bits) <= 2 * 1_000_000 // 8 + 1
