"""Redaction guard: no secret value ever enters an audit record (DESIGN.md "Audit events").

Applied to the whole record, whatever the caller passed, so one careless ``details`` dict
cannot leak a bind password or a Vault token. Key names are matched on their *ending*, so
references such as ``bindPasswordSecretRef`` or ``token_policies`` stay readable.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

REDACTED = "[REDACTED]"

# Matched against the key lower-cased with everything but letters and digits removed.
_SECRET_KEY = re.compile(
    r"(password|passwd|passphrase|token|secret|secretid|secretkey|privatekey|ciphertext"
    r"|plaintext|apikey|credentials?|jwt|authorization|cookie|hmackey)$"
)
_SECRET_VALUES = [
    r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?",  # JWT
    r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}",  # Vault >= 1.10 / OpenBao tokens
    r"\b[sb]\.[A-Za-z0-9]{24,}\b",  # legacy Vault service/batch tokens
    r"(?s:-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z))",
    r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # user:password@ in URLs
]
# One pass over each string, not one per pattern: every promotion decision is an audit record,
# and redaction was most of its cost (bench/webhook_latency.py).
_SECRET_VALUE = re.compile("|".join(_SECRET_VALUES))


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(re.sub(r"[^a-z0-9]", "", key.lower())))


def redact_text(text: str) -> str:
    # Every pattern needs one of these; most audit strings (names, verbs) have none.
    if "." not in text and "://" not in text and "-----" not in text:
        return text
    return _SECRET_VALUE.sub(REDACTED, text)


def redact(value: Any) -> Any:
    """Return a JSON-ready copy of ``value`` with secret-looking keys and values replaced."""
    # Exact built-in types first: isinstance against the Mapping ABC was most of the cost of an
    # audit record, and records are written on the admission path.
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is dict:
        return {
            str(k): REDACTED if v is not None and is_secret_key(str(k)) else redact(v)
            for k, v in value.items()
        }
    if kind is list or kind is tuple:
        return [redact(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf
    if isinstance(value, Enum):
        return redact(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes | bytearray):
        return REDACTED  # raw bytes in an audit record are key material more often than not
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_key(str(k)) and v is not None else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, set | frozenset):
        return sorted((redact(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return redact_text(str(value))
