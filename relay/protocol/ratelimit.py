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
        if self.burst_per_source < 1 or self.max_sources < 1:
            raise ValueError("a burst admits at least one message; the table at least one source")


DEFAULT_HANDSHAKE_LIMITS = HandshakeLimits()


class HandshakeLimiter:
    """Two levels of token buckets over a clock the caller passes in."""

    __slots__ = ("_buckets", "_limits", "_total", "_total_at")

    def __init__(self, limits: HandshakeLimits) -> None:
        self._limits = limits
        self._buckets: dict[Hashable, list[float]] = {}
        self._total = limits.total_rate
        self._total_at: float | None = None

    def allow(self, source: Hashable, now: float) -> bool:
        """Take a token from ``source``'s bucket and one from the total; False if one is empty."""
        limits = self._limits
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= limits.max_sources:
                self._buckets.clear()
            bucket = self._buckets[source] = [limits.burst_per_source, now]
        else:
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(limits.burst_per_source, bucket[0] + elapsed * limits.rate_per_source)
            bucket[1] = now
        if bucket[0] < 1:
            return False
        if self._total_at is not None:
            elapsed = max(0.0, now - self._total_at)
            self._total = min(limits.total_rate, self._total + elapsed * limits.total_rate)
        self._total_at = now
        if self._total < 1:
            return False
        bucket[0] -= 1
        self._total -= 1
        return True

    def __len__(self) -> int:
        return len(self._buckets)


class TokenBuckets:
    """A token bucket per key, over a clock the caller passes in.

    Each key's bucket fills at ``rate`` tokens a second up to ``burst``; taking a
    token that is not there is refused with the seconds until one will be, so a
    caller can say when to come back (the allocation API's ``Retry-After``).
    Unlike :class:`HandshakeLimiter` there is no bucket for all keys together.
    At most ``max_keys`` buckets are kept: when the table is full it starts
    afresh, which gives no key more than one extra burst.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = DEFAULT_MAX_SOURCES) -> None:
        if not rate > 0 or not burst >= 1 or max_keys < 1:
            raise ValueError(
                "a rate is positive, a burst admits at least one token, a table holds a key"
            )
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, list[float]] = {}

    def take(self, key: Hashable, now: float) -> float:
        """Take a token from ``key``'s bucket and return 0.0; if it holds none, take
        nothing and return how many seconds until it will."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = [self.burst, now]
        else:
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
            bucket[1] = now
        if bucket[0] < 1:
            return (1 - bucket[0]) / self.rate
        bucket[0] -= 1
        return 0.0

    def __len__(self) -> int:
        return len(self._buckets)
