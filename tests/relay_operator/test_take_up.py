"""The take-up loop's rules (relay_operator/take_up.py), without Kubernetes: which resources
left without a phase it marks, and when."""

from __future__ import annotations

import kopf

from relay.resource.definition import FINALIZER
from relay_operator.take_up import note_finalized, take_up_stranded

AFTER = 30.0


def memo(ran: float | None, finalized: float | None = None) -> kopf.Memo:
    found = kopf.Memo()
    if ran is not None:
        found.allocate_ran = ran
    if finalized is not None:
        note_finalized(found, ["someone.else/finalizer", FINALIZER], finalized)
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


async def test_a_resource_whose_handler_never_ran_is_marked_long_after_kopf_showed_its_finalizer():
    stranded = {
        "uid-dropped": [("ns", "dropped", memo(ran=None, finalized=100.0))],
        "uid-just-finalized": [("ns", "starting", memo(ran=None, finalized=100.0 + AFTER - 1))],
        "uid-ran-since": [("ns", "ran", memo(ran=100.0 + AFTER - 1, finalized=100.0))],
    }
    marks = Marks()
    assert await take_up_stranded(stranded, marks, now=100.0 + AFTER, after=AFTER) == 1
    assert marks.marked == [("ns", "dropped")]


def test_only_the_first_event_with_the_operators_finalizer_starts_the_clock():
    found = kopf.Memo()
    note_finalized(found, ["someone.else/finalizer"], 1.0)
    assert "finalized_seen" not in found
    note_finalized(found, [FINALIZER], 2.0)
    note_finalized(found, [FINALIZER], 3.0)
    assert found.finalized_seen == 2.0


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


async def test_nothing_is_marked_until_requests_have_not_waited_for_a_connection_for_long_enough():
    stranded = {"uid": [("ns", "queued", memo(ran=0.0))], "uid-2": [("ns", "new", memo(ran=None))]}
    marks = Marks()
    waited = 2 * AFTER
    for now in (2 * AFTER, 3 * AFTER - 1):
        assert await take_up_stranded(stranded, marks, now=now, after=AFTER, waited=waited) == 0
    assert marks.marked == []
    assert await take_up_stranded(stranded, marks, now=3 * AFTER, after=AFTER, waited=waited) == 1
    assert marks.marked == [("ns", "queued")]
