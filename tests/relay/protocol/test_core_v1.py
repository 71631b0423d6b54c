"""Protocol version 1 in the core: every rule of docs/protocol.md "Version 1", on a fake clock.

Version 0 clients are served beside it on the same core (tests/relay/protocol/test_core.py);
which version a message is goes by the length of its body.
"""

from __future__ import annotations

import pytest

from relay.protocol import disco, geneve
from relay.protocol.core import Drop, Handshake
from tests.relay.core_harness import A_ADDR, B_ADDR, STRANGER_ADDR, CoreHarness, Pair

MOVED_ADDR = ("192.0.2.9", 40009)


@pytest.fixture
def h() -> CoreHarness:
    return CoreHarness()


def remote(pair: Pair, index: int):
    """The key a client of ``pair`` names as RemoteKey: the other client's."""
    return pair.clients[1 - index].public_key


def bind_v1(h: CoreHarness, pair: Pair, index: int, source, generation: int = 1) -> None:
    client = pair.clients[index]
    reply = h.send(client.bind_v1(remote(pair, index), generation), source)
    assert reply is not None and reply[1] == source
    assert h.send(client.answer(reply[0]), source) is None


def bind_pair_v1(h: CoreHarness, pair: Pair) -> None:
    bind_v1(h, pair, 0, A_ADDR)
    bind_v1(h, pair, 1, B_ADDR)
    assert h.core.endpoint(pair.allocation.vni).bound


def test_a_v1_pair_binds_and_relays(h):
    pair = h.allocate()
    bind_pair_v1(h, pair)
    packet = pair.a.data(b"hello")
    assert h.send(packet, A_ADDR) == (packet, B_ADDR)
    assert h.core.handshakes_completed == 2
    assert h.drops() == {}


def test_the_challenge_echoes_the_bind_and_is_sealed_to_its_sender(h):
    pair = h.allocate(vni=7)
    reply = h.send(pair.a.bind_v1(remote(pair, 0), 41), A_ADDR)
    assert reply is not None
    assert geneve.decode(reply[0]).control
    message = pair.a.read_control(reply[0])
    assert isinstance(message, disco.BindV1)
    assert message.type == disco.TYPE_CHALLENGE
    assert (message.vni, message.generation, message.remote_key) == (7, 41, pair.b.public_key.raw)
    assert message.challenge != bytes(disco.CHALLENGE_LEN)
    assert h.core.endpoint(7).clients[0].handshake is Handshake.CHALLENGE_SENT
    assert h.core.endpoint(7).clients[0].addr is None  # no source is recorded at the bind


def test_every_bind_gets_a_challenge(h):
    pair = h.allocate()
    for generation in (1, 2, 2):
        assert h.send(pair.a.bind_v1(remote(pair, 0), generation), A_ADDR) is not None
    assert h.drops() == {}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"vni": 99}, Drop.WRONG_VNI),
        ({"remote_key": bytes(32)}, Drop.WRONG_REMOTE_KEY),
        ({"remote_key": "self"}, Drop.WRONG_REMOTE_KEY),
        ({"generation": 0}, Drop.ZERO_GENERATION),
    ],
)
def test_a_bind_that_does_not_check_is_dropped_silently(h, fields, reason):
    pair = h.allocate(vni=3)
    message = {"vni": 3, "generation": 1, "remote_key": pair.b.public_key.raw} | fields
    if message["remote_key"] == "self":
        message["remote_key"] = pair.a.public_key.raw
    bind = disco.BindV1(disco.TYPE_BIND, **message)
    assert h.send(pair.a.control(bind), A_ADDR) is None
    assert h.drops() == {reason.value: 1}
    assert h.core.endpoint(3).clients[0].handshake is Handshake.INIT


def test_an_answer_from_another_source_than_its_bind_is_refused(h):
    pair = h.allocate()
    challenge = h.send(pair.a.bind_v1(remote(pair, 0), 5), A_ADDR)[0]
    assert h.send(pair.a.answer(challenge), STRANGER_ADDR) is None
    assert h.drops() == {Drop.WRONG_ANSWER.value: 1}
    assert h.core.endpoint(1).clients[0].handshake is Handshake.CHALLENGE_SENT


def test_an_answer_of_another_generation_is_refused(h):
    pair = h.allocate()
    first = h.send(pair.a.bind_v1(remote(pair, 0), 5), A_ADDR)[0]
    h.send(pair.a.bind_v1(remote(pair, 0), 6), A_ADDR)
    assert h.send(pair.a.answer(first), A_ADDR) is None
    assert h.drops() == {Drop.WRONG_GENERATION.value: 1}


def test_an_answer_without_a_bind_is_refused(h):
    pair = h.allocate()
    answer = disco.BindV1(disco.TYPE_ANSWER, 1, 5, pair.b.public_key.raw, bytes(32))
    assert h.send(pair.a.control(answer), A_ADDR) is None
    assert h.drops() == {Drop.WRONG_GENERATION.value: 1}


def test_a_forged_challenge_is_refused(h):
    pair = h.allocate()
    h.send(pair.a.bind_v1(remote(pair, 0), 5), A_ADDR)
    forged = disco.BindV1(disco.TYPE_ANSWER, 1, 5, pair.b.public_key.raw, b"\x01" * 32)
    assert h.send(pair.a.control(forged), A_ADDR) is None
    assert h.drops() == {Drop.WRONG_ANSWER.value: 1}


