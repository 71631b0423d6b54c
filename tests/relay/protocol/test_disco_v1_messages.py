"""Allocation over disco: 0x07 CallMeMaybeVia, 0x08 and 0x09, byte for byte from their layout.

The layouts are those of tailscale.com v1.102.5 (docs/protocol.md "Version 1: allocation
over disco"); tests/conformance/test_disco_codec.py checks the same codecs against the
reference's Go encoder. The strategies here generate the messages for both.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import disco
from relay.protocol.core import Drop, Handshake
from tests.relay.core_harness import A_ADDR, CoreHarness

SERVER = bytes(range(32))
CLIENT_A = bytes(range(32, 64))
CLIENT_B = bytes(range(64, 96))

raw_keys = st.binary(min_size=32, max_size=32)
key_pairs = st.tuples(raw_keys, raw_keys)
durations = st.integers(-(2**63), 2**63 - 1)
addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None),
)
addr_ports = st.tuples(addresses, st.integers(0, 65535))
endpoints = st.builds(
    disco.UDPRelayEndpoint,
    server_disco=raw_keys,
    client_disco=key_pairs,
    lamport_id=st.integers(0, 2**64 - 1),
    vni=st.integers(0, 2**32 - 1),
    bind_lifetime_ns=durations,
    steady_state_lifetime_ns=durations,
    addr_ports=st.lists(addr_ports, min_size=1, max_size=4).map(tuple),
)
generations = st.integers(0, 2**32 - 1)
allocation_messages = st.one_of(
    st.builds(disco.CallMeMaybeVia, endpoints),
    st.builds(disco.AllocateUDPRelayEndpointRequest, key_pairs, generations),
    st.builds(disco.AllocateUDPRelayEndpointResponse, generations, endpoints),
)
"""Every message of types 0x07, 0x08 and 0x09 that marshal accepts."""


def endpoint(**changes) -> disco.UDPRelayEndpoint:
    fields = {
        "server_disco": SERVER,
        "client_disco": (CLIENT_A, CLIENT_B),
        "lamport_id": 0x0102030405060708,
        "vni": 0x00ABCDEF,
        "bind_lifetime_ns": 30_000_000_000,
        "steady_state_lifetime_ns": 300_000_000_000,
        "addr_ports": ((IPv4Address("192.0.2.7"), 7000), (IPv6Address("2001:db8::1"), 443)),
    }
    return disco.UDPRelayEndpoint(**(fields | changes))


ENDPOINT_BYTES = (
    SERVER
    + CLIENT_A
    + CLIENT_B
    + bytes.fromhex("0102030405060708")  # LamportID
    + bytes.fromhex("00abcdef")  # VNI, 32 bits here
    + (30_000_000_000).to_bytes(8, "big")
    + (300_000_000_000).to_bytes(8, "big")
    + bytes.fromhex("00000000000000000000ffffc0000207")
    + bytes.fromhex("1b58")
    + bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("01bb")
)


def test_call_me_maybe_via_layout():
    message = disco.CallMeMaybeVia(endpoint())
    assert disco.marshal(message) == bytes.fromhex("0700") + ENDPOINT_BYTES
    assert disco.parse(bytes.fromhex("0700") + ENDPOINT_BYTES) == message


def test_allocation_request_layout():
    message = disco.AllocateUDPRelayEndpointRequest((CLIENT_A, CLIENT_B), 0xDEADBEEF)
    payload = bytes.fromhex("0800") + CLIENT_A + CLIENT_B + bytes.fromhex("deadbeef")
    assert disco.marshal(message) == payload
    assert disco.parse(payload) == message


def test_allocation_response_layout():
    message = disco.AllocateUDPRelayEndpointResponse(7, endpoint())
    payload = bytes.fromhex("0900") + bytes.fromhex("00000007") + ENDPOINT_BYTES
    assert disco.marshal(message) == payload
    assert disco.parse(payload) == message


@given(allocation_messages)
def test_parse_reads_what_marshal_writes(message):
    assert disco.parse(disco.marshal(message)) == message


def test_durations_are_signed_nanoseconds():
    message = disco.CallMeMaybeVia(endpoint(bind_lifetime_ns=-1, steady_state_lifetime_ns=-(2**63)))
    payload = disco.marshal(message)
    assert payload[2 + 108 : 2 + 124] == b"\xff" * 8 + b"\x80" + bytes(7)
    assert disco.parse(payload) == message


def test_an_ipv4_mapped_address_reads_as_ipv4():
    mapped = ENDPOINT_BYTES[:124] + bytes(10) + b"\xff\xff" + bytes((10, 0, 0, 1)) + b"\x00\x50"
    parsed = disco.parse(bytes.fromhex("0700") + mapped)
    assert isinstance(parsed, disco.CallMeMaybeVia)
    assert parsed.endpoint.addr_ports == ((IPv4Address("10.0.0.1"), 80),)


def test_addresses_run_to_the_end_of_the_body():
    extra = bytes(16) + b"\x00\x01"
    parsed = disco.parse(bytes.fromhex("0700") + ENDPOINT_BYTES + extra)
    assert isinstance(parsed, disco.CallMeMaybeVia)
    assert parsed.endpoint.addr_ports[-1] == (IPv6Address("::"), 1)
    assert len(parsed.endpoint.addr_ports) == 3


def test_an_allocation_request_ignores_trailing_bytes():
    payload = bytes.fromhex("0800") + CLIENT_A + CLIENT_B + bytes.fromhex("00000001") + b"more"
    assert disco.parse(payload) == disco.AllocateUDPRelayEndpointRequest((CLIENT_A, CLIENT_B), 1)


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("0700"),
        bytes.fromhex("0700") + ENDPOINT_BYTES[:124],
        bytes.fromhex("0700") + ENDPOINT_BYTES + b"\x00",
        bytes.fromhex("0700") + ENDPOINT_BYTES[:-1],
        bytes.fromhex("0800") + bytes(67),
        bytes.fromhex("0900") + bytes(3),
        bytes.fromhex("0900") + bytes(4) + ENDPOINT_BYTES[:124],
        bytes.fromhex("0900") + bytes(4) + ENDPOINT_BYTES + bytes(17),
    ],
    ids=[
        "cmmv-empty",
        "cmmv-no-address",
        "cmmv-trailing-byte",
        "cmmv-cut-address",
        "request-short",
        "response-no-generation",
        "response-no-address",
        "response-cut-address",
    ],
)
def test_short_or_misaligned_bodies_are_errors(payload):
    with pytest.raises(disco.DiscoError):
        disco.parse(payload)


@pytest.mark.parametrize("kind", disco.ALLOCATION_TYPES)
def test_another_version_is_not_read(kind):
    assert disco.parse(bytes((kind, 1)) + bytes(200)) == disco.OtherMessage(kind)
    assert disco.parse(bytes((kind, 1))) == disco.OtherMessage(kind)


@pytest.mark.parametrize(
    "message",
    [
        disco.CallMeMaybeVia(endpoint(addr_ports=())),
        disco.CallMeMaybeVia(endpoint(addr_ports=((IPv6Address("::ffff:10.0.0.1"), 1),))),
        disco.CallMeMaybeVia(endpoint(addr_ports=((IPv6Address("fe80::1%eth0"), 1),))),
        disco.CallMeMaybeVia(endpoint(addr_ports=(("192.0.2.1", 1),))),
        disco.CallMeMaybeVia(endpoint(addr_ports=((IPv4Address("192.0.2.1"), 65536),))),
        disco.CallMeMaybeVia(endpoint(server_disco=bytes(31))),
        disco.CallMeMaybeVia(endpoint(client_disco=(CLIENT_A,))),
        disco.CallMeMaybeVia(endpoint(lamport_id=2**64)),
        disco.CallMeMaybeVia(endpoint(vni=-1)),
        disco.CallMeMaybeVia(endpoint(bind_lifetime_ns=2**63)),
        disco.AllocateUDPRelayEndpointRequest((CLIENT_A, CLIENT_B), 2**32),
        disco.AllocateUDPRelayEndpointResponse(-1, endpoint()),
    ],
    ids=[
        "no-address",
        "mapped-ipv6",
        "scoped-ipv6",
        "text-address",
        "port",
        "short-key",
        "one-client",
        "lamport-id",
        "vni",
        "duration",
        "request-generation",
        "response-generation",
    ],
)
def test_marshal_refuses_what_would_not_read_back(message):
    with pytest.raises(ValueError):
        disco.marshal(message)


@pytest.mark.parametrize(
    "message",
    [
        disco.CallMeMaybeVia(endpoint()),
        disco.AllocateUDPRelayEndpointRequest((CLIENT_A, CLIENT_B), 1),
        disco.AllocateUDPRelayEndpointResponse(1, endpoint()),
    ],
    ids=["0x07", "0x08", "0x09"],
)
def test_the_relay_core_drops_them_as_unexpected(message):
    h = CoreHarness()
    pair = h.allocate()
    assert h.send(pair.a.control(message), A_ADDR) is None
    assert h.drops() == {Drop.UNEXPECTED_MESSAGE.value: 1}
    assert h.core.endpoint(1).clients[0].handshake is Handshake.INIT
