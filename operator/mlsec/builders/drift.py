"""Is a live object still what we want? Pure comparison of desired against actual.

The API server adds defaults (protocol: TCP, terminationMessagePath, clusterIP, …) and normalises
quantities ("1000m" becomes "1"), so "in sync" means: every field we set is present with an equal
value, and the live object still carries the desired-hash annotation of our current desired state.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from mlsec.builders.meta import DESIRED_HASH_ANNOTATION, Obj

_SUFFIX = {
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60, "n": Decimal("1e-9"), "u": Decimal("1e-6"),
    "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal("1e3"), "M": Decimal("1e6"),
    "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number, or None if ``value`` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value)
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation:
        return None


def _equal_scalars(want: Any, have: Any) -> bool:
    if want == have:
        return True
    a, b = quantity(want), quantity(have)
    return a is not None and a == b and not isinstance(want, bool)


def is_subset(want: Any, have: Any) -> bool:
    """True when every field of ``want`` is in ``have`` with an equal value."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        return all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return False
        return all(is_subset(w, h) for w, h in zip(want, have, strict=True))
    return _equal_scalars(want, have)


def in_sync(desired: Obj, live: Obj | None) -> bool:
    """True when ``live`` needs no write to become ``desired``."""
    if live is None:
        return False
    want = desired.get("metadata", {}).get("annotations", {}).get(DESIRED_HASH_ANNOTATION)
    have = (live.get("metadata", {}).get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)
    if want is None or want != have:
        return False
    body = {k: v for k, v in desired.items() if k not in ("metadata", "status")}
    meta = desired.get("metadata", {})
    live_meta = live.get("metadata", {})
    return (
        is_subset(body, {k: v for k, v in live.items() if k not in ("metadata", "status")})
        and is_subset(meta.get("labels") or {}, live_meta.get("labels") or {})
        and is_subset(meta.get("annotations") or {}, live_meta.get("annotations") or {})
    )


def touched_by_others(live: Obj, ours: str) -> bool:
    """True when a manager other than ``ours`` wrote the object's spec since our last write.

    Our own writes echo back as watch events; only someone else's edit (kubectl, a human) needs
    a re-check. Status-subresource writes (controllers reporting) never count.
    """
    entries = live.get("metadata", {}).get("managedFields") or []
    our_times = [str(e.get("time", "")) for e in entries if str(e.get("manager", "")).startswith(ours)]
    last_ours = max(our_times, default="")
    for e in entries:
        if str(e.get("manager", "")).startswith(ours) or e.get("subresource") == "status":
            continue
        # Scale-subresource entries carry no time: treat them as newer (a re-check is cheap).
        if "time" not in e or str(e["time"]) >= last_ours:
            return True
    return False
