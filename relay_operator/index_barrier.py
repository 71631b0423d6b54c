"""kopf's start-up barrier, made linear in the number of resources.

kopf holds every handler back at start-up until each resource it listed is
indexed, so that handlers see whole indexes. The barrier is a ``ToggleSet``
with one toggle per resource, and kopf 1.45 wakes every resource waiting on it
each time one toggle is added or dropped: for N resources, N^2 wake-ups before
anything is handled. A restarted operator with 10 000 RelayEndpoints spent
minutes of CPU there (docs/performance.md, "The operator at 10 000
RelayEndpoints").

The waiters only ask whether the whole set is on, and that changes only when a
toggle added or dropped changes it. :func:`wake_on_change_only` has the set wake
them only then: the same barrier, in N wake-ups. It replaces three methods of
kopf's private ``ToggleSet`` class, so it checks first that the class is the one
it was written for, and changes nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


async def _make_toggle(self: Any, value: bool = False, *, name: str | None = None) -> Any:
    from kopf._cogs.aiokits.aiotoggles import Toggle

    toggle = Toggle(value, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: Any, toggle: Any) -> None:
    await _drop_toggles(self, (toggle,))


async def _drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def wake_on_change_only() -> bool:
    """Have kopf's ``ToggleSet`` wake its waiters, when a toggle is added or dropped, only if
    that changes the set's state. False, and nothing changed, where kopf's ``ToggleSet`` is
    not the one this was written for (kopf 1.45: a condition shared with its toggles, and a
    set of them)."""
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:
        return False
    toggle_set = aiotoggles.ToggleSet
    if toggle_set.make_toggle is _make_toggle:
        return True
    probe = toggle_set(all)
    if not isinstance(getattr(probe, "_toggles", None), set) or not hasattr(probe, "_condition"):
        return False
    toggle_set.make_toggle = _make_toggle  # type: ignore[method-assign,assignment]
    toggle_set.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    toggle_set.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    return True
