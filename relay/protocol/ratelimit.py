"""Limits on handshake work, so control-packet floods cannot starve relaying.

Every bind or answer costs the relay public-key crypto, and a flood of them
(valid-looking or not) could otherwise take the CPU that relaying needs.
:class:`HandshakeLimiter` admits that work only while two token buckets allow:
one per source address, so a flooding source is dropped cheaply while other
sources still complete their handshakes, and one for all sources together, so
a flood from many (spoofed) sources is bounded too. Buckets are kept for at
most ``max_sources`` sources: when the table is full it starts afresh, which
gives no source more than one extra burst.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

DEFAULT_RATE_PER_SOURCE = 50.0
DEFAULT_BURST_PER_SOURCE = 200.0
DEFAULT_TOTAL_RATE = 10_000.0
DEFAULT_MAX_SOURCES = 65_536


@dataclass(frozen=True)
class HandshakeLimits:
    """Handshake messages (binds and answers) per second, and the bursts allowed."""

    rate_per_source: float = DEFAULT_RATE_PER_SOURCE
    burst_per_source: float = DEFAULT_BURST_PER_SOURCE
    total_rate: float = DEFAULT_TOTAL_RATE
    max_sources: int = DEFAULT_MAX_SOURCES

    def __post_init__(self) -> None:
        if min(self.rate_per_source, self.burst_per_source, self.total_rate) <= 0:
            raise ValueError("handshake rates and bursts must be positive")
        if min(self.burst_per_source, self.total_rate) < 1 or self.max_sources < 1:
            raise ValueError(
                "a burst and the total admit at least one message; the table holds a source"
            )


DEFAULT_HANDSHAKE_LIMITS = HandshakeLimits()


class HandshakeLimiter:
    """A token bucket per source and one for all sources together, over a clock the caller
    passes in."""

    __slots__ = ("_per_source", "_total")

    def __init__(self, limits: HandshakeLimits) -> None:
        self._per_source = TokenBuckets(
            limits.rate_per_source, limits.burst_per_source, limits.max_sources
        )
        self._total = TokenBuckets(limits.total_rate, limits.total_rate, 1)

    def allow(self, source: Hashable, now: float) -> bool:
        """Take a token from ``source``'s bucket and one from the total; False, taking
        neither, if one is empty."""
        if self._per_source.take(source, now):
            return False
        if self._total.take(None, now):
            self._per_source.give_back(source)
            return False
        return True

    def __len__(self) -> int:
        return len(self._per_source)


class TokenBuckets:
    """A token bucket per key, over a clock the caller passes in.

    Each key's bucket fills at ``rate`` tokens a second up to ``burst``; taking a
    token that is not there is refused with the seconds until one will be, so a
    caller can say when to come back (the allocation API's ``Retry-After``).
    At most ``max_keys`` buckets are kept: when the table is full it starts
    afresh, which gives no key more than one extra burst.

    A bucket is one float, its level: the tokens taken from it, counted on a
    scale where the clock adds ``rate`` a second (``now * rate``), so that the
    tokens it holds at ``now`` are ``burst - (level - now * rate)``, capped at
    ``burst`` (a level behind the clock is a full bucket). Taking a token adds
    exactly 1, so a burst taken at one instant is counted without rounding.
    A key with no level has a full bucket. One float per key, rather than
    tokens and a time, because the tables hold tens of thousands of keys.
    """

    __slots__ = ("_levels", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = DEFAULT_MAX_SOURCES) -> None:
        if not rate > 0 or not burst >= 1 or max_keys < 1:
            raise ValueError(
                "a rate is positive, a burst admits at least one token, a table holds a key"
            )
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._levels: dict[Hashable, float] = {}

    def take(self, key: Hashable, now: float) -> float:
        """Take a token from ``key``'s bucket and return 0.0; if it holds none, take
        nothing and return how many seconds until it will."""
        levels = self._levels
        clock = now * self.rate
        stored = levels.get(key)
        if stored is None or stored < clock:
            level = clock
        elif stored > clock + self.burst:  # the clock went back: empty, refilling from now
            level = levels[key] = clock + self.burst
        else:
            level = stored
        owed = level - clock - (self.burst - 1)
        if owed > 0:
            return owed / self.rate
        if stored is None and len(levels) >= self.max_keys:
            levels.clear()
        levels[key] = level + 1
        return 0.0

    def give_back(self, key: Hashable) -> None:
        """Return the token just taken from ``key``'s bucket."""
        self._levels[key] -= 1

    def rekey(self, key: Hashable) -> None:
        """Hold the bucket of a key equal to ``key`` under ``key`` itself, an object the
        caller keeps anyway, so that the table holds no copy of its own."""
        levels = self._levels
        level = levels.pop(key, None)
        if level is not None:
            levels[key] = level

    def __len__(self) -> int:
        return len(self._levels)
