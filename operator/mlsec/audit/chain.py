"""The hash chain: canonical JSON lines, each carrying the SHA-256 of the line before it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS_HASH = "0" * 64


def canonical_line(record: dict[str, Any]) -> bytes:
    """One record as the exact bytes written (without the newline): sorted keys, no spaces,
    ASCII only, so the same record always hashes the same on any machine."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def line_hash(line: bytes) -> str:
    """Hash of a line's exact bytes, without its trailing newline."""
    return hashlib.sha256(line).hexdigest()
