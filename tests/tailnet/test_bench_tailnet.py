"""bench/tailnet.py: its smallest run in a bed of its own (root and scripts/build-tailnet, as
every test of this folder), and its pure helpers: a round's figures, best and median, ratios."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.tailnet import (
    FIGURES_HEADER,
    RATIOS_HEADER,
    REFERENCE,
    figures_rows,
    ours_label,
    ratio_rows,
    round_figures,
    summary,
)
from tests.support.paths import ROOT

SMOKE_TIMEOUT = 600
CELLS = re.compile(r"\s{2,}")


def cells(line: str) -> list[str]:
    """A line of bench.report.table split into its cells (two spaces or more apart)."""
    return CELLS.split(line.strip())


def test_a_few_mb_through_ours_and_tailscaleds_relay_print_both_and_their_ratio(
    tailnet_available: None,
) -> None:
    argv = [sys.executable, "-m", "bench.tailnet", "--megabytes", "4", "--rounds", "1",
            "--fast-path", "off"]  # fmt: skip
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "4 MB over TCP a -> b through the tailnet, 1 round(s) per relay"
    blank = lines.index("")
    figures = [cells(line) for line in lines[1:blank]]
    second = lines.index("", blank + 1)
    ratios = [cells(line) for line in lines[blank + 1 : second]]
    assert lines[second + 1 :] == [
        "CPU is read from /proc in ticks of 10 ms: 2,500 CPU-µs/MB per round at 4 MB."
    ]
    assert figures[0] == FIGURES_HEADER
    assert [row[0] for row in figures[1:]] == [ours_label("off"), REFERENCE]
    for row in figures[1:]:
        assert len(row) == len(FIGURES_HEADER), row
        assert float(row[1]) > 0 and float(row[2]) > 0, row  # MB/s
        assert row[-1] == "1/1", row  # the path still went through that relay after the round
    assert float(figures[1][8]) >= 1.0  # our counter saw every byte sent (and the acks)
    assert figures[2][8] == "-"
    assert ratios[0] == RATIOS_HEADER
    assert len(ratios) == 2 and ratios[1][0] == ours_label("off")
    assert all(float(value) > 0 for value in ratios[1][1:3]), ratios  # MB/s ratios


def test_a_rounds_figures_per_mb_and_per_second():
    figures = round_figures(200_000_000, 4.0, 1.0, 6.0, 8.0, True, 216_000_000)
    assert figures["mb_s"] == pytest.approx(50.0)
    assert figures["relay_us_mb"] == pytest.approx(5_000.0)
    assert figures["relay_busy"] == pytest.approx(0.25)
    assert figures["clients_us_mb"] == pytest.approx(30_000.0)
    assert figures["machine_us_mb"] == pytest.approx(40_000.0)
    assert figures["relayed"] == pytest.approx(1.08)
    assert round_figures(1_000_000, 1.0, 0, 0, 0, False)["relayed"] is None


def test_best_is_the_fastest_and_the_cheapest_median_a_measured_value():
    rounds = [
        round_figures(10_000_000, seconds, cpu, 0.0, 0.0, on_path)
        for seconds, cpu, on_path in ((1.0, 0.05, True), (2.0, 0.01, True), (0.5, 0.03, True),
                                      (4.0, 0.02, False))
    ]  # fmt: skip
    s = summary(rounds)
    assert s["mb_s_best"] == pytest.approx(20.0)
    assert s["relay_us_mb_best"] == pytest.approx(1_000.0)
    assert s["mb_s_median"] == pytest.approx(5.0)  # 2.5, 5, 10, 20: the lower middle
    assert s["relay_us_mb_median"] == pytest.approx(2_000.0)
    assert s["on_path"] == "3/4"
    assert s["relayed_median"] is None
    with pytest.raises(ValueError):
        summary([])


def test_ratios_are_ours_over_tailscaleds_relay_or_dashes_without_it():
    ours = summary([round_figures(10_000_000, 1.0, 0.04, 0.0, 0.0, True, 10_800_000)])
    reference = summary([round_figures(10_000_000, 0.8, 0.02, 0.0, 0.0, True)])
    results = {ours_label("off"): ours, REFERENCE: reference}
    assert ratio_rows(results) == [
        RATIOS_HEADER,
        [ours_label("off"), "0.80", "0.80", "2.00", "2.00"],
    ]
    assert ratio_rows({ours_label("auto"): ours})[1] == [ours_label("auto"), "-", "-", "-", "-"]
    rows = figures_rows(results)
    assert rows[1][-2:] == ["1.08", "1/1"] and rows[2][-2:] == ["-", "1/1"]
