"""One targeted fix to kopf (pinned: kopf==1.45.2), for start-up with many indexed objects, and
one signal kopf keeps to itself: :data:`INDEXED`, set once every kopf index is complete.

At start-up kopf gives every indexed object a toggle in one ``ToggleSet`` and makes each object's
worker wait until the whole set is on (every index complete). Each toggle added or dropped wakes
every waiter, and each waiter re-evaluates ``ToggleSet.is_on()`` over every toggle: cubic in the
number of objects. Measured here: an operator restarted with 1,000 ModelDeployments spent minutes
at 100 % CPU before resuming any. Patched: waiters are woken only when the set's state changes
(they only ever wait for a state), and ``is_on()`` is cached until a toggle changes.
"""

from __future__ import annotations

import asyncio
import threading

from kopf._cogs.aiokits import aiotoggles

INDEXED = threading.Event()
"""Set once kopf has listed every kind it indexes (policies, approvals): the moment kopf releases
its own resource handlers. Work that kopf does not schedule (the models' queue) waits for it.
kopf's orchestrator makes the one ToggleSet(all) of the process, its "operator indexed" set, and
makes its first toggle (a blocker) before any watcher starts: from then on the set turning on
means every index is complete."""
_watched: list[asyncio.Task[None]] = []

_changes = 0  # bumped on every change of any toggle or toggle set (kopf's event loop only)


def _bump() -> None:
    global _changes
    _changes += 1


async def _turn_to(self: aiotoggles.Toggle, state: bool, /) -> None:
    async with self._condition:
        self._state = bool(state)
        _bump()
        self._condition.notify_all()


async def _make(self: aiotoggles.ToggleSet, val: bool = False, /, *,
                name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(val, name=name, condition=self._condition)
    if self._fn is all and not _watched:
        _watched.append(asyncio.get_running_loop().create_task(_signal_when_on(self)))
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        self._mlsec_made = True  # type: ignore[attr-defined]
        _bump()
        if self.is_on() != before:  # only a change of the set's state can satisfy a waiter
            self._condition.notify_all()
    return toggle


async def _drop(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        _bump()
        if self.is_on() != before:
            self._condition.notify_all()


async def _signal_when_on(toggles: aiotoggles.ToggleSet) -> None:
    # An empty set is "on": wait for the first toggle (the blocker) to have been made.
    async with toggles._condition:
        await toggles._condition.wait_for(lambda: getattr(toggles, "_mlsec_made", False) and toggles.is_on())
    INDEXED.set()


def _is_on(self: aiotoggles.ToggleSet) -> bool:
    cached: tuple[int, bool] | None = getattr(self, "_mlsec_is_on", None)
    if cached is not None and cached[0] == _changes:
        return cached[1]
    value = self._fn(toggle.is_on() for toggle in self._toggles)
    self._mlsec_is_on = (_changes, value)  # type: ignore[attr-defined]
    return value


def apply() -> None:
    """Install the patch (idempotent)."""
    if getattr(aiotoggles.ToggleSet, "_mlsec_patched", False):
        return
    aiotoggles.Toggle.turn_to = _turn_to  # type: ignore[method-assign,assignment]
    aiotoggles.ToggleSet.make_toggle = _make  # type: ignore[method-assign,assignment]
    aiotoggles.ToggleSet.drop_toggle = _drop  # type: ignore[method-assign]
    aiotoggles.ToggleSet.is_on = _is_on  # type: ignore[method-assign]
    aiotoggles.ToggleSet._mlsec_patched = True  # type: ignore[attr-defined]
