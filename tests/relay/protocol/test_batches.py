"""RelayCore.handle_batch on a fake clock: a batch acts and counts as its datagrams one by one.

A batch is what one ``recvmmsg`` reads: datagrams from many sources, one per
slot of a buffer. The core relays a data datagram inline when an earlier one
of the batch, of the same source and header, was relayed and no control
datagram came between; these tests hold that to what :meth:`RelayCore.handle`
does for each datagram in turn.
"""

from __future__ import annotations

import copy
import random

import pytest

from relay.protocol import geneve
from relay.protocol.core import Drop
from tests.relay.core_harness import (
    A_ADDR,
    B_ADDR,
    STRANGER_ADDR,
    CoreHarness,
    Pair,
    assert_same_state,
)

MOVED_ADDR = ("192.0.2.9", 40009)
STRIDE = 512


@pytest.fixture
def h() -> CoreHarness:
    return CoreHarness()


def data(client, tag: int, size: int = 100) -> bytes:
    return client.data(bytes([tag]) * (size - geneve.HEADER_LEN))


def bind_v1(h: CoreHarness, pair: Pair, index: int, source, generation: int = 1) -> None:
    client = pair.clients[index]
    other = pair.clients[1 - index].public_key
    reply = h.send(client.bind_v1(other, generation), source)
    assert reply is not None
    assert h.send(client.answer(reply[0]), source) is None


def v1_pair(h: CoreHarness, vni: int, a_addr=A_ADDR, b_addr=B_ADDR) -> Pair:
    pair = h.allocate(vni, vni)
    bind_v1(h, pair, 0, a_addr)
    bind_v1(h, pair, 1, b_addr)
    assert h.core.endpoint(vni).bound
    return pair


def rebind_messages(h: CoreHarness, pair: Pair, index: int, source, generation: int):
    """The bind and its answer that move client ``index`` to ``source``: the challenge
    is a MAC of the bind and the source, so a copy of the core gives the very one."""
    client = pair.clients[index]
    bind = client.bind_v1(pair.clients[1 - index].public_key, generation)
    reply = copy.deepcopy(h).send(bind, source)
    assert reply is not None
    return bind, client.answer(reply[0])


def layout(batch: list[tuple[bytes, object]], first: int = 0, fill: bytes = b""):
    """The batch's datagrams in slots ``first``, ``first + 1``, ... of one buffer, each
    slot's rest filled with ``fill`` (an older datagram's bytes, as a reused slot holds)."""
    buffer = bytearray((first + len(batch)) * STRIDE)
    for k, (datagram, _) in enumerate(batch):
        start = (first + k) * STRIDE
        slot = (datagram + fill[len(datagram) :])[:STRIDE]
        buffer[start : start + len(slot)] = slot
    sizes = tuple(len(datagram) for datagram, _ in batch)
    sources = [source for _, source in batch]
    return memoryview(buffer), sizes, sources


def one_size(sizes) -> bool:
    """What the transport tells handle_batch: whether every datagram is sizes[0] long."""
    return sizes.count(sizes[0]) == len(sizes)


def one_header(slots, first: int, count: int) -> bool:
    """What the transport tells handle_batch: whether every slot of the batch starts with
    the same header bytes (a short datagram's slot with an older one's)."""
    starts = range(first * STRIDE, (first + count) * STRIDE, STRIDE)
    return len({bytes(slots[at : at + geneve.HEADER_LEN]) for at in starts}) <= 1


def handle_batch(h: CoreHarness, slots, first: int, sizes, sources):
    """handle_batch as the transport calls it, with what it works out once per read."""
    alike = one_header(slots, first, len(sizes))
    return h.core.handle_batch(
        slots, STRIDE, first, sizes, sources, h.now, one_size(sizes) if sizes else True, alike
    )


def expected(h: CoreHarness, batch):
    """What handle does, one datagram at a time, on a copy: (relayed, answers, twin)."""
    twin = copy.deepcopy(h)
    relayed: dict[object, list[int]] = {}
    answers = []
    for k, (datagram, source) in enumerate(batch):
        send = twin.core.handle(datagram, source, twin.now)
        if send is not None and send[0] is datagram:
            relayed.setdefault(send[1], []).append(k)
        elif send is not None:
            answers.append(send)
    return relayed, answers, twin


