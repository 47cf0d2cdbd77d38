"""AuditLog: schema, chaining across reopen, sinks, single writer, concurrency."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlsec.audit import (
    GENESIS_HASH,
    Action,
    Actor,
    AuditChainError,
    AuditLog,
    Context,
    EventType,
    Resource,
    Result,
    line_hash,
    verify_file,
)
from mlsec.audit import log as audit_log

T0 = datetime(2026, 1, 25, 10, 30, 0, 123456, tzinfo=UTC)


def fixed_clock() -> datetime:
    return T0


def promotion(log: AuditLog, version: str = "3") -> dict[str, object]:
    return log.record(
        EventType.PROMOTION_DENIED,
        actor=Actor("bob", ("ml_engineers",), None),
        resource=Resource("ModelDeployment", "mri-classifier", "radiology-ml", version),
        action=Action("PROMOTE", {"from": "staging", "to": "production"}),
        result=Result("DENIED", "needs 1 approval from model_approver; have 0"),
        context=Context("req-1", "radiology-ml/default"),
    )


def test_record_schema_and_genesis(tmp_path: Path) -> None:
    out = io.StringIO()
    with AuditLog(tmp_path / "audit.log", sink=out, clock=fixed_clock) as log:
        rec = promotion(log)
    assert rec == {
        "timestamp": "2026-01-25T10:30:00.123Z",
        "event_type": "PROMOTION_DENIED",
        "actor": {"user_id": "bob", "groups": ["ml_engineers"], "service_account": None},
        "resource": {
            "type": "ModelDeployment",
            "name": "mri-classifier",
            "namespace": "radiology-ml",
            "version": "3",
        },
        "action": {"type": "PROMOTE", "details": {"from": "staging", "to": "production"}},
        "result": {"status": "DENIED", "reason": "needs 1 approval from model_approver; have 0"},
        "context": {"request_id": "req-1", "policy": "radiology-ml/default"},
        "seq": 1,
        "prev_hash": GENESIS_HASH,
    }
    text = (tmp_path / "audit.log").read_text()
    assert text == out.getvalue()
    assert text.startswith('{"action":{')  # canonical: sorted keys, compact
    assert json.loads(text) == rec


def test_defaults_fill_every_section() -> None:
    rec = AuditLog(sink=None).record("RECONCILED")
    assert rec["actor"] == {"user_id": None, "groups": [], "service_account": None}
    assert rec["result"] == {"status": "SUCCESS", "reason": None}
    assert set(rec) == {
        "timestamp", "event_type", "actor", "resource", "action", "result", "context",
        "seq", "prev_hash",
    }  # fmt: skip


def test_timestamp_is_utc_with_milliseconds() -> None:
    cet = datetime(2026, 1, 25, 11, 30, 0, 999999, tzinfo=UTC).astimezone(
        datetime.now(UTC).astimezone().tzinfo
    )
    rec = AuditLog(sink=None, clock=lambda: cet).record(EventType.RECONCILED)
    assert rec["timestamp"] == "2026-01-25T11:30:00.999Z"


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError):
        AuditLog(sink=None).record("MODEL_STAGE_TRANSITION")


def test_each_record_links_to_the_previous_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=None) as log:
        for v in "123":
            promotion(log, v)
    lines = path.read_bytes().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev_hash"] == GENESIS_HASH
    assert records[1]["prev_hash"] == line_hash(lines[0])
    assert records[2]["prev_hash"] == line_hash(lines[1])


def test_chain_continues_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=None) as log:
        promotion(log)
        promotion(log)
    with AuditLog(path, sink=None) as log:
        assert log.seq == 2
        rec = promotion(log)
    assert rec["seq"] == 3
    assert rec["prev_hash"] == line_hash(path.read_bytes().splitlines()[1])
    result = verify_file(path)
    assert result.ok and result.lines == 3


def test_reopen_reads_only_the_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=None) as log:
        for _ in range(200):
            log.record(EventType.RECONCILED, action=Action("SYNC", {"pad": "x" * 300}))
    reads: list[int] = []
    real_pread = os.pread

    def spy(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", spy)
    monkeypatch.setattr(audit_log, "_TAIL_CHUNK", 256)  # smaller than one line: must grow
    with AuditLog(path, sink=None) as log:
        assert log.seq == 200
        log.record(EventType.RECONCILED)
    assert sum(reads) < 5_000 < path.stat().st_size
    assert verify_file(path).ok


def test_empty_existing_file_starts_at_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    with AuditLog(path, sink=None) as log:
        assert promotion(log)["prev_hash"] == GENESIS_HASH


def test_refuses_to_continue_after_an_incomplete_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=None) as log:
        promotion(log)
    with path.open("ab") as f:
        f.write(b'{"seq":2,"prev')
    with pytest.raises(AuditChainError, match="incomplete line"):
        AuditLog(path, sink=None)


def test_refuses_a_last_line_that_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("hello\n")
    with pytest.raises(AuditChainError, match="not an audit record"):
        AuditLog(path, sink=None)


def test_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=None), pytest.raises(AuditChainError, match="another audit writer"):
        AuditLog(path, sink=None)
    AuditLog(path, sink=None).close()  # released on close


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path, sink=None).close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_logger_sink(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("mlsec.audit.test")
    with caplog.at_level(logging.INFO, logger="mlsec.audit.test"):
        rec = AuditLog(sink=logger).record(EventType.RBAC_SYNCED)
    assert [json.loads(r.getMessage()) for r in caplog.records] == [rec]


def test_stdout_sink_is_resolved_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    rec = AuditLog().record(EventType.POLICY_VALID)
    assert json.loads(capsys.readouterr().out) == rec


def test_failed_file_write_does_not_advance_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, sink=None)
    promotion(log)
    fd = log._fd
    assert fd is not None
    os.close(fd)  # os.write now fails with EBADF
    with pytest.raises(OSError):
        promotion(log)
    assert log.seq == 1
    log._fd = None


def test_closed_log_refuses_to_record_rather_than_drop_the_file(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", sink=None)
    log.close()
    with pytest.raises(AuditChainError, match="closed"):
        promotion(log)


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    out = io.StringIO()
    ticks = iter(T0 + timedelta(milliseconds=i) for i in range(10_000))
    lock = threading.Lock()

    def clock() -> datetime:
        with lock:
            return next(ticks)

    log = AuditLog(path, sink=out, clock=clock)
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        barrier.wait()
        for i in range(125):
            log.record(EventType.RECONCILED, resource=Resource("ModelDeployment", f"m{worker}-{i}"))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = verify_file(path)
    assert result.ok, result.summary()
    assert result.lines == 1000
    assert out.getvalue() == path.read_text()  # stdout copy is the same chain, same order
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert len({r["resource"]["name"] for r in records}) == 1000
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)  # the clock is read under the lock: time follows seq


def test_a_short_write_stops_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk can take part of a line: the chain then cannot go on in that file."""
    log = AuditLog(tmp_path / "audit.log", sink=None)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(AuditChainError, match="short write"):
        promotion(log)
    monkeypatch.setattr(os, "write", real_write)
    with pytest.raises(AuditChainError, match="short write"):
        promotion(log)  # nothing is appended after the partial line
    assert log.seq == 0
    log.close()
    with pytest.raises(AuditChainError, match="incomplete line"):
        AuditLog(tmp_path / "audit.log", sink=None)  # and a restart refuses it too
