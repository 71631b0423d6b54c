"""Trains over real UDP on loopback (issue 17): GSO sends, GRO reads, and their fallbacks.

A client sends a train itself, as one ``sendmsg`` with a ``UDP_SEGMENT``
control message; the relay's socket, with UDP_GRO on (``--udp-gro on`` here:
the default, ``auto``, has tests of its own at the end), reads it whole, checks
every segment and relays it in one GSO send. The receiving clients have no
GRO, so the kernel hands them the segments one by one, as the peer of a real
relay would see them. Counters must count segments as if each came alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import struct

import pytest
from prometheus_client import generate_latest

from relay.cli import build_parser
from relay.config import RelayConfig
from relay.flags import from_args
from relay.protocol import geneve
from relay.protocol.client import RelayClient
from relay.protocol.core import Drop
from relay.protocol.keys import DiscoPrivateKey
from relay.shells import transport
from relay.shells.metrics import relay_registry
from relay.shells.peer import UdpPeer
from tests.relay.udp_harness import RelayHarness, UdpPair
from tests.support.waiting import wait_until

SO_NO_CHECK = 11


@pytest.fixture
def relay_settings():
    """The ``relay`` fixture's relay receives with UDP GRO from the start."""
    return {"udp_gro": "on"}


def send_train(peer: UdpPeer, segments: list[bytes], destination, segment_size: int) -> None:
    """``segments`` as one GSO send from ``peer``'s own socket (a duplicate of it)."""
    original = peer._transport.get_extra_info("socket")
    with socket.socket(original.family, socket.SOCK_DGRAM, fileno=_dup(original)) as sock:
        control = [(transport.SOL_UDP, transport.UDP_SEGMENT, struct.pack("H", segment_size))]
        sock.sendmsg([b"".join(segments)], control, 0, destination)


def _dup(sock) -> int:
    return os.dup(sock.fileno())


def data(client: RelayClient, tag: int, size: int) -> bytes:
    """A data datagram of ``size`` bytes, its payload starting with ``tag``."""
    return client.data(bytes([tag]) * (size - geneve.HEADER_LEN))


async def receive_all(peer: UdpPeer, count: int) -> list[bytes]:
    received = [await peer.receive() for _ in range(count)]
    await asyncio.sleep(0.05)
    assert peer.pending() == [], "more arrived than expected"
    return received


def the_transport(relay: RelayHarness) -> transport.BatchedUdpTransport:
    return relay.server._transport


async def bound_v1_pair(relay: RelayHarness, peers: list[UdpPeer] | None = None) -> UdpPair:
    """A pair bound in protocol version 1 (``peers`` reused when given)."""
    keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
    endpoint = await relay.post_allocation([str(k.public) for k in keys])
    clients = [
        RelayClient(keys[i], endpoint.server_disco, endpoint.vni, keys[1 - i].public)
        for i in range(2)
    ]
    peers = peers or [await relay.peer(), await relay.peer()]
    pair = UdpPair(endpoint, keys, clients, peers, relay.relay)
    await pair.handshake(0)
    await pair.handshake(1)
    await wait_until(lambda: relay.server.core.endpoint(endpoint.vni).bound, "bound")
    return pair


async def test_a_gso_train_from_a_bound_client_is_relayed_whole(relay):
    pair = await relay.bound_pair()
    core, udp = relay.server.core, the_transport(relay)
    assert udp.gso and udp.gro
    segments = [data(pair.clients[0], i, 200) for i in range(9)] + [data(pair.clients[0], 9, 50)]
    forwarded, sent = core.forwarded_packets, core.forwarded_bytes
    send_train(pair.peers[0], segments, relay.relay, 200)
    assert await receive_all(pair.peers[1], 10) == segments
    assert core.forwarded_packets - forwarded == 10
    assert core.forwarded_bytes - sent == 9 * 200 + 50
    sender = core.endpoint(pair.endpoint.vni).clients
    sender = next(c for c in sender if c.addr is not None and c.packets)
    assert sender.packets == 10 and sender.bytes == 1850
    assert udp.trains_received == 1
    assert udp.gso_sends == 1
    assert relay.total_drops() == 0 and udp.send_errors == 0
    metrics = generate_latest(relay_registry(relay.server)).decode()
    assert "relayfleet_relay_gso_sends_total 1.0" in metrics
    assert "relayfleet_relay_gro_trains_total 1.0" in metrics


