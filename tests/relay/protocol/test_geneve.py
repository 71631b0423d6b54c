"""The Geneve fixed header, byte for byte (docs/protocol.md "Underlay")."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import geneve
from relay.protocol.geneve import GeneveHeader


def test_control_header_vector():
    # version 0, O bit set, protocol Disco 0x7A11, VNI 0x123456, reserved 0
    assert geneve.encode(
        GeneveHeader(geneve.PROTOCOL_DISCO, 0x123456, control=True)
    ) == bytes.fromhex("00807a1112345600")


def test_data_header_vector():
    assert geneve.data_header(1) == bytes.fromhex("00007a1200000100")


def test_version_occupies_the_two_high_bits():
    header = geneve.encode(GeneveHeader(geneve.PROTOCOL_WIREGUARD, 7, control=False, version=3))
    assert header[0] == 0b1100_0000


def test_decode_reads_fields_as_the_protocol_says():
    header = geneve.decode(bytes.fromhex("c0c17a11fffffe99") + b"payload")
    assert header == GeneveHeader(protocol=0x7A11, vni=0xFFFFFE, control=True, version=3)


def test_decode_ignores_other_bits_of_byte_one():
    assert geneve.decode(bytes.fromhex("00407a1200000100")).control is False


@pytest.mark.parametrize("length", range(8))
def test_short_datagram_is_an_error(length):
    with pytest.raises(ValueError, match="8 bytes"):
        geneve.decode(bytes(length))


@pytest.mark.parametrize(
    "header",
    [
        GeneveHeader(geneve.PROTOCOL_DISCO, 1 << 24, control=True),
        GeneveHeader(geneve.PROTOCOL_DISCO, -1, control=True),
        GeneveHeader(geneve.PROTOCOL_DISCO, 1, control=True, version=4),
    ],
)
def test_out_of_range_fields_are_errors(header):
    with pytest.raises(ValueError):
        geneve.encode(header)


@given(
    protocol=st.integers(0, 0xFFFF),
    vni=st.integers(0, geneve.MAX_VNI),
    control=st.booleans(),
    version=st.integers(0, 3),
)
def test_encode_decode_round_trip(protocol, vni, control, version):
    header = GeneveHeader(protocol, vni, control, version)
    encoded = geneve.encode(header)
    assert len(encoded) == geneve.HEADER_LEN
    assert geneve.decode(encoded) == header
