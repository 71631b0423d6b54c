"""Keeping Python's cyclic garbage collector from stalling a relay that holds a million endpoints.

Each endpoint is a handful of small objects the collector tracks. A full
collection scans every tracked object: about 4 s for 1 000 000 endpoints on a
2-core machine, during which nothing is relayed. Endpoints hold no reference
cycles and are freed by reference counting, so they need not be scanned at all.
After each resync the agent calls :func:`exempt_survivors`, which collects the
young generations and moves every surviving object to the collector's
permanent generation; later full collections then scan only what was made
since. Bulk installs run with automatic collection paused (:func:`paused`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def exempt_survivors() -> None:
    """Collect young garbage, then exempt every live object from future collections."""
    gc.collect(1)
    gc.freeze()


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