async def test_a_train_of_64_kib_is_relayed_in_sends_within_the_kernel_limits(relay):
    pair = await relay.bound_pair()
    udp = the_transport(relay)
    size = 1000
    segments = [data(pair.clients[0], i, size) for i in range(64)]  # 64_000 bytes
    send_train(pair.peers[0], segments, relay.relay, size)
    assert await receive_all(pair.peers[1], 64) == segments
    assert udp.trains_received == 1 and udp.gso_sends == 1
    small = [data(pair.clients[0], i, 100) for i in range(64)]
    send_train(pair.peers[0], small, relay.relay, 100)
    assert await receive_all(pair.peers[1], 64) == small
    assert relay.server.core.forwarded_packets == 128


async def test_single_datagrams_for_one_destination_go_out_as_one_gso_send(relay):
    pair = await relay.bound_pair()
    udp = the_transport(relay)
    segments = [data(pair.clients[0], i, 300) for i in range(20)]
    for segment in segments:  # queued at the relay before its loop runs: one read
        pair.peers[0].send(segment, relay.relay)
    assert await receive_all(pair.peers[1], 20) == segments
    assert udp.trains_received == 0
    assert udp.gso_sends >= 1
    assert relay.server.core.forwarded_packets == 20


async def test_interleaved_datagrams_go_out_per_destination_in_their_order(relay):
    pair = await relay.bound_pair()
    udp = the_transport(relay)
    to_b = [data(pair.clients[0], i, 300) for i in range(10)]
    to_a = [data(pair.clients[1], i, 300) for i in range(9)] + [data(pair.clients[1], 9, 30)]
    for ab, ba in zip(to_b, to_a, strict=True):  # one batch at the relay, alternating
        pair.peers[0].send(ab, relay.relay)
        pair.peers[1].send(ba, relay.relay)
    assert await receive_all(pair.peers[1], 10) == to_b
    assert await receive_all(pair.peers[0], 10) == to_a
    assert udp.gso_sends >= 2
    assert relay.server.core.forwarded_packets == 20


async def test_datagrams_of_changing_sizes_for_one_destination_arrive_whole_in_order(relay):
    # a shorter datagram ends a GSO send, a longer one starts the next
    pair = await relay.bound_pair()
    udp = the_transport(relay)
    sizes = [300, 300, 100, 300, 300, 300, 50, 1400, 1400, 20, 20]
    datagrams = [data(pair.clients[0], i, size) for i, size in enumerate(sizes)]
    for datagram in datagrams:  # one read at the relay
        pair.peers[0].send(datagram, relay.relay)
    assert await receive_all(pair.peers[1], len(datagrams)) == datagrams
    assert udp.gso_sends >= 3
    assert relay.server.core.forwarded_packets == len(datagrams)


async def test_more_single_datagrams_than_one_gso_send_holds_go_in_several(relay):
    # 46 segments of 1400 bytes fill a GSO send (65 507 bytes at most)
    pair = await relay.bound_pair()
    udp = the_transport(relay)
    datagrams = [data(pair.clients[1], i, 1400) for i in range(100)]
    for datagram in datagrams:
        pair.peers[1].send(datagram, relay.relay)
    assert await receive_all(pair.peers[0], 100) == datagrams
    assert udp.gso_sends >= 3 and udp.send_errors == 0
    assert relay.server.core.forwarded_packets == 100


async def test_a_read_from_many_endpoints_relays_each_datagram_to_its_peer(relay):
    # a busy relay's read: every datagram from another client, each its own send
    pairs = [await relay.bound_pair() for _ in range(12)]
    udp = the_transport(relay)
    sent = {}
    for i, pair in enumerate(pairs):  # one read at the relay, sources taking turns
        for index in (0, 1):
            datagram = data(pair.clients[index], i, 100 + 10 * i + index)
            pair.peers[index].send(datagram, relay.relay)
            sent[pair.peers[1 - index]] = datagram
    for peer, datagram in sent.items():
        assert await receive_all(peer, 1) == [datagram]
    assert relay.server.core.forwarded_packets == 24
    assert relay.server.core.forwarded_bytes == sum(len(d) for d in sent.values())
    for pair in pairs:
        clients = relay.server.core.endpoint(pair.endpoint.vni).clients
        assert [c.packets for c in clients] == [1, 1]
    assert udp.gso_sends == 0 and udp.send_errors == 0 and relay.total_drops() == 0


