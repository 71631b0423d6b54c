"""Every rule of docs/protocol.md again, over real UDP sockets on loopback, IPv4 and IPv6.

Drops are observed two ways: the relay's per-reason counter moves, and a
sentinel sent right after shows that nothing else was forwarded or answered.
"""

import random
import socket

import pytest

from relay.protocol import disco, geneve
from relay.protocol.client import RelayClient
from relay.protocol.core import Drop, Handshake
from relay.protocol.keys import DiscoPrivateKey
from tests.support.waiting import wait_until


async def test_allocate_handshake_and_relay_both_ways(relay):
    pair = await relay.bound_pair()
    a, b = pair.peers
    a.send(pair.clients[0].data(b"ping from a"), relay.relay)
    assert pair.clients[1].read_data(await b.receive()) == b"ping from a"
    b.send(pair.clients[1].data(b"pong from b" * 100), relay.relay)
    assert pair.clients[0].read_data(await a.receive()) == b"pong from b" * 100
    endpoint = relay.server.core.endpoint(pair.endpoint.vni)
    assert [c.handshake.label for c in endpoint.clients] == ["Bound", "Bound"]
    assert relay.total_drops() == 0


async def test_relayed_datagram_is_unchanged_header_included(relay):
    pair = await relay.bound_pair()
    packet = pair.clients[0].data(bytes(range(256)))
    pair.peers[0].send(packet, relay.relay)
    assert await pair.peers[1].receive() == packet


async def test_challenge_is_sealed_to_the_client_by_the_server_key(relay):
    pair = await relay.pair()
    pair.peers[0].send(pair.clients[0].bind(), relay.relay)
    reply = await pair.peers[0].receive()
    assert geneve.decode(reply) == geneve.GeneveHeader(
        geneve.PROTOCOL_DISCO, pair.endpoint.vni, control=True
    )
    assert reply[14:46] == pair.endpoint.server_disco.raw
    assert isinstance(pair.clients[0].read_control(reply), disco.BindUDPRelayEndpointChallenge)


async def test_short_packet_is_dropped(relay):
    peer = await relay.peer()
    peer.send(b"\x00" * 7, relay.relay)
    await relay.dropped(Drop.SHORT_PACKET)
    assert peer.pending() == []


async def test_empty_datagram_is_counted_as_short(relay):
    family = socket.AF_INET6 if ":" in relay.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as raw:
        raw.sendto(b"", relay.relay)
        await relay.dropped(Drop.SHORT_PACKET)


async def test_unknown_vni_is_dropped(relay):
    pair = await relay.pair()
    pair.clients[0].vni = pair.endpoint.vni + 1
    pair.peers[0].send(pair.clients[0].bind(), relay.relay)
    await relay.dropped(Drop.UNKNOWN_VNI)
    assert pair.peers[0].pending() == []


async def test_bad_magic_is_dropped(relay):
    pair = await relay.pair()
    bind = bytearray(pair.clients[0].bind())
    bind[8:14] = b"XXXXXX"
    pair.peers[0].send(bytes(bind), relay.relay)
    await relay.dropped(Drop.BAD_MAGIC)
    assert pair.peers[0].pending() == []


async def test_foreign_key_is_dropped(relay):
    pair = await relay.pair()
    intruder = RelayClient(
        DiscoPrivateKey.generate(), pair.endpoint.server_disco, pair.endpoint.vni, protocol=0
    )
    pair.peers[0].send(intruder.bind(), relay.relay)
    await relay.dropped(Drop.FOREIGN_KEY)
    assert pair.peers[0].pending() == []


async def test_undecryptable_is_dropped(relay):
    pair = await relay.pair()
    bind = bytearray(pair.clients[0].bind())
    bind[-5] ^= 0x40
    pair.peers[0].send(bytes(bind), relay.relay)
    await relay.dropped(Drop.UNDECRYPTABLE)
    assert pair.peers[0].pending() == []


async def test_wrong_answer_is_dropped_and_does_not_bind(relay):
    pair = await relay.pair()
    pair.peers[0].send(pair.clients[0].bind(), relay.relay)
    await pair.peers[0].receive()
    wrong = pair.clients[0].control(disco.BindUDPRelayEndpointAnswer(b"\x01" * 32))
    pair.peers[0].send(wrong, relay.relay)
    await relay.dropped(Drop.WRONG_ANSWER)
    endpoint = relay.server.core.endpoint(pair.endpoint.vni)
    states = [c.handshake for c in endpoint.clients]
    assert Handshake.CHALLENGE_SENT in states
    assert Handshake.BOUND not in states


