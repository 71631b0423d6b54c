"""Fixtures of the fault-injection suite, and the table of faults it prints at the end.

The operator's end-to-end fixtures (the CRD on the session's control plane,
redis-server, the store, ``start_operator``) are reused as they are, the
last behind ``operator_process``. Each fault test records what it injected
and what it checked in ``fault_table``; ``pytest_terminal_summary`` prints
those rows as one table at the end of the run, passed or not.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.faults.support import operator_flags
from tests.relay_operator.conftest import crd, start_operator
from tests.relay_operator.e2e_support import Operator

__all__ = ["crd", "start_operator"]

_ROWS = pytest.StashKey[list["FaultRow"]]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@dataclass
class FaultRow:
    """One fault: what was injected, each check made (passed or FAILED), how the test ended."""

    fault: str
    injected: str = ""
    checks: list[str] = field(default_factory=list)
    result: str = "not run"

    def checked(self, lines: str | list[str]) -> None:
        self.checks.extend([lines] if isinstance(lines, str) else lines)


@pytest.fixture
def operator_process(start_operator) -> Iterator[Callable[[str, str], Operator]]:
    """``operator_process(name, relay_check_interval)``: a standalone operator for this test.

    Killed at the end: kopf's graceful shutdown with hundreds of timers takes
    seconds that no fault test needs.
    """
    started: list[Operator] = []

    def start(name: str, relay_check_interval: str = "1s") -> Operator:
        started.append(start_operator(name, *operator_flags(relay_check_interval)))
        return started[-1]

    yield start
    for running in started:
        running.process.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call" or report.outcome != "passed":
        item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def fault_table(request: pytest.FixtureRequest) -> Iterator[Callable[[str], FaultRow]]:
    """``fault_table(fault)``: a row of the table for this test, filled in as it goes."""
    rows = request.config.stash.setdefault(_ROWS, [])
    mine: list[FaultRow] = []

    def add(fault: str) -> FaultRow:
        row = FaultRow(fault)
        rows.append(row)
        mine.append(row)
        return row

    yield add
    reports = request.node.stash.get(_REPORTS, {})
    failed = next((r for r in reports.values() if r.failed), None)
    call = reports.get("call")
    if failed is not None:
        result = f"FAILED ({failed.when})"
    elif call is not None and hasattr(call, "wasxfail"):
        result = "xfail"
    elif call is not None:
        result = call.outcome
    else:
        result = "not run"
    for row in mine:
        row.result = result


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    widths = (24, 44, 13, 62)
    terminalreporter.section("faults injected and what was checked")

    def line(*cells: str) -> None:
        terminalreporter.write_line(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        )

    line("fault", "injected", "result", "checked")
    line(*("-" * w for w in widths))
    for row in rows:
        left = textwrap.wrap(row.fault, widths[0])
        middle = textwrap.wrap(row.injected, widths[1])
        right = [
            wrapped
            for check in row.checks or ["(nothing)"]
            for wrapped in textwrap.wrap(check, widths[3], subsequent_indent="  ")
        ]
        for i in range(max(len(left), len(middle), len(right))):
            line(
                left[i] if i < len(left) else "",
                middle[i] if i < len(middle) else "",
                row.result if i == 0 else "",
                right[i] if i < len(right) else "",
            )
        line(*("" for _ in widths))
