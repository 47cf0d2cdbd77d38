"""Promotion gate: pure approval rules and the ledger entries derived from them."""

from mlsec.gate.ledger import ledger_entry, ledger_key
from mlsec.gate.rules import (
    PRODUCTION,
    Approval,
    ApprovalDecision,
    ApprovalVerdict,
    Decision,
    PromotionRules,
    Release,
    Requirement,
    Shortfall,
    evaluate,
    required_roles,
    rfc3339,
)

__all__ = [
    "PRODUCTION",
    "Approval",
    "ApprovalDecision",
    "ApprovalVerdict",
    "Decision",
    "PromotionRules",
    "Release",
    "Requirement",
    "Shortfall",
    "evaluate",
    "ledger_entry",
    "ledger_key",
    "required_roles",
    "rfc3339",
]
