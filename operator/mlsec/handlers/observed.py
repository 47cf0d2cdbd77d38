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
from typing import Any

from mlsec.builders.drift import touched_by_others
from mlsec.builders.meta import DESIRED_HASH_ANNOTATION

# kind → namespace → name → one int packing what we saw (see _pack). One int per child, not a
# record, a key tuple, a hash string and a version each: at 5,000 models (35,000 children)
# 4 MiB instead of 10, and 35,000 long-lived small objects instead of 175,000 holding pymalloc's
# arenas between bursts (bench/README.md, seventh run).
_seen: dict[str, dict[str, dict[str, int]]] = {}
_guard = threading.Lock()
_RV_BITS = 64
_HEX = "0123456789abcdef"


def _code(desired_hash: str | None) -> int:
    """The desired-hash annotation as an int (0: none). Ours are SHA-256 hex digests: their
    first 64 bits (two different desired objects share them with odds of 2^-64; the full 256
    made every child's int 24 bytes larger, 0.8 MiB at 5,000 models); anything else keeps its
    bytes and their length, exactly."""
    if desired_hash is None:
        return 0
    if len(desired_hash) == 64 and not desired_hash.strip(_HEX):  # int() would also take A-F, _, ±
        return int(desired_hash[:16], 16) << 2 | 1
    raw = desired_hash.encode()
    return (int.from_bytes(raw, "big") << 16 | len(raw)) << 2 | 2


def _pack(desired_hash: str | None, touched: bool, resource_version: int) -> int:
    rv = resource_version if 0 <= resource_version < 1 << _RV_BITS else 0
    return _code(desired_hash) << (_RV_BITS + 1) | rv << 1 | int(touched)


def _rv_of(packed: int) -> int:
    return packed >> 1 & ((1 << _RV_BITS) - 1)


def _rv(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:  # opaque on some storage backends: treat every event as newer
        return 0


def record(body: dict[str, Any], ours: str) -> None:
    """Remember ``body`` (a watch event's or a write response's), unless we already know newer."""
    meta = body.get("metadata", {})
    rv = _rv(body)
    packed = _pack((meta.get("annotations") or {}).get(DESIRED_HASH_ANNOTATION),
                   touched_by_others(body, ours), rv)
    # Interned: one string per kind, namespace and name, however many holders share it.
    kind, namespace = sys.intern(str(body.get("kind"))), sys.intern(str(meta.get("namespace")))
    name = sys.intern(str(meta.get("name")))
    with _guard:
        names = _seen.setdefault(kind, {}).setdefault(namespace, {})
        old = names.get(name)
        if old is None or not rv or rv >= _rv_of(old):
            names[name] = packed


def forget(kind: str, namespace: str, name: str) -> None:
    with _guard:
        names = _seen.get(kind, {}).get(namespace)
        if names is not None:
            names.pop(name, None)
            if not names:
                del _seen[kind][namespace]


def in_sync(desired: dict[str, Any]) -> bool | None:
    """True/False when what we saw decides whether ``desired`` needs a write; None: read it."""
    meta = desired["metadata"]
    with _guard:
        packed = _seen.get(desired["kind"], {}).get(meta["namespace"], {}).get(meta["name"])
    if packed is None or packed & 1:  # unknown, or touched by others since our last write
        return None
    want = (meta.get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)
    return want is not None and _code(want) == packed >> (_RV_BITS + 1)


def clear() -> None:
    with _guard:
        _seen.clear()
