"""Keeping Python's cyclic garbage collector from stalling a relay that holds a million endpoints.

Each endpoint is a handful of small objects the collector tracks. A full
collection scans every tracked object: about 4 s for 1 000 000 endpoints on a
2-core machine, during which nothing is relayed. Endpoints hold no reference
cycles and are freed by reference counting, so they need not be scanned at all.
After each resync the agent calls :func:`exempt_survivors`, which moves every
live object to the collector's permanent generation; later full collections
then scan only what was made since. Bulk installs run with automatic
collection paused (:func:`paused`).

Endpoints installed one at a time (the allocation API, the store's
announcements) are made with the collector running, and would wait in its
oldest generation until the next resync, which at a million endpoints comes
only every several minutes. Meanwhile each full collection the collector
starts by itself (whenever that generation has grown by a quarter) scans all
of them: a relay allocating 300 000 endpoints through its API spent 5.3 s in
17 such collections, up to 0.76 s each. So the agent calls
:func:`collect_and_exempt` when it starts, and :func:`installed_one` for each
such endpoint, which does the same every :data:`EXEMPT_EVERY` of them. The
count is the process's, as the collector is.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

EXEMPT_EVERY = 1024
"""Endpoints installed one at a time between two calls of :func:`collect_and_exempt`."""

_installed_since = 0
"""Endpoints installed one at a time since live objects were last exempted."""


def exempt_survivors() -> None:
    """Exempt every object alive now from future collections (O(1): lists are spliced).

    Nothing is collected first: after a bulk install the young generation holds
    every new object, and scanning it would be the very stall this avoids. Cyclic
    garbage not yet collected at that instant is exempted too, and never freed:
    at most a few hundred small objects per resync.
    """
    global _installed_since
    gc.freeze()
    _installed_since = 0


def collect_and_exempt() -> None:
    """Collect what is not exempt yet, then exempt the survivors. Called every
    :data:`EXEMPT_EVERY` installs, it scans only what was made since the last call (a
    few thousand objects: about 2 ms), and no cyclic garbage is exempted with them."""
    gc.collect()
    exempt_survivors()


def installed_one() -> None:
    """Count an endpoint installed one at a time; every :data:`EXEMPT_EVERY` of them,
    :func:`collect_and_exempt`."""
    global _installed_since
    _installed_since += 1
    if _installed_since >= EXEMPT_EVERY:
        collect_and_exempt()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside (the caller's work makes only long-lived objects)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
