"""The sum of several workers' /metrics texts, rendered as one and read back.

Each worker is a registry of its own holding metrics of the names the
relay's collector serves, with different values; its text is what
prometheus_client renders, ``_created`` timestamps and all.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from relay.shells.summed_metrics import SummedCollector, sum_expositions

P = "relayfleet_relay"
BUCKETS = (0.01, 0.1, 1.0)


def worker_text(
    name: str,
    forwarded: int,
    endpoints: dict[str, float],
    handshakes: dict[str, Sequence[float]],
    drops: dict[str, int],
) -> str:
    registry = CollectorRegistry()
    Info(P, "This relay's identity", registry=registry).info(
        {"name": name, "server_disco": f"discokey:{name}", "version": "0.1.0"}
    )
    Counter(f"{P}_forwarded_packets", "Data packets relayed", registry=registry).inc(forwarded)
    dropped = Counter(f"{P}_dropped_packets", "Datagrams dropped", ["reason"], registry=registry)
    for reason, count in drops.items():
        dropped.labels(reason).inc(count)
    gauge = Gauge(f"{P}_endpoints", "Endpoints served, by state", ["state"], registry=registry)
    for state, value in endpoints.items():
        gauge.labels(state).set(value)
    histogram = Histogram(
        f"{P}_handshake_seconds", "Handshakes", ["version"], buckets=BUCKETS, registry=registry
    )
    for version, observations in handshakes.items():
        for seconds in observations:
            histogram.labels(version).observe(seconds)
    return generate_latest(registry).decode()


WORKERS = [
    worker_text(
        "one",
        forwarded=5,
        endpoints={"allocated": 2, "bound": 3},
        handshakes={"0": [0.005, 0.5], "1": [0.05]},
        drops={"unknown_vni": 4},
    ),
    worker_text(
        "two",
        forwarded=7,
        endpoints={"allocated": 1, "bound": 10},
        handshakes={"0": [0.2], "1": [0.001, 0.002, 3.0]},
        drops={"unknown_vni": 1, "too_short": 6},
    ),
    worker_text(
        "three",
        forwarded=11,
        endpoints={"allocated": 0, "bound": 4},
        handshakes={"0": [], "1": [0.09]},
        drops={},
    ),
]


def render(texts: Sequence[str]) -> str:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SummedCollector(lambda: texts))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, key
            found[key] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def summed() -> dict:
    return samples(render(WORKERS))


def test_counters_are_summed_and_keep_their_names(summed):
    assert value(summed, f"{P}_forwarded_packets_total") == 5 + 7 + 11
    families = {family.name: family for family in text_string_to_metric_families(render(WORKERS))}
    forwarded = families[f"{P}_forwarded_packets"]
    assert forwarded.type == "counter"
    assert forwarded.documentation == "Data packets relayed"
    assert [sample.name for sample in forwarded.samples] == [f"{P}_forwarded_packets_total"]


def test_rendered_text_names_counters_as_the_workers_do():
    text = render(WORKERS)
    assert f"# TYPE {P}_forwarded_packets_total counter\n" in text
    assert f"\n{P}_forwarded_packets_total 23.0\n" in text
    assert f"# TYPE {P}_handshake_seconds histogram\n" in text
    assert f"# TYPE {P}_endpoints gauge\n" in text


def test_gauges_are_summed_per_label(summed):
    assert value(summed, f"{P}_endpoints", state="allocated") == 2 + 1 + 0
    assert value(summed, f"{P}_endpoints", state="bound") == 3 + 10 + 4


def test_histogram_buckets_sum_and_count_are_summed(summed):
    expected_buckets = {
        "0": {"0.01": 1, "0.1": 1, "1.0": 3, "+Inf": 3},
        "1": {"0.01": 2, "0.1": 4, "1.0": 4, "+Inf": 5},
    }
    for version, buckets in expected_buckets.items():
        for le, count in buckets.items():
            assert value(summed, f"{P}_handshake_seconds_bucket", version=version, le=le) == count
    assert value(summed, f"{P}_handshake_seconds_count", version="0") == 3
    assert value(summed, f"{P}_handshake_seconds_count", version="1") == 5
    assert value(summed, f"{P}_handshake_seconds_sum", version="0") == pytest.approx(0.705)
    assert value(summed, f"{P}_handshake_seconds_sum", version="1") == pytest.approx(3.143)


def test_histogram_samples_stay_in_the_workers_order():
    family = next(f for f in sum_expositions(WORKERS) if f.name == f"{P}_handshake_seconds")
    expected = []
    for version in ("0", "1"):
        expected += [
            ("_bucket", {"le": le, "version": version}) for le in ("0.01", "0.1", "1.0", "+Inf")
        ]
        expected += [("_count", {"version": version}), ("_sum", {"version": version})]
    got = [(s.name.removeprefix(f"{P}_handshake_seconds"), s.labels) for s in family.samples]
    assert got == expected


def test_a_series_new_in_a_later_text_joins_its_neighbours():
    first = worker_text("one", 1, {}, {"1": [0.5]}, {})
    second = worker_text("two", 1, {}, {"0": [0.05], "1": [0.5]}, {})
    family = next(f for f in sum_expositions([first, second]) if f.type == "histogram")
    versions = [s.labels["version"] for s in family.samples]
    assert versions == ["0"] * 6 + ["1"] * 6
    assert family.samples[0].labels == {"le": "0.01", "version": "0"}
    assert family.samples[-1].name == f"{P}_handshake_seconds_sum"
    assert family.samples[-1].value == 1.0


def test_created_families_are_dropped_even_untyped():
    text = "# TYPE jobs_total counter\njobs_total 2\njobs_created 1.7e9\n"
    assert samples(render([text, text])) == {("jobs_total", frozenset()): 4.0}


def test_info_comes_once_from_the_first_worker(summed):
    infos = {key: v for key, v in summed.items() if key[0] == f"{P}_info"}
    assert infos == {
        (
            f"{P}_info",
            frozenset({"name": "one", "server_disco": "discokey:one", "version": "0.1.0"}.items()),
        ): 1.0
    }


def test_info_comes_from_the_first_text_that_has_it():
    without_info = "\n".join(line for line in WORKERS[0].splitlines() if "_info" not in line)
    found = samples(render([without_info + "\n", WORKERS[1], WORKERS[2]]))
    assert [dict(key[1])["name"] for key in found if key[0] == f"{P}_info"] == ["two"]
    assert value(found, f"{P}_forwarded_packets_total") == 23


def test_a_sample_in_one_text_only_keeps_its_value(summed):
    assert value(summed, f"{P}_dropped_packets_total", reason="too_short") == 6
    assert value(summed, f"{P}_dropped_packets_total", reason="unknown_vni") == 4 + 1


def test_no_created_sample_is_served():
    assert "_created" in WORKERS[0]
    text = render(WORKERS)
    assert "_created" not in text
    assert not any(
        sample.name.endswith("_created")
        for family in sum_expositions(WORKERS)
        for sample in family.samples
    )


def test_families_come_in_the_order_they_first_appear():
    assert [family.name for family in sum_expositions(WORKERS)] == [
        f"{P}_info",
        f"{P}_forwarded_packets",
        f"{P}_dropped_packets",
        f"{P}_endpoints",
        f"{P}_handshake_seconds",
    ]


def test_summary_sums_count_and_sum_and_drops_quantiles():
    text = (
        "# HELP latency_seconds Latency\n"
        "# TYPE latency_seconds summary\n"
        'latency_seconds{quantile="0.5"} 0.2\n'
        "latency_seconds_count 4.0\n"
        "latency_seconds_sum 1.5\n"
    )
    found = samples(render([text, text]))
    assert found == {
        ("latency_seconds_count", frozenset()): 8.0,
        ("latency_seconds_sum", frozenset()): 3.0,
    }


def test_no_texts_give_no_families():
    assert sum_expositions([]) == []
    assert render([]) == ""


def test_one_text_round_trips_in_values():
    expected = {key: v for key, v in samples(WORKERS[1]).items() if not key[0].endswith("_created")}
    assert samples(render([WORKERS[1]])) == expected


def test_the_collector_reads_the_texts_at_every_scrape():
    current: list[str] = []
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SummedCollector(lambda: current))
    assert generate_latest(registry) == b""
    current.extend(WORKERS[:2])
    assert value(samples(generate_latest(registry).decode()), f"{P}_forwarded_packets_total") == 12
    current.append(WORKERS[2])
    assert value(samples(generate_latest(registry).decode()), f"{P}_forwarded_packets_total") == 23


def test_families_keep_the_parsed_type_and_documentation():
    parsed = {f.name: f for f in text_string_to_metric_families(WORKERS[0])}
    for family in sum_expositions(WORKERS):
        assert isinstance(family, Metric)
        assert family.type == parsed[family.name].type
        assert family.documentation == parsed[family.name].documentation
