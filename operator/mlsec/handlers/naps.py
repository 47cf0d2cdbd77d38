"""Interruptible sleep for long-running tasks (the compliance Reports'), without kopf's
time-limited ``stopped.wait(n)``, which the kopf daemons of earlier versions used.

``await stopped.wait(n)`` runs a task of its own that ends in ``TimeoutError`` when the ``n``
seconds pass (kopf 1.45): the daemon's side catches it, but when the operator stops at that
moment, kopf's shutdown collects the finished task among the leftovers and re-raises its
``TimeoutError``, so the operator exits 1 after a SIGTERM (seen in CI: a stop right after a
start, with several policies' daemons napping). Here the wait for the stop flag has no time
limit of its own; the time limit is :func:`asyncio.wait`'s, which raises nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol


class Stopped(Protocol):
    """A stop flag: kopf's ``DaemonStopped`` waiter, or an :class:`asyncio.Event`."""

    def wait(self) -> Awaitable[Any]: ...


async def nap(stopped: Stopped, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Until ``stopped`` is set, ``wake`` is set, or ``seconds`` passed."""
    waiters = {asyncio.ensure_future(stopped.wait())}
    if wake is not None:
        waiters.add(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
