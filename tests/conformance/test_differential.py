"""The same scripted packets to both servers must give the same replies and forwarding.

Each step is one datagram that docs/protocol.md has a rule for; the sentinel
technique of :mod:`wire_script` makes "nothing came back" an exact observation.
The one rule on which the reference's v1.84.0 code departs from docs/protocol.md
(re-allocating a bound pair) is checked per server at the end.
"""

from __future__ import annotations

import pytest
from nacl import bindings

from relay.protocol import disco, geneve
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey
from tests.conformance.servers import ServerProcess
from tests.conformance.wire_script import Conversation, post_allocation

UNALLOCATED_VNI = 0xFFFFFE


def sealed(client, payload: bytes, vni: int | None = None) -> bytes:
    """A control datagram from ``client`` carrying ``payload`` as the box's plaintext."""
    nonce = bytes(range(24))
    box = bindings.crypto_box_afternm(payload, nonce, client.private_key.shared(client.server_key))
    header = geneve.control_header(client.vni if vni is None else vni)
    return header + disco.MAGIC + client.public_key.raw + nonce + box


def answer(client, challenge: bytes) -> bytes:
    return client.control(disco.BindUDPRelayEndpointAnswer(challenge))


def run_script(server: ServerProcess) -> tuple[list[tuple], dict]:
    c = Conversation(server.url, server.udp)
    try:
        c.open_sentinel()
        e1 = c.allocate("E1", ("A", "B"))
        c.allocate("E2", ("C", "D"))
        a, b, cc = c.client("A"), c.client("B"), c.client("C")
        stranger = DiscoPrivateKey.generate()

        c.step("short packet", "x", b"\x00\x80\x7a\x11\x00\x00")
        c.step("data to an unallocated VNI", "x", geneve.data_header(UNALLOCATED_VNI) + b"hi")
        c.step(
            "bind to an unallocated VNI",
            "a",
            sealed(a, disco.marshal(disco.BindUDPRelayEndpoint()), UNALLOCATED_VNI),
            owner="A",
        )
        c.step("data before anyone bound", "a", a.data(b"early"))
        bind = bytearray(a.bind())
        bind[8] ^= 0xFF
        c.step("bad magic", "a", bytes(bind))
        bind = bytearray(a.bind())
        bind[2:4] = geneve.PROTOCOL_WIREGUARD.to_bytes(2, "big")
        c.step("control with the WireGuard protocol", "a", bytes(bind))
        intruder = RelayClient(stranger, a.server_key, a.vni, protocol=0)
        c.step("bind with a foreign key", "x", intruder.bind())
        bind = bytearray(a.bind())
        bind[-3] ^= 0x10
        c.step("undecryptable box", "a", bytes(bind))
        c.step("frame shorter than its header", "a", a.bind()[: 8 + 6 + 32 + 10])
        c.step("ping-type message", "a", sealed(a, bytes.fromhex("0100") + bytes(12 + 32)))
        c.step("bind B", "b", b.bind(), owner="B")
        c.step("correct answer B", "b", answer(b, c.challenge_of("b")))

        def rejected(name: str, sender: str, datagram: bytes, owner: str | None = None) -> None:
            """A step that must not bind A, then B's data to show whether A became bound."""
            c.step(name, sender, datagram, owner)
            c.step(f"{name}: then B sends data", "b", b.data(b"probe"))

        rejected("answer A before bind", "a", answer(a, bytes(32)), owner="A")
        c.step("bind A", "a", a.bind())
        challenge_a = c.challenge_of("a")
        c.step("bind A again from the same source", "a", a.bind())
        rejected("bind A from a second source", "a2", a.bind(), owner="A")
        rejected("wrong answer", "a", answer(a, bytes(32)))
        rejected("short answer", "a", sealed(a, bytes.fromhex("0600") + bytes(8)))
        rejected("answer from a second source", "a2", answer(a, challenge_a))
        rejected("answer with B's challenge", "a", answer(a, c.challenge_of("b")))
        rejected(
            "answer sealed with a foreign key",
            "a",
            RelayClient(stranger, a.server_key, a.vni, protocol=0).control(
                disco.BindUDPRelayEndpointAnswer(challenge_a)
            ),
        )
        c.step("correct answer A", "a", answer(a, challenge_a))
        c.step("bind A after A bound", "a", a.bind())
        c.step("data A to B", "a", a.data(b"to b"))
        c.step("data B to A", "b", b.data(b"to a" * 300))
        c.step("data from a third address", "x", a.data(b"stranger"))
        c.step("data from A's second source", "a2", a.data(b"moved"))
        c.step("control after bound", "b", b.bind())
        c.step(
            "data with the Disco protocol and control clear",
            "a",
            geneve.encode(geneve.GeneveHeader(geneve.PROTOCOL_DISCO, a.vni, False)) + b"dd",
        )
        c.step("data with version bits set", "a", bytes([0xC0]) + a.data(b"v3")[1:])
        version_bind = bytearray(cc.bind())
        version_bind[0] = 0x40
        c.step("bind C with version bits set", "c", bytes(version_bind), owner="C")
        c_on_e1 = sealed(cc, bytes.fromhex("0600") + c.challenge_of("c"), a.vni)
        c.step("C's answer on E1's VNI", "c", c_on_e1)

        e2 = c.endpoints["E2"].response
        status, again = post_allocation(
            server.url, [str(k.public_key) for k in (c.client("D"), cc)]
        )
        c.trace.append(("re-allocate the unbound pair E2", status, again == e2))
        status, after_bind = post_allocation(server.url, [str(k.public_key) for k in (b, a)])
        realloc = (status, after_bind, e1.response)
        return c.trace, {"realloc_after_bind": realloc}
    finally:
        c.close()


