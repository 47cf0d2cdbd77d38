"""Ledger entries: what the admission policy reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlsec.gate import (
    Approval,
    Decision,
    PromotionRules,
    Release,
    Requirement,
    Shortfall,
    evaluate,
    ledger_entry,
    ledger_key,
)
from mlsec.gate.ledger import MAX_MESSAGE

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "c" * 64
RELEASE = Release("mri-classifier", "3", DIGEST, "phi", "alice", "bob")
RULES = PromotionRules((Requirement("model_approver", 1),), True, timedelta(hours=168))


def test_approved_entry_carries_valid_until() -> None:
    a = Approval(
        "a1", "carol", frozenset({"model_approver"}), "mri-classifier", "3", DIGEST,
        "production", "approve", NOW - timedelta(hours=8),
    )  # fmt: skip
    entry = ledger_entry(RELEASE, evaluate(RELEASE, [a], RULES, NOW))
    assert entry == {
        "model": "mri-classifier",
        "version": "3",
        "digest": DIGEST,
        "approved": True,
        "missing": "",
        "validUntil": "2026-01-17T04:00:00Z",
    }
    assert ledger_key(RELEASE) == f"3@{DIGEST}"


def test_denied_entry_says_what_is_missing() -> None:
    entry = ledger_entry(RELEASE, evaluate(RELEASE, [], RULES, NOW))
    assert entry["approved"] is False
    assert entry["missing"] == "needs 1 approval from model_approver; have 0"
    assert entry["validUntil"] is None


def test_missing_is_capped() -> None:
    many = tuple(Shortfall(f"role_{i:03d}_" + "x" * 40, 1, 0, "") for i in range(40))
    decision = Decision(False, (), many, (), None)
    missing = ledger_entry(RELEASE, decision)["missing"]
    assert len(missing) == MAX_MESSAGE and missing.endswith("…")
