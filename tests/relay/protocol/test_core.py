"""Every rule of docs/protocol.md against the sans-I/O core, with a fake clock."""

import copy

import pytest
from nacl import bindings

from relay.protocol import disco, geneve
from relay.protocol.core import Drop, Handshake
from relay.protocol.keys import raw_pair
from relay.protocol.ratelimit import HandshakeLimits
from relay.store import Allocation
from tests.relay.core_harness import A_ADDR, B_ADDR, STRANGER_ADDR, CoreHarness


@pytest.fixture
def h():
    return CoreHarness(bind_lifetime=30, steady_state_lifetime=300)


def expired(h, now: float, budget: int = 10_000):
    """The allocations of the endpoints that expire at ``now``."""
    return [endpoint.allocation for endpoint in h.core.expire(now, budget)]


def only_drop(h, reason: Drop):
    assert h.drops() == {reason.value: 1}


# -- the handshake ---------------------------------------------------------


def test_bind_in_init_records_source_and_answers_sealed_challenge(h):
    pair = h.allocate(vni=0xABCDEF)
    reply, destination = h.send(pair.a.bind(), A_ADDR)
    assert destination == A_ADDR
    header = geneve.decode(reply)
    assert header == geneve.GeneveHeader(geneve.PROTOCOL_DISCO, 0xABCDEF, control=True, version=0)
    assert reply[8:14] == disco.MAGIC
    assert reply[14:46] == h.core.server_key.raw
    message = pair.a.read_control(reply)
    assert isinstance(message, disco.BindUDPRelayEndpointChallenge)
    endpoint = h.core.endpoint(0xABCDEF)
    assert endpoint.clients[0].handshake is Handshake.CHALLENGE_SENT
    assert endpoint.clients[0].addr == A_ADDR
    assert endpoint.clients[1].handshake is Handshake.INIT


def test_a_handshake_is_timed_from_its_first_bind_and_forgotten_with_its_endpoint(h):
    pair = h.allocate()
    h.challenge_for(pair.a, A_ADDR)
    h.now += 0.02
    h.bind(pair.a, A_ADDR)  # a second bind, then the answer
    histogram = h.core.handshake_seconds[0]
    assert histogram.count == 1 and histogram.sum == pytest.approx(0.02)
    h.challenge_for(pair.b, B_ADDR)  # never answered
    assert len(h.core._challenged_at) == 1
    assert expired(h, h.now + 30) == [pair.allocation]
    assert h.core._challenged_at == {}


def test_an_untouched_endpoint_copies_as_the_shared_default(h):
    h.allocate()
    twin = copy.deepcopy(h.core)
    assert twin.endpoint(1).clients == h.core.endpoint(1).clients
    twin.endpoint(1).touch()[0].packets = 1
    assert [c.packets for c in h.core.endpoint(1).clients] == [0, 0]


def test_bind_retransmit_from_same_source_gets_the_same_challenge(h):
    pair = h.allocate()
    first = pair.a.read_control(h.challenge_for(pair.a, A_ADDR))
    second = pair.a.read_control(h.challenge_for(pair.a, A_ADDR))
    assert first == second
    assert h.drops() == {}


def test_bind_from_a_second_source_is_dropped(h):
    pair = h.allocate()
    h.challenge_for(pair.a, A_ADDR)
    assert h.send(pair.a.bind(), STRANGER_ADDR) is None
    only_drop(h, Drop.WRONG_SOURCE)
    assert h.core.endpoint(1).clients[0].addr == A_ADDR


def test_correct_answer_binds_the_client_and_sets_last_seen(h):
    pair = h.allocate()
    h.now += 5
    h.bind(pair.a, A_ADDR)
    endpoint = h.core.endpoint(1)
    assert endpoint.clients[0].handshake is Handshake.BOUND
    assert endpoint.clients[0].last_seen == h.now
    assert not endpoint.bound
    assert h.core.take_bound() == []


def test_both_clients_bound_binds_the_endpoint_once(h):
    pair = h.allocate()
    h.bind_pair(pair)
    assert h.core.take_bound() == [pair.allocation]
    assert h.core.take_bound() == []
    assert h.core.bound_count == 1
    assert h.core.handshakes_completed == 2


