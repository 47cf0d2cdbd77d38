"""Daemons nap without leaving a task that failed: kopf's shutdown re-raises such a task's error
and the operator exits 1 after SIGTERM (CI, test_operator_stops_cleanly_on_sigterm)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from kopf._cogs.aiokits import aioenums

from mlsec.handlers.naps import nap


def failed_tasks(scenario: Callable[[Any], Awaitable[None]]) -> list[BaseException]:
    """Every task created while ``scenario`` ran that ended with an exception (not cancelled)."""
    created: list[asyncio.Task[Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            created.append(task)
            return task

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        stopper: aioenums.FlagSetter[Any] = aioenums.FlagSetter()
        await scenario(stopper)
        await asyncio.sleep(0.05)  # let every helper task finish

    asyncio.run(main())
    return [t.exception() for t in created  # type: ignore[misc]
            if t.done() and not t.cancelled() and t.exception() is not None]


def test_kopf_time_limited_wait_leaves_a_failed_task() -> None:
    """The premise (kopf 1.45 as pinned): what the operator's shutdown tripped over."""
    async def kopf_way(stopper: Any) -> None:
        await stopper.async_waiter.wait(0.01)

    assert [type(e) for e in failed_tasks(kopf_way)] == [TimeoutError]


def test_nap_times_out_and_leaves_no_failed_task() -> None:
    async def napping(stopper: Any) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await nap(stopper.async_waiter, 0.05)
        assert loop.time() - start >= 0.04

    assert failed_tasks(napping) == []


def test_nap_ends_when_stopped_or_woken() -> None:
    async def stopped_early(stopper: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, stopper.set)
        start = loop.time()
        await nap(stopper.async_waiter, 10)
        assert loop.time() - start < 1

    async def woken(stopper: Any) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.call_later(0.01, wake.set)
        start = loop.time()
        await nap(stopper.async_waiter, 10, wake)
        assert loop.time() - start < 1

    assert failed_tasks(stopped_early) == []
    assert failed_tasks(woken) == []
