"""Our disco codecs against the reference's own, tailscale.com v1.102.5, byte for byte.

``disco-codec`` (tests/conformance_v1/cmd/disco-codec) marshals a message described
in JSON with the reference's AppendMarshal, and parses hex with its disco.Parse.
For generated messages of types 0x04 to 0x09 (version 1 binds and the three
allocation messages) our marshal must write the reference's bytes and both
sides must read them back to the same fields; for damaged allocation payloads
both must refuse the same ones and read the rest alike.
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import disco
from relay.protocol.addresses import format_host_port, parse_host_port
from relay.protocol.keys import DiscoPublicKey
from tests.conformance.servers import BIN
from tests.relay.protocol.test_disco_v1_messages import allocation_messages, raw_keys

DISCO_CODEC = BIN / "disco-codec"
EXAMPLES = 300

BIND_NAMES = {
    disco.TYPE_BIND: "BindUDPRelayEndpoint",
    disco.TYPE_CHALLENGE: "BindUDPRelayEndpointChallenge",
    disco.TYPE_ANSWER: "BindUDPRelayEndpointAnswer",
}
ALLOCATION_NAMES = {
    disco.TYPE_CALL_ME_MAYBE_VIA: "CallMeMaybeVia",
    disco.TYPE_ALLOCATE_REQUEST: "AllocateUDPRelayEndpointRequest",
    disco.TYPE_ALLOCATE_RESPONSE: "AllocateUDPRelayEndpointResponse",
}

bind_v1_messages = st.builds(
    disco.BindV1,
    type=st.sampled_from(disco.BIND_TYPES),
    vni=st.integers(0, 2**32 - 1),
    generation=st.integers(0, 2**32 - 1),
    remote_key=raw_keys,
    challenge=st.binary(min_size=disco.CHALLENGE_LEN, max_size=disco.CHALLENGE_LEN),
)


@st.composite
def damaged_allocation_payloads(draw) -> bytes:
    """An allocation message's payload, perhaps cut short, lengthened (by whole addresses or
    not) or of another version."""
    payload = disco.marshal(draw(allocation_messages))
    version = draw(st.sampled_from((0, 0, 0, 1, 255)))
    body = payload[2 : 2 + draw(st.one_of(st.just(len(payload)), st.integers(0, len(payload))))]
    tail = st.one_of(st.just(b""), st.binary(max_size=40), st.binary(min_size=18, max_size=18))
    return bytes((payload[0], version)) + body + draw(tail)


class Codec:
    """The running disco-codec: one JSON line in, one JSON line out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(DISCO_CODEC)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"disco-codec ended: {self.process.communicate()[1]}")
        return json.loads(line)

    def marshal(self, message: disco.Message) -> bytes:
        name, fields = to_go(message)
        return bytes.fromhex(self.ask({"type": name, "message": fields})["hex"])

    def parse(self, payload: bytes) -> dict[str, Any]:
        return self.ask({"hex": payload.hex()})

    def close(self) -> None:
        self.process.communicate(timeout=10)


@pytest.fixture(scope="module")
def codec(go_helpers):
    codec = Codec()
    yield codec
    codec.close()


def _key(raw: bytes) -> str:
    return str(DiscoPublicKey(raw))


def _raw(text: str) -> bytes:
    return DiscoPublicKey.parse(text).raw


def _endpoint_to_go(endpoint: disco.UDPRelayEndpoint) -> dict[str, Any]:
    return {
        "ServerDisco": _key(endpoint.server_disco),
        "ClientDisco": [_key(k) for k in endpoint.client_disco],
        "LamportID": endpoint.lamport_id,
        "VNI": endpoint.vni,
        "BindLifetime": endpoint.bind_lifetime_ns,
        "SteadyStateLifetime": endpoint.steady_state_lifetime_ns,
        "AddrPorts": [format_host_port(str(ip), port) for ip, port in endpoint.addr_ports],
    }