def test_wrong_answer_is_dropped(h):
    pair = h.allocate()
    h.challenge_for(pair.a, A_ADDR)
    wrong = pair.a.control(disco.BindUDPRelayEndpointAnswer(bytes(32)))
    assert h.send(wrong, A_ADDR) is None
    only_drop(h, Drop.WRONG_ANSWER)
    assert h.core.endpoint(1).clients[0].handshake is Handshake.CHALLENGE_SENT


def test_another_clients_challenge_is_a_wrong_answer(h):
    pair = h.allocate()
    b_challenge = pair.b.read_control(h.challenge_for(pair.b, B_ADDR)).challenge
    h.challenge_for(pair.a, A_ADDR)
    h.send(pair.a.control(disco.BindUDPRelayEndpointAnswer(b_challenge)), A_ADDR)
    only_drop(h, Drop.WRONG_ANSWER)


def test_answer_from_another_source_is_dropped(h):
    pair = h.allocate()
    answer = pair.a.answer(h.challenge_for(pair.a, A_ADDR))
    assert h.send(answer, STRANGER_ADDR) is None
    only_drop(h, Drop.WRONG_SOURCE)
    assert h.core.endpoint(1).clients[0].handshake is Handshake.CHALLENGE_SENT


def test_answer_before_bind_is_dropped(h):
    pair = h.allocate()
    challenge = h.core.challenge(pair.allocation, 0)
    assert h.send(pair.a.control(disco.BindUDPRelayEndpointAnswer(challenge)), A_ADDR) is None
    only_drop(h, Drop.UNEXPECTED_MESSAGE)
    assert h.core.endpoint(1).clients[0].handshake is Handshake.INIT


def test_bound_client_ignores_further_control(h):
    pair = h.allocate()
    h.bind(pair.a, A_ADDR)
    assert h.send(pair.a.bind(), A_ADDR) is None
    only_drop(h, Drop.CLIENT_ALREADY_BOUND)


def test_bound_endpoint_ignores_all_control(h):
    pair = h.allocate()
    h.bind_pair(pair)
    before = h.snapshot()
    assert h.send(pair.a.bind(), A_ADDR) is None
    assert h.send(pair.b.bind(), STRANGER_ADDR) is None
    assert h.drops() == {Drop.CONTROL_AFTER_BOUND.value: 2}
    assert h.snapshot() == before


def test_challenges_differ_per_client_and_endpoint_and_survive_restart(h):
    p1, p2 = h.allocate(vni=1, lamport_id=1), h.allocate(vni=2, lamport_id=2)
    challenges = {
        h.core.challenge(p1.allocation, 0),
        h.core.challenge(p1.allocation, 1),
        h.core.challenge(p2.allocation, 0),
        h.core.challenge(p2.allocation, 1),
    }
    assert len(challenges) == 4
    restarted = CoreHarness()
    restarted.core = type(h.core)(h.secrets.private_key, h.secrets.challenge_secret)
    assert restarted.core.challenge(p1.allocation, 0) == h.core.challenge(p1.allocation, 0)


# -- control-packet drops --------------------------------------------------


def test_control_packet_with_other_protocol_is_dropped(h):
    pair = h.allocate()
    bind = bytearray(pair.a.bind())
    bind[2:4] = geneve.PROTOCOL_WIREGUARD.to_bytes(2, "big")
    assert h.send(bytes(bind), A_ADDR) is None
    only_drop(h, Drop.CONTROL_NOT_DISCO)


def test_short_frame_is_dropped(h):
    pair = h.allocate()
    assert h.send(pair.a.bind()[: 8 + 6 + 32 + 24 + 15], A_ADDR) is None
    only_drop(h, Drop.SHORT_FRAME)


def test_bad_magic_is_dropped(h):
    pair = h.allocate()
    bind = bytearray(pair.a.bind())
    bind[8] ^= 0xFF
    assert h.send(bytes(bind), A_ADDR) is None
    only_drop(h, Drop.BAD_MAGIC)


