"""The short CI run of the fuzz targets in tests/relay/fuzzing/; bench/fuzz.py is the long one.

A fixed seed and a few thousand cases per target keep this to seconds and make
any failure reproducible (``bench/fuzz.py --seed 20261125 --targets NAME``).
Failures already found in product code (``fuzzing.KNOWN_BUGS``) are tolerated
in the sweep, each pinned by its own small input as xfail(strict=True) until
fixed. The last tests break the core on purpose, to show that the oracle
notices what it claims to.
"""

from __future__ import annotations

import functools
import random

import pytest

from relay.protocol.core import Drop, RelayCore
from tests.relay import fuzzing

SEED = 20261125
DEFAULT_CASES = 1500
CASES = {"core": 5000, "core_spoofed": 4000, "core_limited": 4000}
CORE_TARGETS = ("core", "core_spoofed", "core_limited")


@functools.cache
def outcome(name: str) -> fuzzing.Outcome:
    cases = CASES.get(name, DEFAULT_CASES)
    return fuzzing.run(fuzzing.BY_NAME[name], cases, SEED, shrink=False)


def is_known(failure: fuzzing.Failure) -> bool:
    return any(bug.matches(failure) for bug in fuzzing.KNOWN_BUGS)


def report(failures: list[fuzzing.Failure]) -> str:
    return "\n\n".join(
        f"{f.target}: {f.signature}\ninput (hex): {f.data.hex()}\n{f.description}\n{f.error}"
        for f in failures
    )


@pytest.mark.parametrize("name", list(fuzzing.BY_NAME))
def test_target_keeps_its_properties(name: str) -> None:
    result = outcome(name)
    assert result.cases == CASES.get(name, DEFAULT_CASES)
    unexpected = [f for f in result.failures.values() if not is_known(f)]
    assert not unexpected, report(unexpected)


def test_core_targets_reach_every_drop_reason_and_every_outcome() -> None:
    reached = {key for name in CORE_TARGETS for key in outcome(name).stats}
    assert {f"drop:{reason.value}" for reason in Drop} <= reached
    assert {"challenge", "bound", "forward", "rate_limited_work"} <= reached
    attacker = outcome("core").stats
    assert not attacker["bound"] and not attacker["forward"]


@pytest.mark.parametrize("name", list(fuzzing.BY_NAME))
def test_generators_run_on_fuzzer_bytes(name: str) -> None:
    """The atheris engine feeds ByteRandom: every generator must end on any bytes, even none."""
    target = fuzzing.BY_NAME[name](SEED)
    rng = random.Random(SEED)
    inputs = [b"", b"\xff" * 64] + [rng.randbytes(rng.randrange(400)) for _ in range(200)]
    unexpected = []
    for data in inputs:
        value = target.generate(fuzzing.ByteRandom(data))
        exc = fuzzing.attempt(target, value)
        if exc is not None:
            kind, where = fuzzing.classify(exc)
            failure = fuzzing.Failure(name, kind, where, value, b"", repr(value)[:200], str(exc))
            if not is_known(failure):
                unexpected.append(failure)
    assert not unexpected, report(unexpected)


@pytest.mark.parametrize(
    "name", [name for name in fuzzing.BY_NAME if name != fuzzing.RedisRegistry.name]
)
def test_inputs_round_trip_through_their_hex_form(name: str) -> None:
    target = fuzzing.BY_NAME[name](SEED)
    rng = random.Random(SEED)
    for _ in range(100):
        value = target.generate(rng)
        assert target.from_bytes(target.to_bytes(value)) == value


def test_each_known_bug_still_breaks_its_property() -> None:
    """KNOWN_BUGS lists product bugs not yet fixed; a fixed one must leave the list."""
    for bug in fuzzing.KNOWN_BUGS:
        target = fuzzing.BY_NAME[bug.target](SEED)
        with pytest.raises((fuzzing.PropertyFailure, bug.exception)):
            target.check(target.from_bytes(bug.reproducer))


@pytest.mark.parametrize(
    ("name", "reproducer"),
    [
        ("api_request", b"[" * 4000),
        ("api_token", "Bearer \udcff".encode("utf-8", "surrogatepass")),
    ],
    ids=["api_request-deep_nesting", "api_token-not_utf8"],
)
def test_inputs_that_once_broke_a_property_keep_it(name: str, reproducer: bytes) -> None:
    target = fuzzing.BY_NAME[name](SEED)
    target.check(target.from_bytes(reproducer))


def mutant_runs(monkeypatch: pytest.MonkeyPatch, name: str, handle, cases: int = 500) -> set[str]:
    monkeypatch.setattr(RelayCore, "handle", handle)
    result = fuzzing.run(fuzzing.BY_NAME[name], cases, SEED, shrink=False)
    return {failure.kind for failure in result.failures.values()}


def test_oracle_notices_an_attacker_moving_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RelayCore.handle

    def handle(self, datagram, source, now):
        out = real(self, datagram, source, now)
        if len(datagram) >= 8 and datagram[1] & 0x80 and source in fuzzing.ATTACKER_ADDRS:
            endpoint = self.endpoint(int.from_bytes(datagram[4:7], "big"))
            if endpoint is not None and endpoint.clients[0].addr is not None:
                endpoint.clients[0].addr = source
        return out

    kinds = mutant_runs(monkeypatch, "core", handle)
    assert "a dropped datagram changed the state" in kinds


def test_oracle_notices_an_uncounted_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RelayCore.handle

    def handle(self, datagram, source, now):
        before = self.drops[Drop.UNDECRYPTABLE]
        out = real(self, datagram, source, now)
        self.drops[Drop.UNDECRYPTABLE] = before
        return out

    kinds = mutant_runs(monkeypatch, "core", handle)
    assert "a drop is not counted exactly once" in kinds


def test_oracle_notices_a_copied_relayed_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RelayCore.handle

    def handle(self, datagram, source, now):
        out = real(self, datagram, source, now)
        if out is not None and out[0] is datagram:
            return bytes(datagram), out[1]
        return out

    kinds = mutant_runs(monkeypatch, "core_spoofed", handle, cases=3000)
    assert "not relayed as the very datagram passed in, to the other client" in kinds
