"""Disco keys: text forms, ordering, shared secrets."""

import pytest
from nacl.public import PrivateKey

from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey, InvalidKey, raw_pair, sorted_pair

HEX = "0123456789abcdef" * 4


def test_public_key_text_round_trip():
    key = DiscoPublicKey.parse("discokey:" + HEX)
    assert key.raw == bytes.fromhex(HEX)
    assert str(key) == "discokey:" + HEX


@pytest.mark.parametrize(
    "text",
    [
        HEX,
        "discokey:" + HEX.upper(),
        "discokey:" + HEX[:-1],
        "discokey:" + HEX + "0",
        "nodekey:" + HEX,
        "discokey:" + "g" * 64,
        "",
    ],
)
def test_malformed_public_keys_are_refused(text):
    with pytest.raises(InvalidKey):
        DiscoPublicKey.parse(text)


def test_non_string_is_refused():
    with pytest.raises(InvalidKey, match="string"):
        DiscoPublicKey.parse(42)


def test_keys_order_by_raw_bytes():
    low = DiscoPublicKey(bytes([0x01] + [0xFF] * 31))
    high = DiscoPublicKey(bytes([0x02] + [0x00] * 31))
    assert low < high
    assert sorted_pair((high, low)) == (low, high)
    assert sorted_pair((low, high)) == (low, high)
    assert raw_pair((high, low)) == raw_pair((low, high)) == low.raw + high.raw


def test_private_key_text_round_trip_and_redacted_repr():
    key = DiscoPrivateKey.generate()
    assert DiscoPrivateKey.parse(key.text()) == key
    assert key.raw.hex() not in repr(key)
    assert key.raw.hex() not in str(key)


def test_public_key_matches_nacl():
    nacl_key = PrivateKey.generate()
    ours = DiscoPrivateKey(bytes(nacl_key))
    assert ours.public.raw == bytes(nacl_key.public_key)


def test_shared_key_is_symmetric():
    a, b = DiscoPrivateKey.generate(), DiscoPrivateKey.generate()
    assert a.shared(b.public) == b.shared(a.public)
    assert len(a.shared(b.public)) == 32