def test_foreign_key_is_dropped(h):
    pair, other = h.allocate(vni=1), h.allocate(vni=2, lamport_id=2)
    other.a.vni = 1
    assert h.send(other.a.bind(), A_ADDR) is None
    only_drop(h, Drop.FOREIGN_KEY)
    assert [c.handshake for c in h.core.endpoint(1).clients] == [Handshake.INIT] * 2
    assert pair.allocation.vni == 1


def test_undecryptable_box_is_dropped(h):
    pair = h.allocate()
    bind = bytearray(pair.a.bind())
    bind[-1] ^= 1
    assert h.send(bytes(bind), A_ADDR) is None
    only_drop(h, Drop.UNDECRYPTABLE)
    assert h.core.endpoint(1).clients[0].addr is None


def test_box_sealed_with_another_key_is_undecryptable(h):
    pair, other = h.allocate(vni=1), h.allocate(vni=2, lamport_id=2)
    # client a's key and header, but other.a's box
    forged = pair.a.bind()[:46] + other.a.bind()[46:]
    assert h.send(forged, A_ADDR) is None
    only_drop(h, Drop.UNDECRYPTABLE)


def test_malformed_message_is_dropped(h):
    pair = h.allocate()
    h.challenge_for(pair.a, A_ADDR)
    short_answer = bytes.fromhex("0600") + bytes(10)
    assert h.send(sealed_payload(h, pair.a, short_answer), A_ADDR) is None
    only_drop(h, Drop.MALFORMED_MESSAGE)


@pytest.mark.parametrize(
    "payload",
    [bytes.fromhex("0100") + bytes(40), bytes.fromhex("0500") + bytes(32)],
    ids=["ping-type", "challenge-from-client"],
)
def test_messages_the_relay_does_not_take_are_dropped(h, payload):
    pair = h.allocate()
    assert h.send(sealed_payload(h, pair.a, payload), A_ADDR) is None
    only_drop(h, Drop.UNEXPECTED_MESSAGE)


def sealed_payload(h, client, payload: bytes) -> bytes:
    """A control datagram from ``client`` whose box holds ``payload`` as given."""
    nonce = bytes(24)
    shared = client.private_key.shared(h.core.server_key)
    box = bindings.crypto_box_afternm(payload, nonce, shared)
    return geneve.control_header(client.vni) + disco.MAGIC + client.public_key.raw + nonce + box


# -- data packets ----------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 7])
def test_short_packet_is_dropped(h, length):
    h.allocate()
    assert h.send(bytes(length), A_ADDR) is None
    only_drop(h, Drop.SHORT_PACKET)


def test_unknown_vni_is_dropped(h):
    pair = h.allocate(vni=1)
    pair.a.vni = 2
    assert h.send(pair.a.bind(), A_ADDR) is None
    assert h.send(pair.a.data(b"x"), A_ADDR) is None
    assert h.drops() == {Drop.UNKNOWN_VNI.value: 2}


def test_data_is_relayed_unchanged_both_ways(h):
    pair = h.allocate()
    h.bind_pair(pair)
    packet = pair.a.data(b"hello b")
    assert h.send(packet, A_ADDR) == (packet, B_ADDR)
    back = pair.b.data(b"hello a" * 100)
    out, destination = h.send(back, B_ADDR)
    assert out is back and destination == A_ADDR
    endpoint = h.core.endpoint(1)
    assert [c.packets for c in endpoint.clients] == [1, 1]
    assert [c.bytes for c in endpoint.clients] == [len(packet), len(back)]
    assert h.core.forwarded_packets == 2
    assert h.core.forwarded_bytes == len(packet) + len(back)


def test_data_refreshes_the_senders_last_seen_only(h):
    pair = h.allocate()
    h.bind_pair(pair)
    bound_at = h.now
    h.now += 10
    h.send(pair.a.data(b"x"), A_ADDR)
    assert [c.last_seen for c in h.core.endpoint(1).clients] == [h.now, bound_at]


