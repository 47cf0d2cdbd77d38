"""Operator-wide loops (mlsec.handlers.loops): the approval expiry and the Vault resync run as one
task each, not as a kopf timer per policy or model (each a task, its handler state and the
object's kept body)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf
import pytest

from mlsec.handlers import promotion


def test_the_loop_re_evaluates_every_namespace_with_a_policy_while_leading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    leading = [False]
    policies = {"radiology": [("t", "default", 1, {}, "u1")], "oncology": [("t", "default", 1, {}, "u2")]}
    monkeypatch.setattr(promotion.leader, "leading", lambda: leading[0])
    monkeypatch.setattr(promotion.leader, "indexes", lambda: {"policies_by_namespace": policies})
    calls: list[str] = []

    def expire(namespace: str, indexes: dict[str, Any]) -> None:
        calls.append(namespace)
        if namespace == "oncology":
            raise RuntimeError("the API server is away")  # logged; the next pass tries again

    monkeypatch.setattr(promotion, "expire_approvals", expire)

    async def run_loop(calls_wanted: int, at_most: float) -> None:
        """The loop every 10 ms until it made ``calls_wanted`` calls or ``at_most`` seconds passed."""
        task = asyncio.get_running_loop().create_task(promotion._expiry_loop(0.01))
        deadline = asyncio.get_running_loop().time() + at_most
        while len(calls) < calls_wanted and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run_loop(1, 0.1))
    assert calls == []  # not the leader: nothing
    leading[0] = True
    asyncio.run(run_loop(4, 5))
    assert calls[:4] == ["oncology", "radiology", "oncology", "radiology"]


def test_no_timer_per_policy_for_expiry() -> None:
    spawning = kopf.get_default_registry()._spawning.get_all_handlers()
    assert not [h for h in spawning if "expire" in str(h.id)]


def test_an_operator_loop_runs_from_start_up_to_clean_up() -> None:
    from mlsec.handlers import loops, vault  # noqa: F401 - vault registers its resync loop

    runs: list[str] = []

    async def work() -> None:
        runs.append("started")
        try:
            await asyncio.sleep(3600)
        finally:
            runs.append("stopped")

    loops.operator_loop("unit-test-loop", work)
    loops.operator_loop("unit-test-off", work, enabled=lambda: False)
    handlers = {str(h.id): h.fn for h in kopf.get_default_registry()._activities.get_all_handlers()}

    async def life() -> None:
        for name in ("unit-test-loop", "unit-test-off"):
            await handlers[f"{name}-start"]()
            await handlers[f"{name}-start"]()  # a second start-up call starts nothing more
        await asyncio.sleep(0.01)
        assert runs == ["started"]
        for name in ("unit-test-loop", "unit-test-off"):
            await handlers[f"{name}-stop"]()

    asyncio.run(life())
    assert runs == ["started", "stopped"]
    assert {"approval-expiry-start", "approval-expiry-stop", "vault-resync-start"} <= set(handlers)
