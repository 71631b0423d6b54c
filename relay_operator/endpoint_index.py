"""The operator's one kopf index of RelayEndpoints, read as four indexes.

kopf runs every index handler of a kind on every watch event of it, each with
its own call machinery (its keyword arguments, its outcome, its store), and an
allocation makes four events. With four indexes that was 16 handler calls per
resource and nearly a third of kopf's event handling in a burst
(docs/performance.md, "The operator at 10 000 RelayEndpoints"). So there is
one index, whose keys are ``(part, key)``, and each reader sees its part
through :class:`IndexPart`, a mapping of the part's own keys, as if it were an
index of its own:

- :data:`PAIRS`: claims on a pair of disco keys, by pair (handlers.py);
- :data:`BY_RELAY`: the resources each relay serves (relay_check.py);
- :data:`WAITING`: resources waiting for an allocation, by reason (pending.py);
- :data:`UNPLACED`: resources without a phase, by uid (take_up.py).

Reading a part by key costs what an index of its own would; iterating one goes
over every key of the index, which only the fleet-wide loops and the metrics'
scrape do, every few seconds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, Generic, TypeVar

PAIRS = "pairs"
BY_RELAY = "by_relay"
WAITING = "waiting"
UNPLACED = "unplaced"

IndexKey = tuple[str, str]
"""A key of the index: (part, the part's own key)."""

_V = TypeVar("_V")


class IndexPart(Mapping[str, Collection[_V]], Generic[_V]):
    """The entries of one part of the index, by the part's own keys; live, as the index is."""

    def __init__(self, index: Mapping[Any, Collection[Any]], part: str) -> None:
        self._index = index
        self._part = part

    def __getitem__(self, key: str) -> Collection[_V]:
        return self._index[(self._part, key)]

    def __contains__(self, key: object) -> bool:
        return (self._part, key) in self._index

    def __iter__(self) -> Iterator[str]:
        return (key for part, key in list(self._index) if part == self._part)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def entries(parts: Mapping[str, Mapping[str, Any] | None]) -> dict[IndexKey, Any]:
    """One resource's entries in the index, from its entry in each part (None: none there)."""
    return {
        (part, key): value for part, entry in parts.items() if entry for key, value in entry.items()
    }
