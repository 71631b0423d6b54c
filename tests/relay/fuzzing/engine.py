"""The fuzzing engine: seeded or fuzzer-driven choices, mutation, targets' interface, the runner.

A :class:`Target` pairs a structure-aware generator with a check that raises
on the first broken property. Generators draw from a seeded ``random.Random``
(the plain loop, :func:`run`) or from :class:`ByteRandom` over a
coverage-guided fuzzer's bytes (atheris in bench/fuzz.py), so both engines
share them. A failing input is shrunk (:func:`minimise`) and recorded once per
signature (kind and product line) in an :class:`Outcome`.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

REPO = Path(__file__).resolve().parents[3]
PRODUCT_DIR = REPO / "relay"


class Rng(Protocol):
    """The part of ``random.Random`` the generators use; :class:`ByteRandom` has it too."""

    def randrange(self, start: int, stop: int | None = None) -> int: ...

    def random(self) -> float: ...

    def randbytes(self, n: int) -> bytes: ...

    def choice(self, seq: Sequence[Any]) -> Any: ...


class ByteRandom:
    """Choices read from a fuzzer's input, so coverage guidance steers the generators.

    Once the input runs out every choice is zero, so each generator ends.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk.ljust(n, b"\0")

    def randrange(self, start: int, stop: int | None = None) -> int:
        if stop is None:
            start, stop = 0, start
        span = stop - start
        if span <= 0:
            raise ValueError("empty range")
        return start + int.from_bytes(self._take((span.bit_length() + 7) // 8), "big") % span

    def random(self) -> float:
        return int.from_bytes(self._take(4), "big") / 2**32

    def randbytes(self, n: int) -> bytes:
        return self._take(n)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.randrange(len(seq))]


class PropertyFailure(AssertionError):
    """A broken property; ``label`` names it stably, the rest of the message gives details."""

    def __init__(self, label: str, detail: str = "") -> None:
        super().__init__(f"{label}: {detail}" if detail else label)
        self.label = label


def require(condition: object, label: str, detail: str = "") -> None:
    if not condition:
        raise PropertyFailure(label, detail)


# -- mutation ---------------------------------------------------------------

INTERESTING_BYTES = bytes((0x00, 0x01, 0x04, 0x05, 0x06, 0x11, 0x12, 0x40, 0x7A, 0x7F, 0x80, 0xFF))
TEXT_ALPHABET = (
    "abcdefxyzABCDEFXYZ0123456789"
    ":/@[]%?#&=.,;+-_~!*'() "
    "\t\n\r\x00\x0b\x0c\x7f\x85"
    "\u00b2\u00b5\u03bc\u0663\u06f5\u0967\u09e7\u0e51\uff10\uff19\u2460\u2170"
    "\u00a0\u2028\u200b\ufeff\u0130\u017f\ufb01\udcff\U0001f4ac"
)


def _fresh_bytes(rng: Rng, n: int) -> bytes:
    if rng.randrange(3) == 0:
        return bytes(rng.choice(INTERESTING_BYTES) for _ in range(n))
    return rng.randbytes(n)


def _fresh_text(rng: Rng, n: int) -> str:
    return "".join(rng.choice(TEXT_ALPHABET) for _ in range(n))


def _mutate(rng: Rng, data: Any, fresh: Callable[[Rng, int], Any], tokens: Sequence[Any]) -> Any:
    for _ in range(1 + rng.randrange(4)):
        n = len(data)
        at = rng.randrange(n + 1)
        op = rng.randrange(9)
        if op == 0 and n:
            at %= n
            data = data[:at] + fresh(rng, 1) + data[at + 1 :]
        elif op == 1:
            data = data[:at]
        elif op == 2:
            data = data[:at] + fresh(rng, 1 + rng.randrange(16)) + data[at:]
        elif op == 3:
            data = data[:at] + data[at + 1 + rng.randrange(16) :]
        elif op == 4 and n:
            chunk = data[at : at + 1 + rng.randrange(32)]
            data = data[:at] + chunk + data[at:]
        elif op in (5, 6) and tokens:
            token = rng.choice(tokens)
            tail = data[at + len(token) :] if op == 5 else data[at:]
            data = data[:at] + token + tail
        elif op == 7:
            data = data + fresh(rng, 1 + rng.randrange(32))
        elif op == 8 and n:
            at %= n
            data = data[:at] + data[at : at + 1].swapcase() + data[at + 1 :]
    return data


def mutate_bytes(rng: Rng, data: bytes, tokens: Sequence[bytes] = ()) -> bytes:
    """One to four byte-level edits: replace, truncate, insert, delete, repeat, splice a token."""
    if data and rng.randrange(4) == 0:
        at = rng.randrange(len(data))
        return data[:at] + bytes((data[at] ^ (1 << rng.randrange(8)),)) + data[at + 1 :]
    return _mutate(rng, data, _fresh_bytes, tokens)


def mutate_text(rng: Rng, text: str, tokens: Sequence[str] = ()) -> str:
    """One to four character-level edits, with odd characters (Unicode digits, controls, ...)."""
    return _mutate(rng, text, _fresh_text, tokens)


def random_text(rng: Rng, max_len: int = 40) -> str:
    return _fresh_text(rng, rng.randrange(max_len + 1))


def random_json_value(rng: Rng, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randrange(2) == 1
    if kind == 2:
        return rng.choice((0, -1, 1, 2**24, 2**63, -(2**63) - 1, 2**64, 10**400))
    if kind == 3:
        return rng.choice((0.5, -0.0, 1e308, -1e-300, float("inf"), float("nan")))
    if kind in (4, 5):
        return random_text(rng, 20)
    if kind == 6:
        return rng.choice(("30s", "5m0s", "9" * 400 + "h", "-1s", "", "discokey:", "0"))
    if kind == 7:
        return rng.randrange(-5, 2**32)
    if kind in (8, 9):
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng, 8): random_json_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def nested_json(rng: Rng, limit: int) -> str:
    """An array or object nested up to ``limit`` characters deep: JSON parsers recurse."""
    depth = 1 + rng.randrange(max(1, limit // 2))
    opener, closer = rng.choice((("[", "]"), ('{"a":', "}")))
    while depth > 1 and depth * (len(opener) + len(closer)) > limit:
        depth //= 2
    return opener * depth + "0" + closer * depth


# -- targets ------------------------------------------------------------------


class Target:
    """One entry point: a seeded setup, a generator of inputs, and the properties to check."""

    name: ClassVar[str]
    entry: ClassVar[str]
    weight: ClassVar[float] = 1.0

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.stats: Counter[str] = Counter()

    def generate(self, rng: Rng) -> Any:
        raise NotImplementedError

    def check(self, value: Any) -> None:
        raise NotImplementedError

    def to_bytes(self, value: Any) -> bytes:
        """The input as bytes, printed in hex for a failure and read back by ``from_bytes``."""
        return value

    def from_bytes(self, data: bytes) -> Any:
        return data

    def describe(self, value: Any) -> str:
        return repr(value)[:400]

    def shrink(self, value: Any) -> Iterator[Any]:
        """Smaller variants of a failing input, to try in turn."""
        yield from shrunk(value)

    def final_stats(self) -> Counter[str]:
        return self.stats


class TextTarget(Target):
    """A target whose input is one ``str`` (lone surrogates allowed, as argv can carry them)."""

    def to_bytes(self, value: str) -> bytes:
        return value.encode("utf-8", "surrogatepass")

    def from_bytes(self, data: bytes) -> str:
        return data.decode("utf-8", "surrogatepass")


def shrunk(value: Any) -> Iterator[Any]:
    """``value`` (a sequence) with halves, then quarters, ... cut out, in turn."""
    n = len(value)
    size = n // 2
    while size >= 1:
        for start in range(0, n - size + 1, size):
            yield value[:start] + value[start + size :]
        size //= 2


# -- running ------------------------------------------------------------------


@dataclass
class Failure:
    """The first (then shrunk) input that broke one property or raised one exception."""

    target: str
    kind: str
    where: str
    value: Any
    data: bytes
    description: str
    error: str
    count: int = 1

    @property
    def signature(self) -> str:
        return f"{self.kind} at {self.where}"


@dataclass
class Outcome:
    target: str
    entry: str
    cases: int
    seconds: float
    planned: int
    failures: dict[str, Failure] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds > 0 else float("inf")


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, where): the property's label or the exception type, and the deepest product line."""
    if isinstance(exc, PropertyFailure):
        cause = exc.__cause__
        return exc.label, "property" if cause is None else f"property, {classify(cause)[1]}"
    frames = traceback.extract_tb(exc.__traceback__)
    product = [f for f in frames if Path(f.filename).is_relative_to(PRODUCT_DIR)]
    frame = (product or frames)[-1]
    path = Path(frame.filename)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    return type(exc).__name__, f"{shown}:{frame.lineno}"


def attempt(target: Target, value: Any) -> BaseException | None:
    try:
        target.check(value)
    except Exception as exc:
        return exc
    return None


def minimise(target: Target, value: Any, signature: str, budget: int = 400) -> Any:
    """Greedy shrinking: keep any smaller input that fails the same way."""
    improved = True
    while improved and budget > 0:
        improved = False
        for candidate in target.shrink(value):
            budget -= 1
            exc = attempt(target, candidate)
            if exc is not None and "{} at {}".format(*classify(exc)) == signature:
                value = candidate
                improved = True
                break
            if budget <= 0:
                break
    return value


def record(target: Target, value: Any, exc: BaseException, outcome: Outcome, shrink: bool) -> None:
    kind, where = classify(exc)
    signature = f"{kind} at {where}"
    known = outcome.failures.get(signature)
    if known is not None:
        known.count += 1
        return
    if shrink:
        value = minimise(target, value, signature)
        exc = attempt(target, value) or exc
    error = "".join(traceback.format_exception(exc)).rstrip()
    outcome.failures[signature] = Failure(
        target.name, kind, where, value, target.to_bytes(value), target.describe(value), error
    )


def run(
    target_class: type[Target],
    cases: int,
    seed: int,
    max_seconds: float | None = None,
    shrink: bool = True,
) -> Outcome:
    """The plain engine: ``cases`` inputs from a seeded generator, at most ``max_seconds``."""
    target = target_class(seed)
    rng = random.Random(f"{target.name}:{seed}")
    outcome = Outcome(target.name, target.entry, 0, 0.0, cases)
    start = time.perf_counter()
    deadline = None if max_seconds is None else start + max_seconds
    check, generate = target.check, target.generate
    done = 0
    while done < cases:
        batch = min(cases - done, 256)
        for _ in range(batch):
            value = generate(rng)
            try:
                check(value)
            except Exception as exc:
                failure = exc
            else:
                continue
            record(target, value, failure, outcome, shrink)
        done += batch
        if deadline is not None and time.perf_counter() > deadline:
            break
    outcome.seconds = time.perf_counter() - start
    outcome.cases = done
    outcome.stats = target.final_stats()
    return outcome


@dataclass(frozen=True)
class KnownBug:
    """A failure the fuzzing found in product code, not fixed yet, with a small input showing it."""

    target: str
    kind: str
    exception: type[BaseException]
    reason: str
    reproducer: bytes

    def matches(self, failure: Failure) -> bool:
        return failure.target == self.target and failure.kind == self.kind
