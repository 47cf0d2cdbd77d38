"""A keyed work queue served by a few threads, with client-go's workqueue guarantees.

- A key added many times before a worker takes it is processed once (events coalesce).
- A key is never processed by two workers at once; added while it is being processed, it is
  processed once more afterwards (the later event is never lost).
- ``process(key, attempt)`` returns ``None`` when done, or the seconds to wait before the key is
  tried again (``attempt`` counts the failures in a row); an exception is logged and retried with
  exponential back-off. A new ``add`` of a key waiting for its retry runs it at once.

Only keys are queued: whoever processes a key reads the object's current state then, so a burst
of events holds no bodies.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
MAX_BACKOFF = 60.0


def backoff(attempt: int) -> float:
    """Seconds before retrying after an unexpected failure: 1, 2, 4, … up to a minute."""
    return min(MAX_BACKOFF, 2.0 ** min(attempt, 6))


class WorkQueue(Generic[K]):
    def __init__(self, process: Callable[[K, int], float | None], *, workers: int, name: str) -> None:
        self.process = process
        self.workers = workers
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._again: set[K] = set()  # added while being processed
        self._delayed: list[tuple[float, int, K]] = []  # (due, tie-break, key), a heap
        self._seq = itertools.count()
        self._due: dict[K, float] = {}  # the one live retry of each key (older heap entries are stale)
        self._attempts: dict[K, int] = {}
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self.on_idle: Callable[[], object] | None = None
        """Called (in the worker, outside the lock) when it leaves nothing queued or in progress."""

    # --- producers --------------------------------------------------------------------------
    def add(self, key: K) -> None:
        with self._cond:
            self._add(key)

    def add_all(self, keys: Iterable[K]) -> None:
        with self._cond:
            for key in keys:
                self._add(key)

    def add_after(self, key: K, seconds: float) -> None:
        with self._cond:
            self._later(key, seconds)

    def _later(self, key: K, seconds: float) -> None:
        due = time.monotonic() + seconds
        self._due[key] = due
        heapq.heappush(self._delayed, (due, next(self._seq), key))
        self._cond.notify()

    def _add(self, key: K) -> None:
        self._due.pop(key, None)
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    # --- state ------------------------------------------------------------------------------
    def pending(self) -> int:
        """Keys waiting or being processed (not those waiting for a retry)."""
        with self._cond:
            return len(self._queued) + len(self._active)

    def waiting_retry(self) -> int:
        with self._cond:
            return len(self._due)

    # --- workers ----------------------------------------------------------------------------
    def start(self) -> None:
        self._stopped = False
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Let the workers finish what they are doing, for at most ``timeout`` seconds in all."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _next(self) -> K | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    due, _, key = heapq.heappop(self._delayed)
                    if self._due.get(key) == due:
                        self._add(key)
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                self._cond.wait(self._delayed[0][0] - now if self._delayed else None)
            return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            attempt = self._attempts.get(key, 0)
            try:
                retry = self.process(key, attempt)
            except Exception:
                log.exception("%s: processing %s failed (attempt %d)", self.name, key, attempt + 1)
                retry = backoff(attempt)
            with self._cond:
                self._active.discard(key)
                again = key in self._again
                self._again.discard(key)
                if retry is None:
                    self._attempts.pop(key, None)
                else:
                    self._attempts[key] = attempt + 1
                if again:  # something changed meanwhile: look again now
                    self._add(key)
                elif retry is not None:
                    self._later(key, retry)
                idle = not self._queue and not self._active
            if idle and self.on_idle is not None:
                try:
                    self.on_idle()
                except Exception:
                    log.exception("%s: the idle hook failed", self.name)