async def test_bind_from_a_second_source_is_dropped(relay):
    pair = await relay.pair()
    pair.peers[0].send(pair.clients[0].bind(), relay.relay)
    await pair.peers[0].receive()
    second = await relay.peer()
    second.send(pair.clients[0].bind(), relay.relay)
    await relay.dropped(Drop.WRONG_SOURCE)
    assert second.pending() == []
    # the first source still completes the handshake
    pair.peers[0].send(pair.clients[0].bind(), relay.relay)
    pair.peers[0].send(pair.clients[0].answer(await pair.peers[0].receive()), relay.relay)
    endpoint = relay.server.core.endpoint(pair.endpoint.vni)
    await wait_until(
        lambda: Handshake.BOUND in [c.handshake for c in endpoint.clients], "first bound"
    )


async def test_data_before_bound_is_not_forwarded(relay):
    pair = await relay.pair()
    await pair.handshake(0)
    pair.peers[1].send(pair.clients[1].bind(), relay.relay)
    await pair.peers[1].receive()
    pair.peers[0].send(pair.clients[0].data(b"too early"), relay.relay)
    await relay.dropped(Drop.DATA_BEFORE_BOUND)
    assert pair.peers[1].pending() == []


async def test_data_from_a_third_address_is_not_forwarded(relay):
    pair = await relay.bound_pair()
    third = await relay.peer()
    third.send(pair.clients[0].data(b"from a stranger"), relay.relay)
    await relay.dropped(Drop.DATA_FROM_UNKNOWN_SOURCE)
    pair.peers[0].send(pair.clients[0].data(b"sentinel"), relay.relay)
    assert pair.clients[1].read_data(await pair.peers[1].receive()) == b"sentinel"
    assert third.pending() == []


async def test_control_after_bound_is_ignored(relay):
    pair = await relay.bound_pair()
    pair.peers[0].send(pair.clients[0].bind(), relay.relay)
    await relay.dropped(Drop.CONTROL_AFTER_BOUND)
    pair.peers[1].send(pair.clients[1].data(b"sentinel"), relay.relay)
    assert pair.clients[0].read_data(await pair.peers[0].receive()) == b"sentinel"


async def test_same_pair_before_bind_gets_the_same_allocation(relay):
    pair = await relay.pair()
    keys = [str(k.public) for k in reversed(pair.keys)]
    again = await relay.post_allocation(keys)
    assert again == pair.endpoint


async def test_same_pair_after_bind_gets_a_new_allocation_and_the_old_stops(relay):
    pair = await relay.bound_pair()
    again = await relay.post_allocation([str(k.public) for k in pair.keys])
    assert again.lamport_id > pair.endpoint.lamport_id
    assert again.vni != pair.endpoint.vni
    assert again.server_disco == pair.endpoint.server_disco
    pair.peers[0].send(pair.clients[0].data(b"old endpoint"), relay.relay)
    await relay.dropped(Drop.UNKNOWN_VNI)
    assert pair.peers[1].pending() == []