def test_the_server_never_takes_a_challenge_as_a_message(h):
    pair = h.allocate()
    challenge = disco.BindV1(disco.TYPE_CHALLENGE, 1, 5, pair.b.public_key.raw, bytes(32))
    assert h.send(pair.a.control(challenge), A_ADDR) is None
    assert h.drops() == {Drop.UNEXPECTED_MESSAGE.value: 1}


def test_a_challenge_stays_good_for_one_rotation_then_expires(h):
    pair = h.allocate()
    rotation = h.core.challenge_rotation
    h.now = (h.now // rotation + 1) * rotation - 1  # one second before a rotation
    challenge = h.send(pair.a.bind_v1(remote(pair, 0), 5), A_ADDR)[0]
    h.now += rotation  # the next period: the previous key is still accepted
    assert h.send(pair.a.answer(challenge), A_ADDR) is None
    assert h.core.endpoint(1).clients[0].handshake is Handshake.BOUND

    challenge = h.send(pair.b.bind_v1(remote(pair, 1), 5), B_ADDR)[0]
    h.now += 2 * rotation  # two periods on: its key is gone
    assert h.send(pair.b.answer(challenge), B_ADDR) is None
    assert h.drops() == {Drop.WRONG_ANSWER.value: 1}


def test_the_rotating_key_survives_a_restart_with_the_same_key_file(h):
    """The period's key comes from the key file's secret and the period's number, so a
    restarted relay issues the very same challenge; a handshake in flight still starts
    over (its generation lived in memory), as the client's next bind does anyway."""
    pair = h.allocate()
    challenge = pair.a.read_control(h.send(pair.a.bind_v1(remote(pair, 0), 5), A_ADDR)[0])
    restarted = type(h.core)(h.secrets.private_key, h.secrets.challenge_secret)
    bind = disco.BindV1(disco.TYPE_BIND, 1, 5, pair.b.public_key.raw)
    period = int(h.now // restarted.challenge_rotation)
    assert restarted.challenge_v1(bind, A_ADDR, period) == challenge.challenge
    assert restarted.challenge_v1(bind, STRANGER_ADDR, period) != challenge.challenge
    other = type(h.core)(h.secrets.private_key, bytes(32))
    assert other.challenge_v1(bind, A_ADDR, period) != challenge.challenge


def test_a_bound_client_rebinds_from_a_new_address_and_traffic_follows(h):
    pair = h.allocate()
    bind_pair_v1(h, pair)
    moves = h.core.watch_moves()
    h.send(pair.a.data(b"x"), A_ADDR)
    endpoint = h.core.endpoint(1)
    lamport, b_state = endpoint.allocation.lamport_id, endpoint.clients[1]
    packets_before = endpoint.clients[0].packets

    h.now += 10
    bind_v1(h, pair, 0, MOVED_ADDR, generation=2)

    packet = pair.b.data(b"to a")
    assert h.send(packet, B_ADDR) == (packet, MOVED_ADDR)
    packet = pair.a.data(b"to b")
    assert h.send(packet, MOVED_ADDR) == (packet, B_ADDR)
    assert h.send(pair.a.data(b"old"), A_ADDR) is None
    assert h.drops() == {Drop.DATA_FROM_UNKNOWN_SOURCE.value: 1}
    assert endpoint.bound and endpoint.allocation.lamport_id == lamport
    assert endpoint.clients[1] is b_state and b_state.addr == B_ADDR
    assert endpoint.clients[0].packets == packets_before + 1
    assert moves == [endpoint]


def test_a_rebind_in_progress_leaves_the_binding_in_place(h):
    pair = h.allocate()
    bind_pair_v1(h, pair)
    h.send(pair.a.bind_v1(remote(pair, 0), 2), MOVED_ADDR)  # no answer yet
    endpoint = h.core.endpoint(1)
    assert endpoint.clients[0].handshake is Handshake.BOUND
    packet = pair.b.data(b"still to the old address")
    assert h.send(packet, B_ADDR) == (packet, A_ADDR)


def test_a_version_0_client_is_still_ignored_once_bound(h):
    pair = h.allocate()
    h.bind_pair(pair)
    assert h.send(pair.a.bind(), MOVED_ADDR) is None
    assert h.drops() == {Drop.CONTROL_AFTER_BOUND.value: 1}
    assert h.core.endpoint(1).clients[0].addr == A_ADDR


def test_versions_mix_on_one_endpoint(h):
    pair = h.allocate()
    h.bind(pair.a, A_ADDR)  # version 0
    bind_v1(h, pair, 1, B_ADDR)
    packet = pair.a.data(b"mixed")
    assert h.send(packet, A_ADDR) == (packet, B_ADDR)


def test_v1_handshakes_pass_the_rate_limit_first(h):
    from relay.protocol.ratelimit import HandshakeLimits

    h = CoreHarness(handshake_limits=HandshakeLimits(rate_per_source=1, burst_per_source=2))
    pair = h.allocate()
    replies = [h.send(pair.a.bind_v1(remote(pair, 0), g), A_ADDR) for g in (1, 2, 3)]
    assert [r is not None for r in replies] == [True, True, False]
    assert h.drops() == {Drop.RATE_LIMITED.value: 1}


def test_an_unwatched_list_stops_growing(h):
    """A fast path that could not start lets go of its lists, so they do not grow forever."""
    bound, moves = h.core.watch_bound(), h.core.watch_moves()
    h.core.unwatch(bound)
    h.core.unwatch(moves)
    pair = h.allocate()
    bind_pair_v1(h, pair)
    bind_v1(h, pair, 0, MOVED_ADDR, generation=2)
    assert bound == [] and moves == []
