"""How the benches print what they measured (aligned tables, percentiles, ratios) and progress."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable


class Progress:
    """Where a bench is among its cells, on stderr (stdout keeps the results).

    ``progress = Progress("bench.dataplane", 18)`` when the bench knows its
    cells, then ``progress.cell("ours, 1,000 endpoints, 64 B")`` as each one
    starts prints ``bench.dataplane: 3/18 ours, 1,000 endpoints, 64 B (at 42 s)``:
    what it measures, how far it is and the seconds since it began.
    ``progress.note(...)`` says the same of a long step inside a cell, uncounted.
    """

    def __init__(self, bench: str, total: int) -> None:
        self.bench = bench
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def cell(self, what: str) -> None:
        self.done += 1
        self.note(f"{self.done}/{self.total} {what}")

    def note(self, what: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{self.bench}: {what} (at {elapsed:.0f} s)", file=sys.stderr, flush=True)


def table(rows: list[list[str]], left: int = 0) -> None:
    """Print columns two spaces apart: the first ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells))


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` of all at or below it.

    Rank ceil(fraction x n), counted from 1, of the sorted values. It is always
    a value that was measured, and p99.9 of 1 000 values is the largest one
    rather than one interpolated below it, so a tail is never understated.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def ratio(ours: float | None, theirs: float | None) -> str:
    """``ours / theirs`` to two decimals, or "-" when either was not measured."""
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:.2f}"