async def test_a_segment_of_another_vni_is_relayed_on_its_own(relay):
    first = await bound_v1_pair(relay)
    # the same two sockets are the clients of a second endpoint
    second = await bound_v1_pair(relay, first.peers)
    core = relay.server.core
    mine, other = first.clients[0], second.clients[0]
    segments = [
        data(mine, 1, 120), data(mine, 2, 120), data(other, 3, 120),
        data(mine, 4, 120), data(mine, 5, 80),
    ]  # fmt: skip
    send_train(first.peers[0], segments, relay.relay, 120)
    received = await receive_all(first.peers[1], 5)
    assert received == segments  # both endpoints' clients B are one socket: in order
    assert core.endpoint(first.endpoint.vni).clients[index_of(first, 0)].packets == 4
    assert core.endpoint(second.endpoint.vni).clients[index_of(second, 0)].packets == 1
    assert core.forwarded_packets == 5
    assert relay.total_drops() == 0


async def test_a_segment_of_an_unknown_vni_is_dropped_and_the_rest_relayed(relay):
    pair = await relay.bound_pair()
    stranger = RelayClient(
        DiscoPrivateKey.generate(), pair.endpoint.server_disco, pair.endpoint.vni + 100
    )
    mine = pair.clients[0]
    segments = [data(mine, 1, 100), data(stranger, 2, 100), data(mine, 3, 100)]
    send_train(pair.peers[0], segments, relay.relay, 100)
    assert await receive_all(pair.peers[1], 2) == [segments[0], segments[2]]
    await relay.dropped(Drop.UNKNOWN_VNI)
    assert relay.server.core.forwarded_packets == 2


async def test_a_control_segment_is_answered_on_its_own(relay):
    pair = await bound_v1_pair(relay)
    client = pair.clients[0]
    bind = client.bind()  # a version 1 re-bind from the same address: challenged
    size = len(bind)
    segments = [data(client, 1, size), bind, data(client, 2, size), data(client, 3, size)]
    send_train(pair.peers[0], segments, relay.relay, size)
    assert await receive_all(pair.peers[1], 3) == [segments[0], segments[2], segments[3]]
    challenge = await pair.peers[0].receive()
    assert geneve.decode(challenge).control
    client.read_control(challenge)
    assert relay.server.core.forwarded_packets == 3
    assert relay.total_drops() == 0


async def test_more_answers_than_a_read_has_slots_for_all_go_out_whole(relay, monkeypatch):
    # challenges go out with a read's sendmmsg, not a sendto each: from single datagrams
    # (the handshakes), and from three trains of 64 re-binds in one read, 192
    # challenges, more than the transport's ANSWER_SLOTS: each once and intact
    sent_alone = []
    monkeypatch.setattr(transport, "_sendto", lambda *args: sent_alone.append(args) or -1)
    pair = await bound_v1_pair(relay)
    client = pair.clients[0]
    trains, generations = [], []
    for _ in range(3):
        binds = []
        for _ in range(64):
            binds.append(client.bind())
            generations.append(client.generation)
        trains.append(binds)
    assert len(generations) > transport.ANSWER_SLOTS
    for binds in trains:
        send_train(pair.peers[0], binds, relay.relay, len(binds[0]))
    challenges = [client.read_control(await pair.peers[0].receive()) for _ in generations]
    assert the_transport(relay).trains_received == 3
    assert sent_alone == []
    assert sorted(c.generation for c in challenges) == sorted(generations)
    assert relay.total_drops() == 0


async def test_a_short_last_segment_is_dropped_and_counted(relay):
    pair = await relay.bound_pair()
    mine = pair.clients[0]
    segments = [data(mine, i, 64) for i in range(5)] + [b"\x00" * 5]
    send_train(pair.peers[0], segments, relay.relay, 64)
    assert await receive_all(pair.peers[1], 5) == segments[:5]
    await relay.dropped(Drop.SHORT_PACKET)
    assert relay.server.core.forwarded_packets == 5


