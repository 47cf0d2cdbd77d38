"""What the operator last saw of each child, so a reconcile does not GET seven objects to find
that nothing changed.

Fed by the children's watch events (on every replica, leader or not, so a new leader starts with
a current view) and by the responses of our own writes. An entry keeps only the desired-hash
annotation and whether someone else wrote the object since our last write; a child that was
touched by others, or is not known yet, is read from the API server as before.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

from mlsec.builders.drift import touched_by_others
from mlsec.builders.meta import DESIRED_HASH_ANNOTATION

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True, slots=True)
class Seen:
    desired_hash: str | None
    touched: bool  # written by someone else since our last write: compare the whole object
    resource_version: int


_seen: dict[Key, Seen] = {}
_guard = threading.Lock()


def _rv(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:  # opaque on some storage backends: treat every event as newer
        return 0


def record(body: dict[str, Any], ours: str) -> None:
    """Remember ``body`` (a watch event's or a write response's), unless we already know newer."""
    meta = body.get("metadata", {})
    # Interned: one string per kind, namespace and model name, however many children share it.
    key = (sys.intern(str(body.get("kind"))), sys.intern(str(meta.get("namespace"))),
           sys.intern(str(meta.get("name"))))
    seen = Seen((meta.get("annotations") or {}).get(DESIRED_HASH_ANNOTATION),
                touched_by_others(body, ours), _rv(body))
    with _guard:
        old = _seen.get(key)
        if old is None or not seen.resource_version or seen.resource_version >= old.resource_version:
            _seen[key] = seen


def forget(kind: str, namespace: str, name: str) -> None:
    with _guard:
        _seen.pop((kind, namespace, name), None)


def in_sync(desired: dict[str, Any]) -> bool | None:
    """True/False when what we saw decides whether ``desired`` needs a write; None: read it."""
    meta = desired["metadata"]
    with _guard:
        seen = _seen.get((desired["kind"], meta["namespace"], meta["name"]))
    if seen is None or seen.touched:
        return None
    want = (meta.get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)
    return want is not None and want == seen.desired_hash


def clear() -> None:
    with _guard:
        _seen.clear()
