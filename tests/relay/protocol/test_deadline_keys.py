"""The expiry heap's entries: a deadline and a VNI as one int, in the deadline's order."""

import sys
import time

from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.deadline_keys import deadline_key, key_deadline, key_vni
from relay.protocol.geneve import MAX_VNI

deadlines = st.floats(allow_nan=False, allow_infinity=False).map(lambda d: d or 0.0)
vnis = st.integers(0, MAX_VNI)


@given(deadlines, vnis)
def test_a_key_gives_back_its_deadline_exactly_and_its_vni(deadline, vni):
    key = deadline_key(deadline, vni)
    assert key_deadline(key) == deadline
    assert key_vni(key) == vni


@given(deadlines, vnis, deadlines, vnis)
def test_keys_order_as_their_deadlines_then_their_vnis(d1, v1, d2, v2):
    k1, k2 = deadline_key(d1, v1), deadline_key(d2, v2)
    assert (k1 < k2) == ((d1, v1) < (d2, v2))
    assert (k1 == k2) == ((d1, v1) == (d2, v2))


def test_a_key_is_one_int_smaller_than_a_tuple_and_its_float():
    deadline = time.time() + 300.0
    key = deadline_key(deadline, MAX_VNI)
    assert sys.getsizeof(key) < sys.getsizeof((deadline, MAX_VNI)) + sys.getsizeof(deadline)
    assert sys.getsizeof(key) <= 36