def _endpoint_from_go(fields: dict[str, Any]) -> disco.UDPRelayEndpoint:
    addr_ports = []
    for text in fields["AddrPorts"]:
        host, port = parse_host_port(text)
        addr_ports.append((ip_address(host), port))
    return disco.UDPRelayEndpoint(
        _raw(fields["ServerDisco"]),
        (_raw(fields["ClientDisco"][0]), _raw(fields["ClientDisco"][1])),
        fields["LamportID"],
        fields["VNI"],
        fields["BindLifetime"],
        fields["SteadyStateLifetime"],
        tuple(addr_ports),
    )


def to_go(message: disco.Message) -> tuple[str, dict[str, Any]]:
    """The reference's type name and its Go struct's JSON for one of our messages."""
    match message:
        case disco.BindV1(kind, vni, generation, remote_key, challenge):
            fields = {
                "VNI": vni,
                "Generation": generation,
                "RemoteKey": _key(remote_key),
                "Challenge": list(challenge),
            }
            return BIND_NAMES[kind], fields
        case disco.CallMeMaybeVia(endpoint):
            return "CallMeMaybeVia", _endpoint_to_go(endpoint)
        case disco.AllocateUDPRelayEndpointRequest(client_disco, generation):
            keys = [_key(k) for k in client_disco]
            return "AllocateUDPRelayEndpointRequest", {
                "ClientDisco": keys,
                "Generation": generation,
            }
        case disco.AllocateUDPRelayEndpointResponse(generation, endpoint):
            return "AllocateUDPRelayEndpointResponse", {
                "Generation": generation,
                **_endpoint_to_go(endpoint),
            }
    raise TypeError(f"no reference form for {message!r}")


def from_go(name: str, fields: dict[str, Any]) -> disco.Message:
    """One of our messages from the reference's type name and JSON."""
    if name in BIND_NAMES.values():
        kind = next(k for k, n in BIND_NAMES.items() if n == name)
        challenge = bytes(fields["Challenge"])
        return disco.BindV1(
            kind, fields["VNI"], fields["Generation"], _raw(fields["RemoteKey"]), challenge
        )
    if name == "CallMeMaybeVia":
        return disco.CallMeMaybeVia(_endpoint_from_go(fields))
    if name == "AllocateUDPRelayEndpointRequest":
        keys = fields["ClientDisco"]
        return disco.AllocateUDPRelayEndpointRequest(
            (_raw(keys[0]), _raw(keys[1])), fields["Generation"]
        )
    if name == "AllocateUDPRelayEndpointResponse":
        return disco.AllocateUDPRelayEndpointResponse(
            fields["Generation"], _endpoint_from_go(fields)
        )
    raise ValueError(f"not a message type of this test: {name}")


def _is_zero(value: Any) -> bool:
    if isinstance(value, list):
        return all(map(_is_zero, value))
    return value in (0, None, _key(bytes(32)))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(allocation_messages, bind_v1_messages))
def test_our_marshal_writes_the_references_bytes(codec, message):
    ours = disco.marshal(message)
    assert codec.marshal(message) == ours
    reference = codec.parse(ours)
    assert from_go(reference["type"], reference["message"]) == message
    assert disco.parse(ours) == message


@settings(max_examples=EXAMPLES, deadline=None)
@given(damaged_allocation_payloads())
def test_both_refuse_and_read_damaged_payloads_alike(codec, payload):
    reference = codec.parse(payload)
    if "error" in reference:
        with pytest.raises(disco.DiscoError):
            disco.parse(payload)
        return
    ours = disco.parse(payload)
    assert reference["type"] == ALLOCATION_NAMES[payload[0]]
    if payload[1] != disco.MESSAGE_VERSION:
        # The reference reads no field of another version: an empty message; we say OtherMessage.
        assert ours == disco.OtherMessage(payload[0])
        assert _is_zero(list(reference["message"].values())), reference
        return
    assert ours == from_go(reference["type"], reference["message"])


def test_the_codec_tells_a_refusal_from_a_message(codec):
    assert "error" in codec.parse(bytes.fromhex("0800") + bytes(67))
    assert (
        codec.parse(bytes.fromhex("0800") + bytes(68))["type"] == "AllocateUDPRelayEndpointRequest"
    )
