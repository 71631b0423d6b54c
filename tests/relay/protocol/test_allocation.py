"""An allocation's clients' keys, held as 64 raw bytes."""

import pytest

from relay.protocol.allocation import Allocation
from relay.protocol.keys import DiscoPrivateKey, raw_pair, sorted_pair

LOW, HIGH = sorted_pair((DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public))


def allocation() -> Allocation:
    return Allocation("relay", 7, 3, raw_pair((HIGH, LOW)), 1000.0)


def test_the_keys_come_back_in_raw_byte_order_and_by_index():
    made = allocation()
    assert made.disco_keys == (LOW, HIGH)
    assert (made.client_key(0), made.client_key(1)) == (LOW.raw, HIGH.raw)
    assert made.client_index(LOW.raw) == 0
    assert made.client_index(HIGH.raw) == 1
    assert made.client_index(DiscoPrivateKey.generate().public.raw) is None


def test_a_bound_copy_keeps_the_keys():
    bound = allocation().as_bound()
    assert bound.bound and bound.raw_keys == allocation().raw_keys
    assert bound.disco_keys == (LOW, HIGH)


@pytest.mark.parametrize("raw_keys", [LOW.raw, LOW.raw + HIGH.raw + b"\0", (LOW, HIGH)])
def test_anything_but_two_raw_keys_is_refused(raw_keys):
    with pytest.raises(ValueError, match="two raw keys"):
        Allocation("relay", 7, 3, raw_keys, 1000.0)
