"""RelayCore.handle_train on a fake clock: a train acts and counts as its segments one by one."""

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


@pytest.fixture
def h() -> CoreHarness:
    return CoreHarness()


def data(client, tag: int, size: int) -> bytes:
    return client.data(bytes([tag]) * (size - geneve.HEADER_LEN))


def train(segments: list[bytes]) -> memoryview:
    return memoryview(b"".join(segments))


def as_sends(buffer: memoryview, runs, answers, segment_size: int):
    """Runs and answers as the datagrams they send, runs split into their segments."""
    sent = []
    for start, stop, destination in runs:
        for at in range(start, stop, segment_size):
            sent.append((bytes(buffer[at : min(at + segment_size, stop)]), destination))
    return sent, list(answers)


def test_a_train_from_a_bound_client_is_one_run_to_its_peer(h):
    pair = h.allocate()
    h.bind_pair(pair)
    segments = [data(pair.a, i, 100) for i in range(5)] + [data(pair.a, 5, 40)]
    buffer = train(segments)
    runs, answers = h.core.handle_train(buffer, 100, A_ADDR, h.now)
    assert runs == [(0, 540, B_ADDR)] and answers == []
    client = h.core.endpoint(1).clients[0]
    assert (client.packets, client.bytes, client.last_seen) == (6, 540, h.now)
    assert (h.core.forwarded_packets, h.core.forwarded_bytes) == (6, 540)
    assert h.drops() == {}


@pytest.mark.parametrize("size", [200, 1400])
def test_a_segment_of_an_unknown_vni_anywhere_in_a_train_is_dropped_alone(h, size):
    """Segments of a multiple of 8 bytes, whose headers the core compares in place: a train
    of one client is one run, and one foreign segment, wherever it is, splits it."""
    pair = h.allocate()
    h.bind_pair(pair)
    count = 12
    whole = train([data(pair.a, i, size) for i in range(count)])
    assert h.core.handle_train(whole, size, A_ADDR, h.now) == ([(0, count * size, B_ADDR)], [])
    for k in range(count):
        segments = [data(pair.a, i, size) for i in range(count)]
        segments[k] = geneve.data_header(99) + bytes(size - geneve.HEADER_LEN)
        runs, answers = h.core.handle_train(train(segments), size, A_ADDR, h.now)
        before = [(0, k * size, B_ADDR)] if k else []
        after = [((k + 1) * size, count * size, B_ADDR)] if k < count - 1 else []
        assert (runs, answers) == (before + after, [])
    assert h.drops() == {Drop.UNKNOWN_VNI.value: count}
    assert h.core.forwarded_packets == count + count * (count - 1)


def test_a_train_from_a_stranger_is_dropped_segment_by_segment(h):
    pair = h.allocate()
    h.bind_pair(pair)
    buffer = train([data(pair.a, i, 64) for i in range(7)])
    assert h.core.handle_train(buffer, 64, STRANGER_ADDR, h.now) == ([], [])
    assert h.drops() == {Drop.DATA_FROM_UNKNOWN_SOURCE.value: 7}
    assert h.core.forwarded_packets == 0


def test_a_train_before_bound_is_dropped(h):
    pair = h.allocate()
    h.bind(pair.a, A_ADDR)
    buffer = train([data(pair.a, i, 64) for i in range(3)])
    assert h.core.handle_train(buffer, 64, A_ADDR, h.now) == ([], [])
    assert h.drops() == {Drop.DATA_BEFORE_BOUND.value: 3}


def test_foreign_vni_control_and_short_segments_are_handled_on_their_own(h):
    first, second = h.allocate(1, 1), h.allocate(2, 2)
    h.bind_pair(first)
    h.bind_pair(second, A_ADDR, MOVED_ADDR)
    size = 90
    segments = [
        data(first.a, 1, size),
        data(second.a, 2, size),  # another endpoint of the same source: its own run
        data(first.a, 3, size),
        first.a.bind()[:size].ljust(size, b"\0"),  # control after bound (version 0): dropped
        data(first.a, 4, size),
        b"\x00" * 4,  # short
    ]
    buffer = train(segments)
    runs, answers = h.core.handle_train(buffer, size, A_ADDR, h.now)
    assert runs == [(0, 90, B_ADDR), (90, 180, MOVED_ADDR), (180, 270, B_ADDR), (360, 450, B_ADDR)]
    assert answers == []
    assert h.drops() == {Drop.CONTROL_AFTER_BOUND.value: 1, Drop.SHORT_PACKET.value: 1}
    assert h.core.endpoint(1).clients[0].packets == 3
    assert h.core.endpoint(2).clients[0].packets == 1
    assert h.core.forwarded_packets == 4


def test_a_segment_size_of_zero_is_refused(h):
    with pytest.raises(ValueError):
        h.core.handle_train(memoryview(b"x" * 10), 0, A_ADDR, h.now)


def test_an_empty_train_counts_as_a_short_packet(h):
    assert h.core.handle_train(memoryview(b""), 100, A_ADDR, h.now) == ([], [])
    assert h.drops() == {Drop.SHORT_PACKET.value: 1}


def random_segment(rng: random.Random, pairs: list[Pair], size: int) -> bytes:
    kind = rng.randrange(10)
    pair = rng.choice(pairs)
    client = rng.choice(pair.clients)
    if kind == 0:
        return client.bind()[:size].ljust(size, b"\0")  # control, usually dropped
    if kind == 1:
        return geneve.data_header(99) + bytes(size - geneve.HEADER_LEN)  # unknown VNI
    return data(client, rng.randrange(256), size)


@pytest.mark.parametrize("seed", range(80))
def test_a_train_acts_and_counts_as_its_segments_one_by_one(seed):
    """The property: same sends, in order, same counters, drops and client state."""
    rng = random.Random(seed)
    h = CoreHarness()
    pairs = [h.allocate(vni, vni) for vni in (1, 2, 3)]
    h.bind_pair(pairs[0])
    h.bind_pair(pairs[1], A_ADDR, STRANGER_ADDR)
    h.bind(pairs[2].a, A_ADDR)  # half bound
    size = rng.choice((16, 64, 100))
    count = rng.randrange(1, 40)
    segments = [random_segment(rng, pairs, size) for _ in range(count)]
    if seed % 2:  # mostly the usual train: data of one client, maybe one odd segment
        client = rng.choice(pairs[rng.randrange(3)].clients)
        segments = [data(client, rng.randrange(256), size) for _ in range(count)]
        if rng.random() < 0.5:
            segments[rng.randrange(count)] = random_segment(rng, pairs, size)
    if rng.random() < 0.5:
        segments[-1] = segments[-1][: rng.randrange(1, size)]  # a shorter last one
    source = rng.choice((A_ADDR, B_ADDR, STRANGER_ADDR, MOVED_ADDR))
    twin = copy.deepcopy(h)

    expected_relayed, expected_answers = [], []
    for segment in segments:
        send = twin.core.handle(segment, source, twin.now)
        if send is not None and send[0] is segment:
            expected_relayed.append(send)
        elif send is not None:
            expected_answers.append(send)
    buffer = train(segments)
    runs, answers = h.core.handle_train(buffer, size, source, h.now)
    relayed, made = as_sends(buffer, runs, answers, size)
    assert relayed == expected_relayed
    # answers are sealed with fresh nonces: the same number, to the same places
    assert [d for _, d in made] == [d for _, d in expected_answers]
    assert_same_state(h.core, twin.core, (1, 2, 3))
