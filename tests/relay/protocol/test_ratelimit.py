"""The handshake limiter's token buckets and the allocation API's, with a fake clock."""

import pytest

from relay.protocol.ratelimit import HandshakeLimiter, HandshakeLimits, TokenBuckets


def admitted(limiter: HandshakeLimiter, source: str, now: float, tries: int) -> int:
    return sum(limiter.allow(source, now) for _ in range(tries))


def test_a_source_gets_its_burst_then_its_rate():
    limiter = HandshakeLimiter(HandshakeLimits(rate_per_source=10, burst_per_source=5))
    assert admitted(limiter, "a", 0.0, 20) == 5
    assert admitted(limiter, "a", 0.5, 20) == 5
    assert admitted(limiter, "a", 0.75, 20) == 2


def test_an_idle_source_refills_only_up_to_its_burst():
    limiter = HandshakeLimiter(HandshakeLimits(rate_per_source=10, burst_per_source=5))
    assert admitted(limiter, "a", 0.0, 5) == 5
    assert admitted(limiter, "a", 3600.0, 20) == 5


def test_one_flooding_source_does_not_limit_another():
    limiter = HandshakeLimiter(HandshakeLimits(rate_per_source=10, burst_per_source=5))
    assert admitted(limiter, "flood", 0.0, 1000) == 5
    assert admitted(limiter, "quiet", 0.0, 2) == 2


def test_the_total_rate_bounds_many_sources_together():
    limiter = HandshakeLimiter(
        HandshakeLimits(rate_per_source=10, burst_per_source=5, total_rate=100)
    )
    assert sum(admitted(limiter, f"s{i}", 0.0, 5) for i in range(100)) == 100
    assert admitted(limiter, "late", 0.0, 5) == 0
    assert admitted(limiter, "late", 0.02, 5) == 2


def test_a_refused_source_keeps_its_tokens_when_only_the_total_is_empty():
    limiter = HandshakeLimiter(HandshakeLimits(rate_per_source=1, burst_per_source=3, total_rate=3))
    assert admitted(limiter, "a", 0.0, 3) == 3
    assert admitted(limiter, "b", 0.0, 3) == 0
    assert admitted(limiter, "b", 1.0, 3) == 3


def test_the_source_table_is_bounded():
    limiter = HandshakeLimiter(
        HandshakeLimits(rate_per_source=1, burst_per_source=1, total_rate=1e9, max_sources=100)
    )
    for i in range(1000):
        limiter.allow(i, 0.0)
    assert len(limiter) <= 100


def test_a_clock_going_backwards_adds_no_tokens():
    limiter = HandshakeLimiter(HandshakeLimits(rate_per_source=10, burst_per_source=2))
    assert admitted(limiter, "a", 100.0, 5) == 2
    assert admitted(limiter, "a", 50.0, 5) == 0


@pytest.mark.parametrize(
    "limits",
    [
        {"rate_per_source": 0},
        {"burst_per_source": 0.5},
        {"total_rate": -1},
        {"total_rate": 0.5},
        {"max_sources": 0},
    ],
)
def test_nonsense_limits_are_refused(limits):
    with pytest.raises(ValueError):
        HandshakeLimits(**limits)


def taken(buckets: TokenBuckets, key: str, now: float, tries: int) -> int:
    return sum(buckets.take(key, now) == 0.0 for _ in range(tries))


def test_a_key_gets_its_burst_then_its_rate_and_is_told_when_to_come_back():
    buckets = TokenBuckets(rate=10, burst=20)
    assert taken(buckets, "a", 0.0, 30) == 20
    assert buckets.take("a", 0.0) == pytest.approx(0.1)
    assert buckets.take("a", 0.05) == pytest.approx(0.05)
    assert taken(buckets, "a", 0.1, 5) == 1
    assert taken(buckets, "a", 0.5, 10) == 4


def test_a_refusal_takes_nothing_and_keys_are_apart():
    buckets = TokenBuckets(rate=1, burst=2)
    assert taken(buckets, "a", 0.0, 2) == 2
    for _ in range(100):
        assert buckets.take("a", 0.5) == pytest.approx(0.5)
    assert taken(buckets, "a", 1.0, 5) == 1
    assert taken(buckets, "b", 1.0, 5) == 2


def test_an_idle_key_refills_only_up_to_its_burst_and_a_clock_going_back_adds_nothing():
    buckets = TokenBuckets(rate=10, burst=3)
    assert taken(buckets, "a", 0.0, 3) == 3
    assert taken(buckets, "a", 3600.0, 10) == 3
    assert taken(buckets, "a", 10.0, 10) == 0


def test_after_a_clock_going_back_the_bucket_refills_from_the_new_reading():
    buckets = TokenBuckets(rate=10, burst=2)
    assert taken(buckets, "a", 100.0, 2) == 2
    assert buckets.take("a", 50.0) == pytest.approx(0.1)
    assert taken(buckets, "a", 50.0, 5) == 0
    assert taken(buckets, "a", 50.1, 5) == 1


@pytest.mark.parametrize("rate", [0.1, 1 / 3, 7.3])
def test_a_whole_burst_is_taken_at_one_instant_whatever_the_rate(rate):
    buckets = TokenBuckets(rate=rate, burst=7)
    now = 123_456.789
    assert taken(buckets, "a", now, 10) == 7
    assert buckets.take("a", now) == pytest.approx(1 / rate)


def test_a_token_given_back_can_be_taken_again():
    buckets = TokenBuckets(rate=1, burst=2)
    assert taken(buckets, "a", 0.0, 5) == 2
    buckets.give_back("a")
    assert taken(buckets, "a", 0.0, 5) == 1
    assert buckets.take("a", 0.25) == pytest.approx(0.75)


def test_a_bucket_rekeyed_keeps_its_level_under_the_new_object():
    buckets = TokenBuckets(rate=1, burst=2)
    first, second = b"pair" * 16, bytes(bytearray(b"pair" * 16))
    assert taken(buckets, first, 0.0, 5) == 2
    buckets.rekey(second)
    (key,) = buckets._levels
    assert key is second
    assert buckets.take(first, 0.0) == pytest.approx(1.0)
    buckets.rekey(b"another" * 9)
    assert len(buckets) == 1


def test_the_key_table_is_bounded():
    buckets = TokenBuckets(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        buckets.take(i, 0.0)
    assert len(buckets) <= 100


@pytest.mark.parametrize(
    "limits", [{"rate": 0}, {"rate": float("nan")}, {"burst": 0.5}, {"max_keys": 0}]
)
def test_nonsense_buckets_are_refused(limits):
    with pytest.raises(ValueError):
        TokenBuckets(**({"rate": 1, "burst": 1} | limits))