@pytest.fixture(scope="module")
def both_traces(go_helpers):
    traces = {}
    for kind in ("ours", "reference"):
        server = ServerProcess.start(kind)
        try:
            traces[kind] = run_script(server)
        finally:
            server.stop()
    return traces


def test_both_servers_reply_and_forward_alike_step_by_step(both_traces):
    ours, reference = both_traces["ours"][0], both_traces["reference"][0]
    assert [step[0] for step in ours] == [step[0] for step in reference]
    for ours_step, reference_step in zip(ours, reference, strict=True):
        assert ours_step == reference_step, ours_step[0]


def test_the_script_exercises_replies_forwarding_and_silence(both_traces):
    trace = dict((step[0], step[1:]) for step in both_traces["ours"][0])
    assert trace["bind A"] == ((("a", ("challenge", "E1", 2)),),)
    assert trace["bind A again from the same source"] == ((("a", ("challenge", "E1", 2)),),)
    assert trace["wrong answer: then B sends data"] == ((),)
    assert trace["correct answer A"] == ((),)
    assert trace["data A to B"] == ((("b", ("data", "E1", b"to b")),),)
    assert trace["data B to A"] == ((("a", ("data", "E1", b"to a" * 300)),),)
    assert trace["data from a third address"] == ((),)
    assert trace["wrong answer"] == ((),)
    assert trace["re-allocate the unbound pair E2"] == (200, True)


def test_reallocating_a_bound_pair(both_traces):
    """docs/protocol.md: a new allocation with a larger LamportID. v1.84.0: the same one back."""
    status, response, first = both_traces["ours"][1]["realloc_after_bind"]
    assert status == 200
    assert response["LamportID"] > first["LamportID"] and response["VNI"] != first["VNI"]
    status, response, first = both_traces["reference"][1]["realloc_after_bind"]
    assert (status, response) == (200, first)


def test_allocation_json_matches_field_by_field(both_traces):
    ours = dict(both_traces["ours"][1]["realloc_after_bind"][2])
    reference = both_traces["reference"][1]["realloc_after_bind"][2]
    # ClientDisco came with version 1's API (tailscale.com v1.102.5), after this reference.
    client_disco = ours.pop("ClientDisco")
    assert len(set(client_disco)) == 2 and client_disco == sorted(client_disco)
    assert list(ours) == list(reference)
    for name in ours:
        assert type(ours[name]) is type(reference[name]), name
    for name in ("LamportID", "VNI", "BindLifetime", "SteadyStateLifetime"):
        assert ours[name] == reference[name], name
    assert ours["ServerDisco"].startswith("discokey:") and len(ours["ServerDisco"]) == 73
    assert [a.split(":")[0] for a in ours["AddrPorts"]] == [
        a.split(":")[0] for a in reference["AddrPorts"]
    ]
