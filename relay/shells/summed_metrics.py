"""One /metrics for a relay whose work is split between several worker processes.

Each worker keeps its own counters and serves them as Prometheus text; a
scrape of the relay must see the relay as a whole, not one worker. So the
parent process reads every worker's text before each scrape and serves
their sum: counters, gauges and histogram buckets, ``_sum`` and ``_count``
add up sample by sample (same name, same labels), and a sample that only
some workers have is the sum over those. An info family is the relay's
identity, the same in every worker, so it is taken from the first text
that has it rather than summed.

The text format loses two things this has to put back by hand:

* An info family arrives as a gauge whose name ends in ``_info``, the
  Prometheus convention for info metrics; such gauges are treated as info.
* A counter's, histogram's or summary's ``_created`` timestamp arrives as a
  family of its own (``<name>_created``). Timestamps do not add up, so
  those families are dropped.

A summary's quantiles do not add up either, so they are dropped too; its
``_sum`` and ``_count`` are summed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

_WITH_CREATED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Sum:
    """One family's summed samples, kept in the order they first appear across the texts."""

    def __init__(self, first: Metric) -> None:
        self.family = first
        self.keys: list[_SampleKey] = []
        self.values: dict[_SampleKey, float] = {}

    def add(self, family: Metric) -> None:
        previous: _SampleKey | None = None
        for sample in family.samples:
            if _is_quantile(family, sample.labels):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in self.values:
                self.values[key] += sample.value
            else:
                position = 0 if previous is None else self.keys.index(previous) + 1
                self.keys.insert(position, key)
                self.values[key] = sample.value
            previous = key

    def metric(self) -> Metric:
        parsed = self.family
        summed = Metric(parsed.name, parsed.documentation, parsed.type, parsed.unit)
        for key in self.keys:
            name, labels = key
            summed.add_sample(name, dict(labels), self.values[key])
        return summed


def sum_expositions(texts: Sequence[str]) -> list[Metric]:
    """The families of all ``texts`` (Prometheus text format), their samples summed."""
    sums: dict[str, _Sum] = {}
    for text in texts:
        families = list(text_string_to_metric_families(text))
        created = {f"{family.name}_created" for family in families if family.type in _WITH_CREATED}
        for family in families:
            if family.name in created:
                continue
            if family.name not in sums:
                sums[family.name] = _Sum(family)
            elif _is_info(sums[family.name].family):
                continue
            sums[family.name].add(family)
    return [summed.metric() for summed in sums.values()]


def _is_info(family: Metric) -> bool:
    return family.type == "info" or (family.type == "gauge" and family.name.endswith("_info"))


def _is_quantile(family: Metric, labels: dict[str, str]) -> bool:
    return family.type == "summary" and "quantile" in labels


class SummedCollector(Collector):
    """Serves the sum of the texts ``texts`` returns, called afresh at every scrape."""

    def __init__(self, texts: Callable[[], Sequence[str]]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Metric]:
        yield from sum_expositions(self._texts())

    def describe(self) -> list[Metric]:
        """Nothing, so that registering does not fetch the workers' texts (auto_describe)."""
        return []