def test_data_before_both_bound_is_dropped(h):
    pair = h.allocate()
    assert h.send(pair.a.data(b"x"), A_ADDR) is None
    h.bind(pair.a, A_ADDR)
    h.challenge_for(pair.b, B_ADDR)
    assert h.send(pair.a.data(b"x"), A_ADDR) is None
    assert h.send(pair.b.data(b"x"), B_ADDR) is None
    assert h.drops() == {Drop.DATA_BEFORE_BOUND.value: 3}


def test_data_from_a_third_address_is_dropped(h):
    pair = h.allocate()
    h.bind_pair(pair)
    before = h.snapshot()
    assert h.send(pair.a.data(b"x"), STRANGER_ADDR) is None
    only_drop(h, Drop.DATA_FROM_UNKNOWN_SOURCE)
    assert h.snapshot() == before


def test_data_with_the_control_bit_clear_but_disco_protocol_is_still_data(h):
    pair = h.allocate()
    h.bind_pair(pair)
    packet = geneve.encode(geneve.GeneveHeader(geneve.PROTOCOL_DISCO, 1, control=False)) + b"x"
    assert h.send(packet, A_ADDR) == (packet, B_ADDR)


# -- lifetimes -------------------------------------------------------------


def test_unbound_endpoint_expires_after_bind_lifetime(h):
    pair = h.allocate()
    h.bind(pair.a, A_ADDR)
    assert expired(h, h.now + 30) == []
    assert expired(h, h.now + 30.001) == [pair.allocation]
    assert h.core.endpoint(1) is None
    assert h.core.expired == {"bind": 1, "steady_state": 0}
    assert h.send(pair.a.bind(), A_ADDR) is None
    only_drop(h, Drop.UNKNOWN_VNI)


def test_bound_endpoint_outlives_bind_lifetime(h):
    pair = h.allocate()
    h.bind_pair(pair)
    assert expired(h, h.now + 31) == []
    assert h.core.endpoint(1).bound


def test_bound_endpoint_expires_when_either_client_is_silent(h):
    pair = h.allocate()
    h.bind_pair(pair)
    start = h.now
    for _ in range(5):  # only a talks, every minute
        h.now += 60
        h.send(pair.a.data(b"x"), A_ADDR)
        assert expired(h, h.now) == [] or h.now - start > 300
    assert expired(h, start + 300) == []
    assert expired(h, start + 300.001) == [pair.allocation]
    assert h.core.expired == {"bind": 0, "steady_state": 1}


def test_steady_state_shorter_than_bind_lifetime_expires_on_time():
    h = CoreHarness(bind_lifetime=60, steady_state_lifetime=5)
    pair = h.allocate()
    h.now += 1
    h.bind_pair(pair)
    assert expired(h, h.now + 5) == []
    assert expired(h, h.now + 5.001) == [pair.allocation]
    assert expired(h, h.now + 61) == []


def test_binding_adds_no_deadline_while_the_bind_deadline_comes_first(h):
    """The bind deadline stays the endpoint's one heap entry; reached, it is re-armed."""
    pair = h.allocate()
    h.now += 1
    h.bind_pair(pair)
    assert len(h.core._deadlines) == 1
    assert h.core.next_deadline() == h.now - 1 + 30
    assert expired(h, h.now + 30) == []
    assert h.core.next_deadline() == h.now + 300
    assert len(h.core._deadlines) == 1


def test_traffic_both_ways_keeps_a_bound_endpoint_alive(h):
    pair = h.allocate()
    h.bind_pair(pair)
    for _ in range(20):
        h.now += 100
        h.send(pair.a.data(b"x"), A_ADDR)
        h.send(pair.b.data(b"x"), B_ADDR)
        assert expired(h, h.now) == []
    assert h.core.endpoint(1).bound


def test_expiry_works_in_bounded_batches(h):
    for vni in range(1, 101):
        h.allocate(vni=vni, lamport_id=vni)
    later = h.now + 31
    first = expired(h, later, 40)
    assert len(first) == 40
    rest = expired(h, later, 1000)
    assert len(rest) == 60
    assert len(h.core) == 0


def test_next_deadline_tracks_the_earliest_endpoint(h):
    assert h.core.next_deadline() is None
    h.allocate()
    assert h.core.next_deadline() == h.now + 30


