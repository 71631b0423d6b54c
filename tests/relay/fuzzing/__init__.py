"""Fuzz targets for every parser and for RelayCore.handle, shared by bench/fuzz.py and test_fuzz.py.

The million-case bench run and the few-second CI run must check the same
things, so the inputs and the properties live here, once: engine.py (choices,
mutation, the runner), targets.py (the 21 targets), model.py (the relay
core's oracle). The names both runs use are here.
"""

from tests.relay.fuzzing.engine import (
    ByteRandom,
    Failure,
    KnownBug,
    Outcome,
    PropertyFailure,
    Target,
    attempt,
    classify,
    record,
    run,
)
from tests.relay.fuzzing.model import ATTACKER_ADDRS
from tests.relay.fuzzing.targets import BY_NAME, KNOWN_BUGS, TARGETS, RedisRegistry, split

__all__ = [
    "ATTACKER_ADDRS",
    "BY_NAME",
    "KNOWN_BUGS",
    "TARGETS",
    "ByteRandom",
    "Failure",
    "KnownBug",
    "Outcome",
    "PropertyFailure",
    "RedisRegistry",
    "Target",
    "attempt",
    "classify",
    "record",
    "run",
    "split",
]