async def test_a_train_from_an_unbound_source_is_dropped_segment_by_segment(relay):
    pair = await relay.bound_pair()
    stranger = await relay.peer()
    segments = [data(pair.clients[0], i, 100) for i in range(7)]
    send_train(stranger, segments, relay.relay, 100)
    await relay.dropped(Drop.DATA_FROM_UNKNOWN_SOURCE, 7)
    await asyncio.sleep(0.05)
    assert pair.peers[1].pending() == [] and pair.peers[0].pending() == []
    assert relay.server.core.forwarded_packets == 0
    assert the_transport(relay).trains_received == 1


async def test_a_train_follows_a_peer_that_rebound_from_a_new_address(relay):
    pair = await bound_v1_pair(relay)
    moved = await relay.peer()
    b = pair.clients[1]
    endpoint = relay.server.core.endpoint(pair.endpoint.vni)
    state = endpoint.clients[index_of(pair, 1)]
    old = state.addr
    moved.send(b.bind(), relay.relay)
    moved.send(b.answer(await moved.receive()), relay.relay)
    await wait_until(lambda: state.addr != old, "re-bound")
    segments = [data(pair.clients[0], i, 256) for i in range(12)]
    send_train(pair.peers[0], segments, relay.relay, 256)
    assert await receive_all(moved, 12) == segments
    assert pair.peers[1].pending() == []
    # from the old address, nothing passes any more
    send_train(pair.peers[1], segments[:3], relay.relay, 256)
    await relay.dropped(Drop.DATA_FROM_UNKNOWN_SOURCE, 3)
    assert pair.peers[0].pending() == []


def index_of(pair: UdpPair, i: int) -> int:
    """The core's index of ``pair.clients[i]`` (clients follow the keys' raw-byte order)."""
    keys = sorted(k.public.raw for k in pair.keys)
    return keys.index(pair.keys[i].public.raw)


@pytest.mark.parametrize("host", ["127.0.0.1"])
async def test_switched_off_trains_are_relayed_datagram_by_datagram(relay_factory, host):
    relay = await relay_factory(host, udp_gso="off", udp_gro="off")
    udp = the_transport(relay)
    assert not udp.gso and not udp.gro
    pair = await relay.bound_pair()
    segments = [data(pair.clients[0], i, 200) for i in range(10)]
    send_train(pair.peers[0], segments, relay.relay, 200)  # the kernel splits it on receipt
    assert await receive_all(pair.peers[1], 10) == segments
    assert udp.trains_received == 0 and udp.gso_sends == 0
    assert relay.server.core.forwarded_packets == 10


async def test_more_datagrams_than_one_sendmmsg_takes_are_sent_in_order(relay_factory):
    # GRO on, GSO off: every segment of 20 trains of 64 is an entry of its own, 1280 in
    # one read batch, more than the queue's SEND_MESSAGES: it is sent and filled again
    relay = await relay_factory("127.0.0.1", udp_gso="off", udp_gro="on")
    udp = the_transport(relay)
    assert udp.gro and not udp.gso
    pair = await relay.bound_pair()
    trains = [[data(pair.clients[0], t, 100) for _ in range(64)] for t in range(20)]
    for segments in trains:
        send_train(pair.peers[0], segments, relay.relay, 100)
    received = await receive_all(pair.peers[1], 20 * 64)
    assert received == [segment for segments in trains for segment in segments]
    assert udp.trains_received == 20 and udp.send_errors == 0
    assert relay.server.core.forwarded_packets == 1280


