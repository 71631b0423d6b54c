"""bench/handshakes_workers.py's pure helpers: a round's figures, the median round and the
ratios of issue 17 item 3. No network."""

from __future__ import annotations

import pytest

from bench.handshakes_workers import FORWARDERS, median_round, ratio_lines, round_figures
from bench.workers import OURS_1, OURS_2

REF_ON, REF_OFF = "ref v1.102.5 GOMAXPROCS=2", "ref v1.102.5 GOMAXPROCS=2 GRO off"


def test_round_figures_divide_by_the_server_without_redis_and_with_it():
    cpu = {"parent": 100_000_000, "worker 0": 400_000_000, "worker 1": 500_000_000}
    figures = round_figures(10_000, 2.0, {**cpu, "redis": 250_000_000}, 0.5)
    assert figures["rate"] == pytest.approx(5_000)
    assert figures["server_cpus"] == pytest.approx(0.5)  # 1 CPU-s over 2 s, redis left out
    assert figures["per_cpu"] == pytest.approx(10_000)
    assert figures["per_cpu_redis"] == pytest.approx(8_000)
    assert figures["processes"]["worker 1"] == pytest.approx(0.25)
    assert figures["processes"]["redis"] == pytest.approx(0.125)
    assert figures["client_busy"] == pytest.approx(0.25)


def test_median_round_takes_the_middle_rate_or_the_lower_middle_one():
    rounds = [{"rate": 3.0}, {"rate": 1.0}, {"rate": 2.0}]
    assert median_round(rounds) == {"rate": 2.0}
    assert median_round([{"rate": 4.0}, {"rate": 1.0}]) == {"rate": 1.0}
    with pytest.raises(ValueError):
        median_round([])


def test_ratios_against_one_worker_and_the_better_reference_with_two_cpus():
    results = {
        OURS_1: {"rate": 8_000.0, "per_cpu": 8_000.0},
        OURS_2: {"rate": 12_000.0, "per_cpu": 6_000.0},
        REF_ON: {"rate": 20_000.0, "per_cpu": 15_000.0},
        REF_OFF: {"rate": 24_000.0, "per_cpu": 12_000.0},
    }
    lines = ratio_lines(results)
    assert lines[0][0] == "2 workers / 1 worker"
    assert lines[0][1:] == (pytest.approx(1.5), pytest.approx(0.75))
    assert lines[1][0] == "2 workers / ref GOMAXPROCS=2 GRO off (its better)"
    assert lines[1][1:] == (pytest.approx(0.5), pytest.approx(0.5))


def test_ratios_not_measured_are_none_and_the_reference_line_needs_one():
    assert ratio_lines({OURS_2: {"rate": 1.0, "per_cpu": 1.0}}) == [
        ("2 workers / 1 worker", None, None)
    ]


def test_forwarders_are_ours_and_the_reference_with_two_cpus_only():
    assert FORWARDERS == {"ours1": OURS_1, "ours2": OURS_2, "ref2": REF_ON, "ref2-gro-off": REF_OFF}
