"""Cooperative helpers for long work on the relay's event loop.

One event loop relays packets and runs the bookkeeping (resyncs, expiry,
store writes, kernel rule updates). Bookkeeping that walks many endpoints
must give the loop back now and then, or relaying stalls; tasks must be
stopped and awaited the same way everywhere; and what keeps failing (an
unreachable store, control server or DERP server) is retried after growing
delays. Each is written once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

SLICE = 256
"""Items handled between two yields to the event loop."""


async def in_turns(items: Iterable[T], every: int = SLICE) -> AsyncIterator[T]:
    """The items of ``items``, yielding to the event loop after every ``every`` of them."""
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0:
            await asyncio.sleep(0)


async def stop_tasks(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel the tasks given (None is skipped) and wait until each has ended."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Backoff:
    """The delays between attempts at something that keeps failing: ``first``, doubling up
    to ``limit``; ``first`` again after :meth:`reset` (call it on a success)."""

    def __init__(self, first: float, limit: float) -> None:
        self.first = first
        self.limit = limit
        self._next = first

    def next_delay(self) -> float:
        """The delay before the next attempt; the one after is twice as long, up to the limit."""
        delay = self._next
        self._next = min(delay * 2, self.limit)
        return delay

    def reset(self) -> None:
        self._next = self.first
