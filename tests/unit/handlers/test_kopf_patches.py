"""The start-up patch to kopf's ToggleSet keeps its meaning: waiters for "all indexed" are
released exactly when the last toggle goes, and only state changes wake them."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from mlsec.handlers import kopf_patches


def test_waiters_are_released_when_the_set_turns_on_and_woken_only_then() -> None:
    kopf_patches.apply()

    async def scenario() -> tuple[list[bool], int, bool]:
        toggles = aiotoggles.ToggleSet(all)
        wakeups = 0
        original = toggles._condition.notify_all

        def counting_notify_all() -> None:
            nonlocal wakeups
            wakeups += 1
            original()

        toggles._condition.notify_all = counting_notify_all  # type: ignore[method-assign]
        made = [await toggles.make_toggle(name=f"object-{i}") for i in range(200)]
        assert toggles.is_off()
        waiters = [asyncio.create_task(toggles.wait_for(True)) for _ in range(200)]
        await asyncio.sleep(0)
        for toggle in made[:-1]:
            await toggles.drop_toggle(toggle)
        await asyncio.sleep(0.01)
        still_waiting = [not w.done() for w in waiters]
        await toggles.drop_toggle(made[-1])
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
        return still_waiting, wakeups, toggles.is_on()

    still_waiting, wakeups, on = asyncio.run(scenario())
    assert all(still_waiting)  # 199 of 200 dropped: nobody released yet
    assert on
    # off at the first toggle, on at the last drop: two state changes, two wake-ups (unpatched:
    # one per toggle made or dropped, 400, each waking all 200 waiters)
    assert wakeups == 2


def test_is_on_follows_every_change() -> None:
    kopf_patches.apply()

    async def scenario() -> list[bool]:
        toggles = aiotoggles.ToggleSet(all)
        seen = [toggles.is_on()]
        a = await toggles.make_toggle()
        seen.append(toggles.is_on())
        await a.turn_to(True)
        seen.append(toggles.is_on())
        b = await toggles.make_toggle()
        seen.append(toggles.is_on())
        await toggles.drop_toggle(b)
        seen.append(toggles.is_on())
        return seen

    assert asyncio.run(scenario()) == [True, False, True, False, True]