# -- the table -------------------------------------------------------------


def test_install_is_idempotent_and_a_newer_lamport_replaces(h):
    pair = h.allocate(vni=5, lamport_id=1)
    h.bind_pair(pair)
    same = h.core.install(pair.allocation)
    assert same.bound
    newer = Allocation("relay", 5, 2, pair.allocation.raw_keys, h.now)
    endpoint = h.core.install(newer)
    assert endpoint.allocation.lamport_id == 2 and not endpoint.bound
    assert h.core.bound_count == 0
    assert expired(h, h.now + 30.001) == [newer]


def test_install_refuses_the_servers_own_key(h):
    pair = h.allocate()
    keys = raw_pair((pair.allocation.disco_keys[0], h.core.server_key))
    bad = Allocation("relay", 9, 9, keys, h.now)
    with pytest.raises(ValueError, match="server's disco key"):
        h.core.install(bad)


def test_remove_only_the_named_allocation(h):
    pair = h.allocate(vni=3, lamport_id=7)
    assert not h.core.remove(3, 6)
    assert h.core.remove(3, 7)
    assert not h.core.remove(3, 7)
    assert expired(h, h.now + 100) == []
    assert pair.allocation.vni == 3


def test_an_allocation_bound_before_a_restart_gets_a_fresh_bind_window(h):
    pair = h.allocate()
    long_ago = pair.allocation.allocated_at
    h.now = long_ago + 1000
    restarted = CoreHarness()
    restarted.core = type(h.core)(h.secrets.private_key, h.secrets.challenge_secret, 30, 300)
    restarted.core.install(pair.allocation.as_bound(), now=h.now)
    assert expired(restarted, h.now + 30) == []
    assert expired(restarted, h.now + 30.001) == [pair.allocation.as_bound()]


# -- handshake floods -----------------------------------------------------------


def test_a_bind_flood_from_one_source_is_cut_off_before_crypto_and_others_still_bind():
    limits = HandshakeLimits(rate_per_source=10, burst_per_source=20, total_rate=1000)
    h = CoreHarness(handshake_limits=limits)
    bound = h.allocate(vni=1)
    h.bind_pair(bound)
    victim = h.allocate(vni=2)
    flooder = h.allocate(vni=3)
    bind = victim.a.bind()
    forged = bind[:-1] + bytes([bind[-1] ^ 1])  # its box no longer opens
    for i in range(2000):
        h.send(flooder.a.bind() if i % 2 else forged, STRANGER_ADDR)
        assert h.send(bound.a.data(b"payload"), A_ADDR) is not None
    drops = h.drops()
    assert drops["rate_limited"] == 2000 - 20
    assert drops.get("undecryptable", 0) == 10
    assert h.core.endpoint(1).clients[0].packets == 2000
    h.bind_pair(victim)
    assert h.core.endpoint(2).bound


def test_a_rate_limited_source_binds_again_once_its_bucket_refills():
    limits = HandshakeLimits(rate_per_source=1, burst_per_source=2)
    h = CoreHarness(handshake_limits=limits)
    pair = h.allocate()
    for _ in range(5):
        h.send(pair.a.bind(), A_ADDR)
    assert h.drops() == {"rate_limited": 3}
    h.now += 2
    h.bind(pair.a, A_ADDR)
    assert h.core.endpoint(1).clients[0].handshake is Handshake.BOUND


def test_one_client_key_on_many_endpoints_binds_on_each_and_the_key_cache_stays_bounded(
    monkeypatch,
):
    monkeypatch.setattr("relay.protocol.core.SHARED_KEY_CACHE_SIZE", 3)
    h = CoreHarness()
    pairs = [h.allocate(vni=vni, lamport_id=vni) for vni in range(1, 6)]
    for pair in pairs + pairs[:2]:
        if not h.core.endpoint(pair.allocation.vni).bound:
            h.bind_pair(pair)
    assert all(h.core.endpoint(pair.allocation.vni).bound for pair in pairs)
    assert len(h.core._shared_keys) <= 3
