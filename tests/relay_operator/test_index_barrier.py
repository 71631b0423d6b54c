"""kopf's start-up barrier with relay_operator/index_barrier.py: still a barrier, woken only
when its state changes."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aiotoggles import ToggleSet

from relay_operator.index_barrier import wake_on_change_only


class CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def notify_all(self) -> None:
        self.wakeups += 1
        super().notify_all()


async def test_the_barrier_opens_once_every_resource_is_indexed_and_wakes_each_waiter_once():
    assert wake_on_change_only()
    assert wake_on_change_only()  # twice is once
    barrier = ToggleSet(all)
    barrier._condition = CountingCondition()
    blocker = await barrier.make_toggle(name="orchestration blocker")
    resources = [await barrier.make_toggle(name=f"resource {i}") for i in range(200)]
    opened = 0

    async def handler() -> None:
        nonlocal opened
        await barrier.wait_for(True)
        opened += 1

    waiters = [asyncio.create_task(handler()) for _ in range(200)]
    barrier._condition.wakeups = 0
    await barrier.drop_toggle(blocker)
    for toggle in resources[:-1]:
        await barrier.drop_toggle(toggle)
        await asyncio.sleep(0)
    assert opened == 0 and barrier.is_off()
    await barrier.drop_toggles(resources[-1:])
    await asyncio.gather(*waiters)
    assert opened == 200 and barrier.is_on()
    assert barrier._condition.wakeups == 1

    # And closes again when a toggle that is off joins it.
    late = await barrier.make_toggle(False, name="late")
    assert barrier.is_off()
    await late.turn_to(True)
    await barrier.wait_for(True)
