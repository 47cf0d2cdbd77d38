"""Promotion ledger entries: the small, precomputed verdict the admission policy reads.

The ValidatingAdmissionPolicy cannot run ``evaluate``; it only compares the incoming
model/version/digest with what the operator found approved, and shows ``missing`` as the denial
message. Keep entries tiny: they all live in one object with a size limit.
"""

from __future__ import annotations

from typing import Any

from mlsec.gate.rules import Decision, Release, rfc3339

MAX_MESSAGE = 512  # a denial message, not a report; the webhook gives the full reasoning


def ledger_key(release: Release) -> str:
    """``version@digest``, the string the admission policy compares against."""
    return f"{release.version}@{release.image_digest}"


def ledger_entry(release: Release, decision: Decision) -> dict[str, Any]:
    missing = "" if decision.allowed else decision.message()
    if len(missing) > MAX_MESSAGE:
        missing = missing[: MAX_MESSAGE - 1] + "…"
    return {
        "model": release.model,
        "version": release.version,
        "digest": release.image_digest,
        "approved": decision.allowed,
        "missing": missing,
        "validUntil": rfc3339(decision.valid_until) if decision.valid_until else None,
    }