async def test_lamport_ids_strictly_increase(relay):
    ids = [(await relay.pair()).endpoint.lamport_id for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


async def test_dual_stack_socket_serves_ipv4_clients(relay_factory):
    h = await relay_factory("::", addrs=("127.0.0.1",))
    h.host = "127.0.0.1"
    pair = await h.bound_pair()
    pair.peers[0].send(pair.clients[0].data(b"v4 over dual stack"), h.relay)
    assert pair.clients[1].read_data(await pair.peers[1].receive()) == b"v4 over dual stack"


# -- lifetimes, with short ones -------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1"])
async def test_bind_lifetime_expires_and_frees_the_vni(relay_factory, host):
    h = await relay_factory(host, bind_lifetime=0.2, steady_state_lifetime=60.0)
    pair = await h.pair()
    await pair.handshake(0)
    vni = pair.endpoint.vni
    await wait_until(lambda: h.server.core.endpoint(vni) is None, "bind expiry")
    assert h.server.core.expired["bind"] == 1
    assert await h.server.store.allocations(h.server.config.name) == []
    pair.peers[1].send(pair.clients[1].bind(), h.relay)
    await h.dropped(Drop.UNKNOWN_VNI)
    again = await h.post_allocation([str(k.public) for k in pair.keys])
    assert again.lamport_id > pair.endpoint.lamport_id


@pytest.mark.parametrize("host", ["127.0.0.1"])
async def test_steady_state_lifetime_expires_a_silent_endpoint(relay_factory, host):
    h = await relay_factory(host, bind_lifetime=60.0, steady_state_lifetime=0.3)
    pair = await h.bound_pair()
    vni = pair.endpoint.vni
    await wait_until(lambda: h.server.core.endpoint(vni) is None, "steady-state expiry")
    assert h.server.core.expired == {"bind": 0, "steady_state": 1}
    assert await h.server.store.allocations(h.server.config.name) == []
    pair.peers[0].send(pair.clients[0].data(b"after expiry"), h.relay)
    await h.dropped(Drop.UNKNOWN_VNI)


async def test_a_storm_of_random_and_mutated_packets_changes_nothing(relay):
    """2 000 bad datagrams from several sockets: the bound pair still relays, state intact.

    Mutations spare the header bits a reader ignores (version, reserved), which
    would leave a valid bind.
    """
    rng = random.Random(1234)
    pair = await relay.bound_pair()
    fresh = await relay.pair()
    templates = [
        pair.clients[0].bind(),
        pair.clients[0].data(b"x" * 40),
        fresh.clients[0].bind(),
        fresh.clients[1].control(disco.BindUDPRelayEndpointAnswer(bytes(32))),
    ]
    attackers = [await relay.peer() for _ in range(4)]
    before = {
        e.allocation.vni: [(c.handshake, c.addr, c.packets) for c in e.clients]
        for e in relay.server.core.endpoints()
    }
    drops_before = relay.total_drops()
    for _ in range(2000):
        datagram = bytearray(rng.choice(templates))
        at = rng.randrange(1, 7) if rng.random() < 0.3 else rng.randrange(8, len(datagram))
        datagram[at] ^= 0x80 if at == 1 else rng.randrange(1, 256)
        if rng.random() < 0.3:
            datagram = datagram[: rng.randrange(1, len(datagram))]
        if rng.random() < 0.1:
            datagram = bytearray(rng.randbytes(rng.randrange(1, 64)))
        rng.choice(attackers).send(bytes(datagram), relay.relay)
    await wait_until(lambda: relay.total_drops() - drops_before == 2000, "all 2000 counted")
    after = {
        e.allocation.vni: [(c.handshake, c.addr, c.packets) for c in e.clients]
        for e in relay.server.core.endpoints()
    }
    assert after == before
    pair.peers[0].send(pair.clients[0].data(b"still here"), relay.relay)
    assert pair.clients[1].read_data(await pair.peers[1].receive()) == b"still here"
    assert all(a.pending() == [] for a in attackers)


async def test_a_handshake_flood_neither_stops_relaying_nor_blocks_other_handshakes(
    relay_factory,
):
    """Two attackers flood binds (their own valid ones, and forged ones that cost crypto).

    Past their bursts (20, then one per second) they are dropped before any crypto,
    every data packet of a bound pair sent during the flood is relayed, and another
    pair binds in the middle of it; the forged binds then hit a bound endpoint.
    """
    h = await relay_factory("127.0.0.1", handshake_rate=1, handshake_burst=20)
    bound = await h.bound_pair()
    victim = await h.pair()
    flooder = await h.pair()
    attackers = [await h.peer(), await h.peer()]
    forged = victim.clients[0].bind()[:-1] + b"\x00"
    flood = [flooder.clients[0].bind(), forged]
    for i in range(20):
        for n in range(200):
            attackers[n % 2].send(flood[n % 2], h.relay)
        sent = b"during the flood %d" % i
        bound.peers[0].send(bound.clients[0].data(sent), h.relay)
        assert bound.clients[1].read_data(await bound.peers[1].receive()) == sent
        if i == 10:
            await victim.handshake(0)
            await victim.handshake(1)
    drops = h.server.core.drops
    challenges: list[bytes] = []

    def flood_accounted_for() -> bool:
        challenges.extend(attackers[0].pending())
        return h.total_drops() + len(challenges) == 4000

    await wait_until(flood_accounted_for, "every flood packet dropped or answered")
    cheap_drops = drops[Drop.RATE_LIMITED] + drops[Drop.CONTROL_AFTER_BOUND]
    assert cheap_drops > 4000 - 2 * 20 - 2 * 60
    assert h.server.core.forwarded_packets == 20
    await wait_until(lambda: h.server.core.endpoint(victim.endpoint.vni).bound, "victim bound")