def test_a_batch_of_two_clients_is_relayed_to_each_other_in_order(h):
    pair = v1_pair(h, 1)
    batch = [
        (data(pair.a, i), A_ADDR) if i % 2 == 0 else (data(pair.b, i), B_ADDR) for i in range(9)
    ]
    slots, sizes, sources = layout(batch, first=3)
    relayed, answers = handle_batch(h, slots, 3, sizes, sources)
    assert relayed == {B_ADDR: [0, 2, 4, 6, 8], A_ADDR: [1, 3, 5, 7]} and answers == []
    a, b = h.core.endpoint(1).clients
    assert (a.packets, a.bytes, b.packets, b.bytes) == (5, 500, 4, 400)
    assert a.last_seen == b.last_seen == h.now
    assert (h.core.forwarded_packets, h.core.forwarded_bytes) == (9, 900)
    assert h.drops() == {}


def test_data_after_a_rebind_in_the_same_batch_follows_the_moved_client(h):
    """Inline relaying stops at a control datagram: the re-bind moves client a, so its
    old address's data is dropped and its peer's data goes to the new address."""
    pair = v1_pair(h, 1)
    bind, answer = rebind_messages(h, pair, 0, MOVED_ADDR, generation=2)
    batch = [
        (data(pair.a, 1), A_ADDR),
        (data(pair.b, 2), B_ADDR),
        (data(pair.a, 3), A_ADDR),
        (bind, MOVED_ADDR),
        (answer, MOVED_ADDR),
        (data(pair.a, 4), A_ADDR),  # the old address: dropped now
        (data(pair.b, 5), B_ADDR),  # to the new one
        (data(pair.a, 6), MOVED_ADDR),
    ]
    want_relayed, want_answers, twin = expected(h, batch)
    slots, sizes, sources = layout(batch)
    relayed, answers = handle_batch(h, slots, 0, sizes, sources)
    assert relayed == want_relayed == {B_ADDR: [0, 2, 7], A_ADDR: [1], MOVED_ADDR: [6]}
    assert [to for _, to in answers] == [to for _, to in want_answers] == [MOVED_ADDR]
    assert h.drops() == {Drop.DATA_FROM_UNKNOWN_SOURCE.value: 1}
    assert h.core.endpoint(1).clients[0].addr == MOVED_ADDR
    assert_same_state(h.core, twin.core, [1])


def test_a_short_datagram_is_dropped_though_its_slot_holds_a_relayed_header(h):
    """Only a datagram's own bytes count: a 4-byte datagram in a slot whose older
    bytes complete the header of the data being relayed inline is still short."""
    pair = v1_pair(h, 1)
    packet = data(pair.a, 1)
    batch = [(packet, A_ADDR), (packet[:4], A_ADDR), (packet, A_ADDR)]
    slots, sizes, sources = layout(batch, fill=packet)
    relayed, answers = handle_batch(h, slots, 0, sizes, sources)
    assert relayed == {B_ADDR: [0, 2]} and answers == []
    assert h.drops() == {Drop.SHORT_PACKET.value: 1}
    assert h.core.endpoint(1).clients[0].packets == 2


def test_one_datagram_and_none(h):
    pair = v1_pair(h, 1)
    slots, sizes, sources = layout([(data(pair.b, 1), B_ADDR)], first=1)
    assert handle_batch(h, slots, 1, sizes, sources) == ({A_ADDR: [0]}, [])
    assert handle_batch(h, slots, 0, (), []) == ({}, [])
    assert h.core.forwarded_packets == 1


def random_datagram(rng: random.Random, pairs: list[Pair]) -> tuple[bytes, object]:
    kind = rng.randrange(12)
    pair = rng.choice(pairs)
    index = rng.randrange(2)
    client = pair.clients[index]
    source = rng.choice((A_ADDR, B_ADDR, STRANGER_ADDR, MOVED_ADDR))
    size = rng.choice((8, 9, 60, 100, 300))
    if kind == 0:
        return client.bind_v1(pair.clients[1 - index].public_key, rng.randrange(1, 4)), source
    if kind == 1:
        return geneve.data_header(99) + bytes(size - geneve.HEADER_LEN), source  # unknown VNI
    if kind == 2:
        return data(client, rng.randrange(256), size)[: rng.randrange(0, 8)], source  # short
    if kind == 3:  # a control header on what is otherwise data
        packet = bytearray(data(client, 0, size))
        packet[1] |= geneve.CONTROL_BIT
        return bytes(packet), source
    # mostly data from the address each client is bound at
    return data(client, rng.randrange(256), size), (A_ADDR, B_ADDR)[index]


