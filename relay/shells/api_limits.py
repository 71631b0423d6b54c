"""The allocation API's limits on its callers, sans I/O: per client address and per pair.

Where a relay's allocation API is on and others can reach it, one caller
could otherwise ask as fast as it can. Two limits stand in the way, both
token buckets (:class:`relay.protocol.ratelimit.TokenBuckets`) over a clock
the caller passes in:

- per client address, every allocation request takes a token
  (``--api-rate`` a second, ``--api-burst`` at once);
- per pair of keys, every request that will make a fresh allocation takes a
  token (``--api-max-per-pair`` at once, refilled at that many per
  steady-state lifetime).

Why the second limit counts fresh allocations rather than live ones: the
store keeps at most one allocation per pair on a relay (docs/protocol.md
"Allocation": the same pair not yet bound gets its allocation back, and once
bound asking again discards the bound one and makes a new one). A pair can
therefore never hold more than one endpoint, and what one pair can do is
churn: bind, ask again, and so make the relay free and allocate over and
over. The limit bounds that churn to ``--api-max-per-pair`` fresh allocations
per steady-state lifetime, as many as could be live at once had each not
replaced the last. A request that will get back the pair's allocation, still
unbound, costs the pair nothing: it changes nothing, and refusing it would
break the rule that both clients may ask.

Both refusals are 429 Too Many Requests with ``Retry-After``: the caller did
nothing wrong but ask too often, and may ask again later (409 Conflict would
tell it to change its request, and nothing about it needs changing).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from relay.protocol.allocation import Allocation
from relay.protocol.durations import format_duration
from relay.protocol.ratelimit import DEFAULT_MAX_SOURCES, TokenBuckets

DEFAULT_RATE = 10.0
DEFAULT_BURST = 20.0
DEFAULT_MAX_PER_PAIR = 4

REFUSALS = ("allocations_off", "rate_limited", "pair_limited")
"""Why the API refuses an allocation request before allocating: ``--api-allocations`` (403),
the client address's limit and the pair's (429); the reasons of
``relayfleet_relay_allocations_refused_total``."""

Pair = bytes
"""A pair of keys as its 64 raw bytes (:func:`relay.protocol.keys.raw_pair`). The tables
below hold up to ``max_keys`` pairs each, keyed by the ``raw_keys`` of the allocation last
handed out (the same object, not a copy: 112 B a pair)."""


class TooManyRequests(Exception):
    """A request refused for now (429); ``reason`` names the limit, for metrics."""

    def __init__(self, reason: str, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1, as ``Retry-After`` takes them."""
        return str(max(1, math.ceil(self.retry_after)))


class AllocationLimits:
    """The two limits of one relay's allocation API (see the module's docstring)."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        max_per_pair: int = DEFAULT_MAX_PER_PAIR,
        pair_period: float = 300.0,
        max_keys: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if max_per_pair < 1 or not pair_period > 0:
            raise ValueError("a pair may have at least one allocation, over a positive period")
        self._clients = TokenBuckets(rate, burst, max_keys)
        self._pairs = TokenBuckets(max_per_pair / pair_period, max_per_pair, max_keys)
        self.max_per_pair = max_per_pair
        self.pair_period = pair_period
        self.max_keys = max_keys
        self._handed_out: dict[Pair, Allocation] = {}

    def admit_client(self, address: str, now: float) -> None:
        """Take a token for one request from ``address``; TooManyRequests if there is none."""
        wait = self._clients.take(address, now)
        if wait:
            raise TooManyRequests(
                "rate_limited",
                wait,
                f"too many allocation requests from {address or 'this client'}: at most "
                f"{self._clients.rate:g} a second, {self._clients.burst:g} at once",
            )

    def admit_pair(self, pair: Pair, now: float, unbound: Callable[[int, int], bool]) -> None:
        """Let a request for ``pair`` through, or raise TooManyRequests.

        ``unbound(vni, lamport_id)`` tells whether that allocation is still
        served and not bound; if the one this API last handed the pair is,
        the store will hand it back (no token); else the request will make
        a fresh allocation and takes a token from the pair's bucket.
        """
        last = self._handed_out.get(pair)
        if last is not None and unbound(last.vni, last.lamport_id):
            return
        wait = self._pairs.take(pair, now)
        if wait:
            raise TooManyRequests(
                "pair_limited",
                wait,
                f"this pair of keys is allocated afresh too often: at most {self.max_per_pair} "
                f"at once, then one per {format_duration(self.pair_period / self.max_per_pair)}",
            )

    def last_handed_out(self, pair: Pair) -> Allocation | None:
        """The allocation this API last gave ``pair``, if it remembers one."""
        return self._handed_out.get(pair)

    def handed_out(self, allocation: Allocation) -> None:
        """Remember the allocation this API gave its pair (a table of at most ``max_keys``).

        Both tables then hold the pair under the allocation's own ``raw_keys``: a dict
        keeps the key object it was first given, so the request's copy is taken out
        and the pair put back under the allocation's.
        """
        pair = allocation.raw_keys
        handed_out = self._handed_out
        if handed_out.pop(pair, None) is None and len(handed_out) >= self.max_keys:
            handed_out.clear()
        handed_out[pair] = allocation
        self._pairs.rekey(pair)
