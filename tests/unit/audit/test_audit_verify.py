"""verify_file and the CLI entry point: every kind of tampering, blamed on the right line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mlsec.audit import Action, AuditLog, EventType, Resource, canonical_line, verify_file
from mlsec.audit.verify import main

N = 6


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=None) as log:
        for i in range(1, N + 1):
            log.record(
                EventType.APPROVAL_RECORDED,
                resource=Resource("ModelApproval", f"approval-{i}", "radiology-ml"),
                action=Action("CREATE", {"decision": "approve"}),
            )
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(change(lines_of(path))))


def edit_record(k: int, **changes: object) -> Callable[[list[bytes]], list[bytes]]:
    """Edit line k (1-based) and re-serialise it canonically, as a careful forger would."""

    def change(lines: list[bytes]) -> list[bytes]:
        record = json.loads(lines[k - 1])
        for key, value in changes.items():
            record["action"]["details"][key] = value
        lines[k - 1] = canonical_line(record) + b"\n"
        return lines

    return change


def test_intact_file_verifies(audit_file: Path) -> None:
    result = verify_file(audit_file)
    assert (result.ok, result.lines, result.first_bad_line) == (True, N, None)
    assert result.summary() == f"OK: {N} records"


def test_empty_file_verifies(tmp_path: Path) -> None:
    (tmp_path / "a.log").touch()
    assert verify_file(tmp_path / "a.log").summary() == "OK: 0 records"


SWAP_3_4 = [1, 2, 4, 3, 5, 6]

# (id, tampering, first bad line, words in the reason)
TAMPERING: list[tuple[str, Callable[[list[bytes]], list[bytes]], int, str]] = [
    ("edit line 3", edit_record(3, decision="reject"), 3, "prev_hash recorded in line 4"),
    ("edit line 1", edit_record(1, decision="reject"), 1, "edited"),
    ("edit line 5 by hand", lambda ls: [*ls[:4], ls[4].replace(b":", b": ", 1), *ls[5:]], 5,
     "canonical"),
    ("delete line 3", lambda ls: ls[:2] + ls[3:], 3, "seq 4 where 3 was expected"),
    ("delete lines 2-3", lambda ls: ls[:1] + ls[3:], 2, "2 record(s)"),
    ("delete line 1", lambda ls: ls[1:], 1, "seq 2 where 1 was expected"),
    ("swap lines 3 and 4", lambda ls: [ls[i - 1] for i in SWAP_3_4], 3, "reordered"),
    ("duplicate line 4", lambda ls: [*ls[:4], ls[3], *ls[4:]], 5, "moved or duplicated"),
    ("truncate last line", lambda ls: [*ls[:-1], ls[-1][:40]], N, "incomplete"),
    ("garble line 2", lambda ls: [ls[0], b"{\"seq\": 2, \x00garbage\n", *ls[2:]], 2,
     "garbled"),
    ("blank line 4", lambda ls: [*ls[:3], b"\n", *ls[3:]], 4, "garbled"),
    ("not an object", lambda ls: [*ls[:2], b"[1,2]\n", *ls[3:]], 3, "garbled"),
    ("bad prev_hash", lambda ls: [ls[0].replace(b'"prev_hash":"0', b'"prev_hash":"1'), *ls[1:]],
     1, "genesis"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tamper", "bad_line", "words"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING]
)
def test_tampering_is_detected_at_the_right_line(
    audit_file: Path, tamper: Callable[[list[bytes]], list[bytes]], bad_line: int, words: str
) -> None:
    rewrite(audit_file, tamper)
    result = verify_file(audit_file)
    assert not result.ok
    assert result.first_bad_line == bad_line, result.reason
    assert words in result.reason
    assert result.summary().startswith(f"BROKEN at line {bad_line}: ")


def test_forged_chain_rewritten_after_an_edit_is_still_caught(audit_file: Path) -> None:
    # Editing line 2 and fixing line 3's prev_hash moves the break to line 3 -> 4.
    from mlsec.audit import line_hash

    rewrite(audit_file, edit_record(2, decision="reject"))
    lines = lines_of(audit_file)
    third = json.loads(lines[2])
    third["prev_hash"] = line_hash(lines[1][:-1])
    lines[2] = canonical_line(third) + b"\n"
    audit_file.write_bytes(b"".join(lines))
    assert verify_file(audit_file).first_bad_line == 3


def test_editing_the_last_line_needs_an_external_anchor(audit_file: Path) -> None:
    head = verify_file(audit_file).head
    rewrite(audit_file, edit_record(N, decision="reject"))
    result = verify_file(audit_file)
    assert result.ok  # nothing follows the last line inside the file ...
    assert result.head != head  # ... but the head no longer matches a copy kept elsewhere


def test_main_exit_codes(
    audit_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(audit_file)]) == 0
    assert capsys.readouterr().out == f"OK: {N} records\n"
    rewrite(audit_file, lambda ls: ls[:2] + ls[3:])
    assert main([str(audit_file)]) == 1
    assert capsys.readouterr().out.startswith("BROKEN at line 3: seq 4 where 3 was expected")
    assert main([str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
