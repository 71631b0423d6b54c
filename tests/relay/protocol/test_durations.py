"""Go-style durations, as Go's time.ParseDuration and Duration.String write them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "30s"),
        (300, "5m0s"),
        (0, "0s"),
        (1.5, "1.5s"),
        (0.25, "250ms"),
        (5400, "1h30m0s"),
        (90061, "25h1m1s"),
        (0.0000015, "1.5µs"),
        (0.000000001, "1ns"),
        (61.001, "1m1.001s"),
    ],
)
def test_format_matches_go(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("5m0s", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("0", 0),
        ("100us", 0.0001),
        ("100µs", 0.0001),
    ],
)
def test_parse_matches_go(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "5 m", "1d", "1h-5m", "abc", "."])
def test_parse_refuses_malformed(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.integers(0, 10**15))
def test_round_trip_in_nanoseconds(ns):
    assert round(parse_duration(format_duration(ns / 1e9)) * 1e9) == ns


@pytest.mark.parametrize("text", ["1" + "0" * 300 + "h", "-" + "9" * 400 + "ns"])
def test_parse_refuses_a_duration_beyond_a_float(text):
    with pytest.raises(ValueError, match=r"invalid duration .*: too large"):
        parse_duration(text)