async def test_single_datagrams_after_a_full_send_queue_go_out_in_the_next_send(relay_factory):
    # GSO off: 16 trains of 64 fill the send queue's SEND_MESSAGES entries, and the
    # datagrams of other endpoints read after them in the same batch start the next
    relay = await relay_factory("127.0.0.1", udp_gso="off", udp_gro="on")
    udp = the_transport(relay)
    pairs = [await relay.bound_pair() for _ in range(4)]
    trains = [[data(pairs[0].clients[0], t, 100) for _ in range(64)] for t in range(16)]
    assert sum(map(len, trains)) == transport.SEND_MESSAGES
    for segments in trains:
        send_train(pairs[0].peers[0], segments, relay.relay, 100)
    singles = {}
    for i, pair in enumerate(pairs[1:]):
        for index in (0, 1):
            datagram = data(pair.clients[index], i, 200)
            pair.peers[index].send(datagram, relay.relay)
            singles[pair.peers[1 - index]] = datagram
    received = await receive_all(pairs[0].peers[1], 16 * 64)
    assert received == [segment for segments in trains for segment in segments]
    for peer, datagram in singles.items():
        assert await receive_all(peer, 1) == [datagram]
    assert udp.trains_received == 16 and udp.send_errors == 0
    assert relay.server.core.forwarded_packets == 16 * 64 + 6


async def test_options_the_kernel_refuses_stay_off(relay_factory, monkeypatch):
    # option numbers no kernel knows: the probes' real setsockopt/getsockopt fail
    monkeypatch.setattr(transport, "UDP_GRO", 0x7FFF)
    monkeypatch.setattr(transport, "UDP_SEGMENT", 0x7FFE)
    relay = await relay_factory("127.0.0.1", udp_gro="on")
    udp = the_transport(relay)
    assert not udp.gso and not udp.gro
    monkeypatch.undo()
    pair = await relay.bound_pair()
    segments = [data(pair.clients[0], i, 200) for i in range(10)]
    send_train(pair.peers[0], segments, relay.relay, 200)
    assert await receive_all(pair.peers[1], 10) == segments
    assert udp.trains_received == 0 and udp.gso_sends == 0


async def test_a_gso_send_the_kernel_refuses_turns_gso_off_and_is_sent_again(relay_factory):
    relay = await relay_factory("127.0.0.1", udp_gro="on")
    udp = the_transport(relay)
    # IPv4 without UDP checksums: the kernel refuses UDP_SEGMENT sends with EINVAL
    udp._sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    pair = await relay.bound_pair()
    segments = [data(pair.clients[0], i, 200) for i in range(10)]
    send_train(pair.peers[0], segments, relay.relay, 200)
    assert await receive_all(pair.peers[1], 10) == segments
    assert not udp.gso and udp.gro and udp.send_errors == 0
    send_train(pair.peers[0], segments, relay.relay, 200)
    assert await receive_all(pair.peers[1], 10) == segments
    assert udp.trains_received == 2
    assert relay.server.core.forwarded_packets == 20


async def test_an_eio_from_a_device_without_checksum_offload_falls_back(relay_factory, monkeypatch):
    relay = await relay_factory("127.0.0.1")
    udp = the_transport(relay)
    real = transport._sendmmsg
    refused = []

    def sendmmsg(fd, address, count, flags):
        header = transport._MMsgHdr.from_address(address)
        if header.msg_hdr.msg_controllen:
            refused.append(count)
            ctypes.set_errno(errno.EIO)
            return -1
        return real(fd, address, count, flags)

    monkeypatch.setattr(transport, "_sendmmsg", sendmmsg)
    pair = await relay.bound_pair()
    segments = [data(pair.clients[0], i, 500) for i in range(30)]
    send_train(pair.peers[0], segments, relay.relay, 500)
    assert await receive_all(pair.peers[1], 30) == segments
    assert refused and not udp.gso and udp.send_errors == 0


def test_the_switches_come_from_flags_and_the_environment():
    def config(*args: str, **environ: str) -> RelayConfig:
        return from_args(RelayConfig, build_parser(environ).parse_args(["relay", *args]))

    assert (config().udp_gso, config().udp_gro) == ("on", "auto")
    assert config("--udp-gso", "off").udp_gso == "off"
    assert config(RELAYFLEET_UDP_GRO="off").udp_gro == "off"
    assert config("--udp-gro", "on", RELAYFLEET_UDP_GRO="off").udp_gro == "on"


# --udp-gro auto: GRO off until full reads show datagrams of one source back to back.


