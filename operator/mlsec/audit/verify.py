"""Check an audit file's hash chain: ``mlsec audit verify FILE``.

Reports the first line at fault. A line edited in place is caught at the next line (its
``prev_hash`` no longer matches) and blamed on the edited line, a deleted or moved line by the
``seq`` gap where it was. An edit of the *last* line cannot be seen from the file alone: compare
``head`` with a copy kept elsewhere (the same lines go to stdout and the log pipeline).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsec.audit.chain import GENESIS_HASH, canonical_line, line_hash

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    lines: int  # lines read; all of them are good records when ok
    first_bad_line: int | None  # 1-based
    reason: str
    head: str  # when ok, hash of the last line: anchor it elsewhere to protect the tail

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.lines} records"
        return f"BROKEN at line {self.first_bad_line}: {self.reason}"


def verify_file(path: str | Path) -> VerifyResult:
    prev_hash, seq, n = GENESIS_HASH, 0, 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            problem = _check(raw, n, seq, prev_hash)
            if problem is not None:
                bad_line, reason = problem
                return VerifyResult(False, n, bad_line, reason, prev_hash)
            prev_hash, seq = line_hash(raw[:-1]), seq + 1
    return VerifyResult(True, n, None, "", prev_hash)


def _check(raw: bytes, n: int, seq: int, prev_hash: str) -> tuple[int, str] | None:
    """(line at fault, reason) for line ``n``, given the chain state after line ``n - 1``."""
    if not raw.endswith(b"\n"):
        return n, "incomplete last line (truncated write?)"
    line = raw[:-1]
    record = _parse(line)
    if record is None:
        return n, "not a valid audit record (truncated or garbled JSON)"
    if canonical_line(record) != line:
        return n, "not in canonical form: the line was edited"
    if record["seq"] != seq + 1:
        return n, _seq_problem(record["seq"], seq + 1)
    if record["prev_hash"] == prev_hash:
        return None
    if n == 1:
        return 1, "prev_hash is not the genesis value"
    # seq is continuous, so nothing is missing: the previous line itself was changed.
    return n - 1, f"edited: its hash does not match the prev_hash recorded in line {n}"


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(record, dict):
        return None
    seq, prev = record.get("seq"), record.get("prev_hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
        return None
    return record if _HEX64.fullmatch(prev) else None


def _seq_problem(got: int, expected: int) -> str:
    if got > expected:
        return (
            f"seq {got} where {expected} was expected: {got - expected} record(s) before this "
            "line were deleted, or lines were reordered"
        )
    return f"seq {got} where {expected} was expected: the line was moved or duplicated"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsec audit verify", description=__doc__)
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        result = verify_file(args.file)
    except OSError as exc:
        print(f"ERROR: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
