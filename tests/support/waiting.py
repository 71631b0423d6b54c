"""Waiting for something to happen: poll a condition until it holds, with a deadline.

Tests never sleep to synchronise; they wait for what they need to see, and a
wait that runs out fails with what it waited for (and the tail of a log, when
the process behind it keeps one). :func:`wait_until` is for async code and
:func:`wait_until_sync` for the rest; both take the same arguments and mean
the same. A condition gives up early by raising: its exception goes to the
caller as it is.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 30.0
INTERVAL = 0.05
LOG_TAIL = 4000


async def wait_until(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    log: Path | None = None,
) -> T:
    """Call ``condition`` (awaiting what it returns, if awaitable) every ``interval`` s until it
    returns something truthy, and return that; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(_timed_out(what, timeout, log))
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], T],
    what: str,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    log: Path | None = None,
) -> T:
    """:func:`wait_until` for code without an event loop: the thread sleeps between calls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(_timed_out(what, timeout, log))
        time.sleep(interval)


def _timed_out(what: str, timeout: float, log: Path | None) -> str:
    message = f"timed out after {timeout:g} s waiting for {what}"
    if log is not None and log.exists():
        message += "\n" + log.read_text(errors="replace")[-LOG_TAIL:]
    return message
