"""Standard status conditions (type, status, reason, message, lastTransitionTime, observedGeneration).

Pure: the handlers compute the new condition list and write status only when
:func:`status_changed` says something other than timestamps moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def rfc3339(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(old: Iterable[Mapping[str, Any]] | None, new: Iterable[Cond], generation: int,
                     now: datetime) -> list[Obj]:
    """The new condition list; lastTransitionTime moves only when a condition's status changes.

    Conditions of other types already present (written by another part of the operator) are kept.
    """
    previous = {str(c.get("type")): dict(c) for c in (old or [])}
    out: dict[str, Obj] = dict(previous)
    for c in new:
        prev = previous.get(c.type)
        moved = prev is None or prev.get("status") != c.status_text
        out[c.type] = {
            "type": c.type,
            "status": c.status_text,
            "reason": c.reason,
            "message": c.message[:1024],
            "lastTransitionTime": rfc3339(now) if moved or prev is None
            else prev.get("lastTransitionTime", rfc3339(now)),
            "observedGeneration": generation,
        }
    return sorted(out.values(), key=lambda c: str(c["type"]))


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing ``new`` would change anything in ``old`` (only keys of ``new`` count)."""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())


def condition(status: Mapping[str, Any] | None, type_: str) -> Obj | None:
    for c in (status or {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return dict(c)
    return None
