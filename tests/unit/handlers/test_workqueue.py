"""The models' work queue: events coalesce, a key is never processed twice at once and never
lost, retries come back after their delay, and a new event does not wait for a retry."""

from __future__ import annotations

import threading
import time
from collections import Counter

from mlsec.handlers.workqueue import WorkQueue, backoff


def wait(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.005)
    raise AssertionError("timed out")


def test_keys_added_before_a_worker_takes_them_are_processed_once() -> None:
    done: Counter[str] = Counter()
    gate = threading.Event()

    def process(key: str, attempt: int) -> None:
        gate.wait(5)
        done[key] += 1

    q: WorkQueue[str] = WorkQueue(process, workers=1, name="t")
    q.start()
    try:
        q.add("busy")  # occupies the only worker
        wait(lambda: q.pending() == 1 and "busy" not in q._queued)
        for _ in range(50):
            q.add("a")
            q.add("b")
        q.add_all(["a", "b", "c"])
        gate.set()
        wait(lambda: q.pending() == 0)
    finally:
        q.stop()
    assert done == {"busy": 1, "a": 1, "b": 1, "c": 1}


def test_a_key_is_never_processed_twice_at_once_and_an_event_meanwhile_is_not_lost() -> None:
    running: Counter[str] = Counter()
    overlap = []
    seen: list[int] = []
    version = [0]
    lock = threading.Lock()

    def process(key: str, attempt: int) -> None:
        with lock:
            running[key] += 1
            if running[key] > 1:
                overlap.append(key)
            v = version[0]
        time.sleep(0.02)
        with lock:
            seen.append(v)
            running[key] -= 1

    q: WorkQueue[str] = WorkQueue(process, workers=4, name="t")
    q.start()
    try:
        for v in range(1, 21):
            with lock:
                version[0] = v
            q.add("k")
            time.sleep(0.003)
        wait(lambda: q.pending() == 0)
    finally:
        q.stop()
    assert not overlap
    assert seen[-1] == 20  # the last change was processed after it happened
    assert len(seen) < 20  # and events coalesced while it was busy


def test_a_retry_comes_back_after_its_delay_with_the_attempt_counted() -> None:
    calls: list[tuple[int, float]] = []
    started = time.monotonic()

    def process(key: str, attempt: int) -> float | None:
        calls.append((attempt, time.monotonic() - started))
        return 0.2 if attempt < 2 else None

    q: WorkQueue[str] = WorkQueue(process, workers=2, name="t")
    q.start()
    try:
        q.add("k")
        wait(lambda: len(calls) == 3 and q.pending() == 0)
        time.sleep(0.3)
    finally:
        q.stop()
    assert [a for a, _ in calls] == [0, 1, 2]
    assert calls[1][1] - calls[0][1] >= 0.19 and calls[2][1] - calls[1][1] >= 0.19
    assert q.waiting_retry() == 0 and not q._attempts


def test_an_event_runs_a_key_waiting_for_its_retry_at_once_and_only_once() -> None:
    calls: list[int] = []

    def process(key: str, attempt: int) -> float | None:
        calls.append(attempt)
        return 0.5 if len(calls) == 1 else None

    q: WorkQueue[str] = WorkQueue(process, workers=1, name="t")
    q.start()
    try:
        q.add("k")
        wait(lambda: q.waiting_retry() == 1)
        q.add("k")  # a new event: no need to wait for the retry
        wait(lambda: len(calls) == 2)
        time.sleep(0.8)  # the stale retry does not run it a third time
    finally:
        q.stop()
    assert calls == [0, 1]


def test_a_failure_is_retried_with_backoff() -> None:
    calls: list[int] = []

    def process(key: str, attempt: int) -> None:
        calls.append(attempt)
        if attempt == 0:
            raise RuntimeError("boom")

    q: WorkQueue[str] = WorkQueue(process, workers=1, name="t")
    q.start()
    try:
        q.add("k")
        wait(lambda: calls == [0, 1], timeout=3)
    finally:
        q.stop()
    assert [backoff(a) for a in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_the_idle_hook_runs_when_the_last_key_is_done() -> None:
    gate = threading.Event()
    idle: list[int] = []
    q: WorkQueue[str] = WorkQueue(lambda key, attempt: gate.wait(5) and None, workers=2, name="t")
    q.on_idle = lambda: idle.append(q.pending())
    q.start()
    try:
        q.add_all(["a", "b", "c"])
        time.sleep(0.05)
        assert idle == []  # busy
        gate.set()
        wait(lambda: q.pending() == 0 and idle)
    finally:
        q.stop()
    assert set(idle) == {0}  # never while keys were left
