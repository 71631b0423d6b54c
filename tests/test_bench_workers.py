"""bench/workers.py's pure helpers: endpoints shared evenly by the workers, clients taking turns
over a reference's sockets, shares, labels and the ratios of issue 17. No network."""

from __future__ import annotations

import pytest

from bench.processes import REFERENCE_V1_VARIANTS
from bench.workers import (
    OURS_1,
    OURS_2,
    balanced_endpoints,
    best_of,
    ratio_rows,
    reference_label,
    round_robin,
    shares,
    verdict,
)
from relay.shells.reuseport import worker_for_vni


def test_endpoints_are_shared_evenly_and_take_turns_between_workers():
    vnis = [2, 4, 6, 1, 8, 3, 10, 5, 7]
    chosen = balanced_endpoints(vnis, 2, 8)
    assert chosen is not None
    owners = [worker_for_vni(vnis[i], 2) for i in chosen]
    assert owners == [0, 1] * 4
    assert len(set(chosen)) == 8
    # the earliest allocated of each worker first
    assert [vnis[i] for i in chosen] == [2, 1, 4, 3, 6, 5, 8, 7]


def test_endpoints_not_enough_of_one_worker_yet():
    assert balanced_endpoints([2, 4, 6, 8, 1], 2, 4) is None
    assert balanced_endpoints([], 2, 2) is None


def test_one_worker_takes_the_first_endpoints():
    assert balanced_endpoints([7, 3, 9], 1, 2) == [0, 1]


def test_endpoints_must_divide_among_the_workers():
    with pytest.raises(ValueError):
        balanced_endpoints([1, 2, 3], 2, 3)


def test_clients_take_turns_over_the_sockets():
    assert round_robin([["a0", "a1"], ["b0", "b1"]], 4) == ["a0", "b0", "a1", "b1"]
    assert round_robin([["a0", "a1", "a2"]], 2) == ["a0", "a1"]
    with pytest.raises(ValueError):
        round_robin([["a0", "a1"], ["b0"]], 4)


def test_shares_in_percent():
    assert shares([300, 100]) == "75/25"
    assert shares([5]) == "100"
    assert shares([0, 0]) == "-"


def test_reference_labels_name_their_settings():
    labels = [reference_label(reference) for reference in REFERENCE_V1_VARIANTS]
    assert labels == [
        "ref v1.102.5 GOMAXPROCS=1",
        "ref v1.102.5 GOMAXPROCS=1 GRO off",
        "ref v1.102.5 GOMAXPROCS=2",
        "ref v1.102.5 GOMAXPROCS=2 GRO off",
    ]


def test_best_of_skips_what_was_not_measured():
    rates = {"a": 10.0, "b": 30.0, "c": 0.0}
    assert best_of(rates, ["a", "b", "c", "d"]) == ("b", 30.0)
    assert best_of(rates, ["c", "d"]) is None


def test_verdict():
    assert verdict(1.7, 1.7) == "met"
    assert verdict(1.69, 1.7) == "missed"
    assert verdict(None, 1.7) == "-"


def cells(rate: float) -> dict[int, dict]:
    return {200: {"rate": rate}}


def test_ratio_rows_against_the_targets():
    results = {
        OURS_1: cells(100.0),
        OURS_2: cells(180.0),
        "ref v1.102.5 GOMAXPROCS=1": cells(50.0),
        "ref v1.102.5 GOMAXPROCS=1 GRO off": cells(100.0),
        "ref v1.102.5 GOMAXPROCS=2": cells(80.0),
        "ref v1.102.5 GOMAXPROCS=2 GRO off": cells(160.0),
    }
    header, row = ratio_rows(results, [200])
    assert len(header) == len(row)
    assert row == ["200", "1.80", "met", "GOMAXPROCS=2 GRO off", "1.12", "missed", "1.60"]


def test_ratio_rows_with_forwarders_missing():
    (_, row) = ratio_rows({OURS_2: cells(180.0)}, [200])
    assert row == ["200", "-", "-", "-", "-", "-", "-"]
