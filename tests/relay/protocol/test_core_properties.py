"""Random and mutated packets thrown at the core: nothing escapes, nothing changes unearned.

The oracle decides independently of the core (with the client's keys) whether
a datagram is a well-formed bind or answer from a client of its VNI's
endpoint. Only such a message may change handshake state, and only of that
endpoint; only a data packet from a bound address may move counters.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.protocol import disco, geneve
from relay.protocol.core import Handshake
from tests.relay.core_harness import A_ADDR, B_ADDR, STRANGER_ADDR, CoreHarness

X_ADDR = ("192.0.2.10", 50010)
Y_ADDR = ("192.0.2.11", 50011)
SOURCES = [A_ADDR, B_ADDR, X_ADDR, Y_ADDR, STRANGER_ADDR]


def build():
    """Three endpoints: VNI 1 fresh, VNI 2 half-way (a challenged), VNI 3 bound."""
    h = CoreHarness()
    fresh = h.allocate(vni=1, lamport_id=1)
    half = h.allocate(vni=2, lamport_id=2)
    h.challenge_for(half.a, A_ADDR)
    bound = h.allocate(vni=3, lamport_id=3)
    h.bind_pair(bound, X_ADDR, Y_ADDR)
    h.core.take_bound()
    return h, {1: fresh, 2: half, 3: bound}


def valid_datagrams(h, pairs):
    out = []
    for pair in pairs.values():
        for index, client in enumerate(pair.clients):
            challenge = h.core.challenge(pair.allocation, index)
            out.append(client.bind())
            out.append(client.control(disco.BindUDPRelayEndpointAnswer(challenge)))
            out.append(client.control(disco.BindUDPRelayEndpointAnswer(bytes(32))))
            out.append(client.data(b"payload"))
    return out


def valid_message_from(pairs, datagram: bytes):
    """(vni, client index) if ``datagram`` is a well-formed bind or answer, else None."""
    try:
        header = geneve.decode(datagram)
    except ValueError:
        return None
    pair = pairs.get(header.vni)
    if pair is None or not header.control or header.protocol != geneve.PROTOCOL_DISCO:
        return None
    frame = datagram[geneve.HEADER_LEN :]
    try:
        sender = disco.frame_sender(frame)
    except disco.DiscoError:
        return None
    for index, client in enumerate(pair.clients):
        if sender == client.public_key.raw:
            try:
                shared = client.private_key.shared(client.server_key)
                message = disco.parse(disco.open_frame(frame, shared))
            except disco.DiscoError:
                return None
            if isinstance(message, disco.BindUDPRelayEndpoint | disco.BindUDPRelayEndpointAnswer):
                return header.vni, index
    return None


@st.composite
def mutated(draw, datagram: bytes) -> bytes:
    kind = draw(st.sampled_from(["same", "flip", "truncate", "extend", "header", "vni"]))
    data = bytearray(datagram)
    if kind == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data))) :]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "header" and len(data) >= 8:
        data[:8] = draw(st.binary(min_size=8, max_size=8))
    elif kind == "vni" and len(data) >= 8:
        data[4:7] = draw(st.integers(0, 5)).to_bytes(3, "big")
    return bytes(data)


packet_choice = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=200)),
    st.tuples(st.just("valid"), st.integers(0, 23)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(packet_choice, st.sampled_from(SOURCES), st.data()), min_size=1, max_size=6
    )
)
def test_no_exception_and_no_unearned_state_change(steps):
    h, pairs = build()
    valid = valid_datagrams(h, pairs)
    for (kind, value), source, data in steps:
        datagram = value if kind == "random" else data.draw(mutated(valid[value]))
        before = h.snapshot()
        h.now += 1
        out = h.core.handle(datagram, source, h.now)
        after = h.snapshot()
        earned = valid_message_from(pairs, datagram)
        vni = (datagram[4] << 16 | datagram[5] << 8 | datagram[6]) if len(datagram) >= 8 else None
        for endpoint_vni in before:
            if endpoint_vni != vni:
                assert after[endpoint_vni] == before[endpoint_vni]
        if vni not in before:
            assert out is None
            continue
        state, addr, *_, bound = before[vni]
        endpoint = h.core.endpoint(vni)
        if datagram[1] & geneve.CONTROL_BIT:
            if earned is None:
                assert after[vni] == before[vni]
                assert out is None
            else:
                index = earned[1]
                other = 1 - index
                assert after[vni][0][other] == state[other]
                assert after[vni][1][other] == addr[other]
                if out is not None:
                    assert out[1] == source == endpoint.clients[index].addr
                    assert endpoint.clients[index].handshake is Handshake.CHALLENGE_SENT
        else:
            assert after[vni][:2] == (state, addr)
            forwarded = bound and source in addr
            if forwarded:
                assert out == (datagram, addr[1 - addr.index(source)])
            else:
                assert out is None
                assert after[vni] == before[vni]