@pytest.mark.parametrize("seed", range(100))
def test_a_batch_acts_and_counts_as_its_datagrams_one_by_one(seed):
    """The property: same sends, in order by destination, same answers, counters, drops
    and client state, for batches that mix data, control (re-binds that move a client
    included), short datagrams and strangers."""
    rng = random.Random(seed)
    h = CoreHarness()
    pairs = [v1_pair(h, 1), v1_pair(h, 2, A_ADDR, STRANGER_ADDR), h.allocate(3, 3)]
    bind_v1(h, pairs[2], 0, A_ADDR)  # half bound
    batch = [random_datagram(rng, pairs) for _ in range(rng.randrange(1, 80))]
    if seed % 3 == 0:  # a re-bind somewhere in the batch
        bind, answer = rebind_messages(h, pairs[0], 0, MOVED_ADDR, generation=2)
        at = rng.randrange(len(batch) + 1)
        batch[at:at] = [(bind, MOVED_ADDR), (answer, MOVED_ADDR)]
    fill = data(pairs[0].a, 7, STRIDE) if seed % 2 else b""
    first = rng.randrange(4)
    want_relayed, want_answers, twin = expected(h, batch)
    slots, sizes, sources = layout(batch, first, fill)
    relayed, answers = handle_batch(h, slots, first, sizes, sources)
    assert relayed == want_relayed
    assert list(relayed) == list(want_relayed)  # destinations in order of their first datagram
    # answers are sealed with fresh nonces: the same number, to the same places
    assert [to for _, to in answers] == [to for _, to in want_answers]
    assert_same_state(h.core, twin.core, [1, 2, 3])


def one_header_datagram(rng: random.Random, pair: Pair, size: int | None) -> tuple[bytes, object]:
    """Data of ``pair``'s endpoint (every datagram the same header), mostly from where its
    clients are bound; where ``size`` is None, of sizes that change, a few of them short."""
    index = rng.randrange(2)
    source = rng.choice((A_ADDR, B_ADDR, A_ADDR, B_ADDR, STRANGER_ADDR, MOVED_ADDR))
    packet = data(pair.clients[index], rng.randrange(256), size or rng.choice((8, 9, 60, 300)))
    if size is None and rng.randrange(8) == 0:
        packet = packet[: rng.randrange(0, geneve.HEADER_LEN)]  # its slot keeps the header
    return packet, source


@pytest.mark.parametrize("seed", range(60))
def test_a_batch_of_one_header_acts_and_counts_as_its_datagrams_one_by_one(seed):
    """The same property where every slot starts with the same header, which the core
    then reads once (``one_header``): a busy endpoint's read. With strangers, short
    datagrams and sizes that change; a third of the batches of one size, and a fifth
    all control (binds: one header too, each handled on its own)."""
    rng = random.Random(seed)
    h = CoreHarness()
    pair = v1_pair(h, 1)
    count = rng.randrange(2, 80)
    if seed % 5 == 0:
        bind = pair.a.bind_v1(pair.b.public_key, 2)
        batch = [(bind, rng.choice((A_ADDR, MOVED_ADDR))) for _ in range(count)]
    else:
        size = 100 if seed % 3 == 0 else None
        batch = [one_header_datagram(rng, pair, size) for _ in range(count)]
    first = rng.randrange(4)
    want_relayed, want_answers, twin = expected(h, batch)
    slots, sizes, sources = layout(batch, first, fill=data(pair.a, 7, STRIDE))
    assert one_header(slots, first, count)
    relayed, answers = handle_batch(h, slots, first, sizes, sources)
    assert relayed == want_relayed
    assert list(relayed) == list(want_relayed)
    assert [to for _, to in answers] == [to for _, to in want_answers]
    assert_same_state(h.core, twin.core, [1])