def test_back_to_back_is_at_least_half_the_datagrams_following_one_of_their_source():
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    assert transport.back_to_back([a] * 128)
    assert transport.back_to_back([a] * 64 + [b] * 64)
    assert not transport.back_to_back([a, b] * 64)
    assert not transport.back_to_back([a, b, c, a])
    assert transport.back_to_back([a, a, b, b])  # 2 of 4 follow one of their own
    assert not transport.back_to_back([a, a, b, c])


def relay_metrics(relay: RelayHarness) -> str:
    return generate_latest(relay_registry(relay.server)).decode()


def full_reads(count: int) -> int:
    """Datagrams for ``count`` full reads (the tests queue them all before the relay reads)."""
    return count * transport.BATCH


def one_source_burst(pair: UdpPair, size: int) -> list[bytes]:
    """Client A's datagrams back to back, over GRO_AUTO_CHECK_EVERY + 1 full reads: one of
    them is looked at."""
    return [
        data(pair.clients[0], i % 256, size)
        for i in range(full_reads(transport.GRO_AUTO_CHECK_EVERY + 1))
    ]


async def test_gro_auto_stays_off_while_sources_take_turns(relay_factory):
    relay = await relay_factory("127.0.0.1")
    udp = the_transport(relay)
    assert not udp.gro and udp.gro_waiting
    pair = await relay.bound_pair()
    to_b = [data(pair.clients[0], i % 256, 200) for i in range(full_reads(8) // 2)]
    to_a = [data(pair.clients[1], i % 256, 200) for i in range(full_reads(8) // 2)]
    for ab, ba in zip(to_b, to_a, strict=True):  # queued before the relay reads: full reads
        pair.peers[0].send(ab, relay.relay)
        pair.peers[1].send(ba, relay.relay)
    assert await receive_all(pair.peers[1], len(to_b)) == to_b
    assert await receive_all(pair.peers[0], len(to_a)) == to_a
    assert udp._full_reads >= transport.GRO_AUTO_CHECK_EVERY  # it did look
    assert not udp.gro and udp.gro_waiting
    assert udp.trains_received == 0


async def test_gro_auto_turns_on_for_good_once_datagrams_come_back_to_back(relay_factory):
    relay = await relay_factory("127.0.0.1")
    udp = the_transport(relay)
    pair = await relay.bound_pair()
    size = 200
    # a train before the switch: the kernel splits it on receipt, relayed datagram by datagram
    segments = [data(pair.clients[0], i, size) for i in range(10)]
    send_train(pair.peers[0], segments, relay.relay, size)
    assert await receive_all(pair.peers[1], 10) == segments
    assert not udp.gro and udp.trains_received == 0
    assert "relayfleet_relay_udp_gro_sockets 0.0" in relay_metrics(relay)
    burst = one_source_burst(pair, size)
    for datagram in burst:
        pair.peers[0].send(datagram, relay.relay)
    assert await receive_all(pair.peers[1], len(burst)) == burst
    assert udp.gro and not udp.gro_waiting
    assert "relayfleet_relay_udp_gro_sockets 1.0" in relay_metrics(relay)
    send_train(pair.peers[0], segments, relay.relay, size)
    assert await receive_all(pair.peers[1], 10) == segments
    assert udp.trains_received == 1
    # datagrams taking turns no longer matter: GRO stays on
    turns = full_reads(transport.GRO_AUTO_CHECK_EVERY)
    for i in range(turns):
        pair.peers[i % 2].send(data(pair.clients[i % 2], i % 256, size), relay.relay)
    assert len(await receive_all(pair.peers[1], turns // 2)) == turns // 2
    assert len(await receive_all(pair.peers[0], turns // 2)) == turns // 2
    assert udp.gro
    assert relay.server.core.forwarded_packets == 20 + len(burst) + turns
    assert relay.total_drops() == 0 and udp.send_errors == 0


async def test_gro_auto_where_the_kernel_refuses_gro_stays_off(relay_factory, monkeypatch):
    monkeypatch.setattr(transport, "UDP_GRO", 0x7FFF)
    relay = await relay_factory("127.0.0.1")
    udp = the_transport(relay)
    pair = await relay.bound_pair()
    burst = one_source_burst(pair, 100)
    for datagram in burst:
        pair.peers[0].send(datagram, relay.relay)
    assert await receive_all(pair.peers[1], len(burst)) == burst
    assert not udp.gro and not udp.gro_waiting
