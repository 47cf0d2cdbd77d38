"""Hash-chained audit log (DESIGN.md "Audit events") and its verifier."""

from mlsec.audit.chain import GENESIS_HASH, canonical_line, line_hash
from mlsec.audit.events import Action, Actor, Context, EventType, Resource, Result, ResultStatus
from mlsec.audit.log import AuditChainError, AuditLog, rfc3339_ms
from mlsec.audit.redact import REDACTED, is_secret_key, redact
from mlsec.audit.verify import VerifyResult, verify_file

__all__ = [
    "GENESIS_HASH",
    "REDACTED",
    "Action",
    "Actor",
    "AuditChainError",
    "AuditLog",
    "Context",
    "EventType",
    "Resource",
    "Result",
    "ResultStatus",
    "VerifyResult",
    "canonical_line",
    "is_secret_key",
    "line_hash",
    "redact",
    "rfc3339_ms",
    "verify_file",
]
