"""Write status conditions: each part of the operator owns its condition types and status fields.

Status is server-side applied per owner (field manager), and only when something other than a
timestamp would change: an idle operator writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from mlsec import API_VERSION
from mlsec.builders.conditions import Cond, merge_conditions
from mlsec.handlers import context

OWNER_MAIN = "mlsec-operator"


def _strip_times(conds: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds),
                  key=lambda c: str(c.get("type")))


def status_differs(body: Mapping[str, Any], conds: list[Cond],
                   fields: Mapping[str, Any] | None = None, *, owner: str = OWNER_MAIN) -> bool:
    """Whether :func:`write_status` with these arguments would write."""
    return _desired(body, conds, fields, owner) is not None


def _desired(body: Mapping[str, Any], conds: list[Cond], fields: Mapping[str, Any] | None,
             owner: str) -> dict[str, Any] | None:
    """The status to apply, or None when only timestamps would change."""
    meta = body.get("metadata", {})
    generation = int(meta.get("generation") or 0)
    old = dict(body.get("status") or {})
    mine = {c.type for c in conds}
    old_mine = [c for c in old.get("conditions") or [] if c.get("type") in mine]
    new_conds = merge_conditions(old_mine, conds, generation, datetime.now(UTC))
    new: dict[str, Any] = {"conditions": new_conds, **(fields or {})}
    if owner == OWNER_MAIN:
        new["observedGeneration"] = generation
    unchanged = _strip_times(old_mine) == _strip_times(new_conds) and all(
        old.get(k) == v for k, v in new.items() if k != "conditions")
    return None if unchanged else new


def write_status(kind: str, body: Mapping[str, Any], conds: list[Cond],
                 fields: Mapping[str, Any] | None = None, *, owner: str = OWNER_MAIN) -> bool:
    """Apply ``conds`` and ``fields`` to ``body``'s status under ``owner``; True if written."""
    new = _desired(body, conds, fields, owner)
    if new is None:
        return False
    meta = body.get("metadata", {})
    context.kube().apply_status(API_VERSION, kind, str(meta["namespace"]), str(meta["name"]), new,
                                manager=owner)
    return True
