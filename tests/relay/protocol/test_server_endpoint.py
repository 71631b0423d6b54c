"""ServerEndpoint's JSON (the reference's allocation answer, read strictly) and binary form."""

import pytest

from relay.protocol import disco
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.protocol.server_endpoint import ServerEndpoint

ANSWER = {
    "ServerDisco": "discokey:" + "ab" * 32,
    "LamportID": 7,
    "AddrPorts": ["192.0.2.1:7000", "[2001:db8::1]:7000"],
    "VNI": 1,
    "BindLifetime": "30s",
    "SteadyStateLifetime": "5m0s",
}


def test_an_answer_reads_and_writes_back_unchanged():
    endpoint = ServerEndpoint.from_json(ANSWER)
    assert endpoint == ServerEndpoint(
        DiscoPublicKey(bytes.fromhex("ab" * 32)),
        7,
        ("192.0.2.1:7000", "[2001:db8::1]:7000"),
        1,
        30.0,
        300.0,
    )
    assert endpoint.to_json() == ANSWER


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("ServerDisco", None, "key must be a string"),
        ("LamportID", None, "expected an integer, not null"),
        ("LamportID", "7", "expected an integer, not a string"),
        ("LamportID", True, "expected an integer, not a boolean"),
        ("VNI", None, "expected an integer, not null"),
        ("VNI", float("inf"), "expected an integer, not the number inf"),
        ("VNI", 1.5, "expected an integer, not the number 1.5"),
        ("AddrPorts", 949, "expected a list of strings, not an integer"),
        ("AddrPorts", "192.0.2.1:7000", "expected a list of strings, not a string"),
        ("AddrPorts", [{}], "expected a list of strings, not one holding an object"),
        ("BindLifetime", 30, "expected a duration such as '30s', not an integer"),
        ("SteadyStateLifetime", [], "expected a duration such as '30s', not a list"),
        ("BindLifetime", "1" + "0" * 300 + "h", "too large"),
        ("SteadyStateLifetime", "soon", "invalid duration"),
    ],
)
def test_a_malformed_field_is_a_value_error_naming_it(name, value, problem):
    with pytest.raises(ValueError, match=f"^{name}: .*{problem}"):
        ServerEndpoint.from_json({**ANSWER, name: value})


def test_a_missing_field_is_a_key_error():
    answer = dict(ANSWER)
    del answer["VNI"]
    with pytest.raises(KeyError, match="VNI"):
        ServerEndpoint.from_json(answer)


def test_to_disco_is_the_binary_form_of_the_same_endpoint():
    server, a, b = (DiscoPrivateKey.generate().public for _ in range(3))
    endpoint = ServerEndpoint(
        server_disco=server,
        lamport_id=5,
        addr_ports=("192.0.2.7:7777", "[2001:db8::1]:7777"),
        vni=1234,
        bind_lifetime=30.0,
        steady_state_lifetime=300.5,
        client_disco=(b, a) if b.raw > a.raw else (a, b),
    )
    binary = endpoint.to_disco()
    assert binary.client_disco == tuple(sorted((a.raw, b.raw)))
    assert binary.bind_lifetime_ns == 30_000_000_000
    assert binary.steady_state_lifetime_ns == 300_500_000_000
    assert [(str(ip), port) for ip, port in binary.addr_ports] == [
        ("192.0.2.7", 7777),
        ("2001:db8::1", 7777),
    ]
    round_trip = disco.parse(disco.marshal(disco.AllocateUDPRelayEndpointResponse(1, binary)))
    assert round_trip.endpoint == binary
    with pytest.raises(ValueError, match="two clients"):
        ServerEndpoint(server, 1, ("192.0.2.7:1",), 1, 30.0, 300.0).to_disco()
