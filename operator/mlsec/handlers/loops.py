"""Operator-wide loops: one task each, from kopf's start-up to its clean-up.

Work that walks every namespace or model runs as one of these rather than as a kopf daemon or
timer per object: each of those is a task, its handler state and the object's kept body (the
Vault resync, ~20 KiB a model; the approval expiry, ~20 KiB a policy: bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import kopf


def operator_loop(name: str, loop: Callable[[], Coroutine[Any, Any, None]],
                  enabled: Callable[[], bool] = lambda: True) -> None:
    """Run ``loop()`` for the operator's life if ``enabled()`` says so at start-up."""
    task: asyncio.Task[None] | None = None

    @kopf.on.startup(id=f"{name}-start")
    async def start(**_: Any) -> None:
        nonlocal task
        if task is None and enabled():
            task = asyncio.get_running_loop().create_task(loop(), name=name)

    @kopf.on.cleanup(id=f"{name}-stop")
    async def stop(**_: Any) -> None:
        nonlocal task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            task = None
