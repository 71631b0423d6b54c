"""The take-up loop's rules (relay_operator/take_up.py), without Kubernetes: which resources
left without a phase it marks, and when."""

from __future__ import annotations

import kopf

from relay_operator.take_up import take_up_stranded

AFTER = 30.0


def memo(ran: float | None) -> kopf.Memo:
    found = kopf.Memo()
    if ran is not None:
        found.allocate_ran = ran
    return found


class Marks:
    def __init__(self, failing: set[str] = frozenset()) -> None:
        self.marked: list[tuple[str, str]] = []
        self.failing = failing

    async def __call__(self, namespace: str, name: str) -> None:
        if name in self.failing:
            raise OSError("the API server is away")
        self.marked.append((namespace, name))


async def test_only_resources_whose_handler_ran_long_enough_ago_are_marked():
    stranded = {
        "uid-old": [("ns", "old", memo(ran=100.0))],
        "uid-recent": [("ns", "recent", memo(ran=100.0 + AFTER - 1))],
        "uid-never": [("ns", "backlog", memo(ran=None))],
    }
    marks = Marks()
    assert await take_up_stranded(stranded, marks, now=100.0 + AFTER, after=AFTER) == 1
    assert marks.marked == [("ns", "old")]


async def test_a_resource_is_marked_at_most_once_per_period():
    stranded = {"uid": [("ns", "a", memo(ran=0.0))]}
    marks = Marks()
    assert await take_up_stranded(stranded, marks, now=AFTER, after=AFTER) == 1
    assert await take_up_stranded(stranded, marks, now=AFTER + 10, after=AFTER) == 0
    assert await take_up_stranded(stranded, marks, now=2 * AFTER, after=AFTER) == 1
    assert marks.marked == [("ns", "a"), ("ns", "a")]


async def test_a_mark_that_fails_does_not_stop_the_others():
    stranded = {
        "uid-1": [("ns", "unreachable", memo(ran=0.0))],
        "uid-2": [("ns", "fine", memo(ran=0.0))],
    }
    marks = Marks(failing={"unreachable"})
    assert await take_up_stranded(stranded, marks, now=AFTER, after=AFTER) == 1
    assert marks.marked == [("ns", "fine")]
