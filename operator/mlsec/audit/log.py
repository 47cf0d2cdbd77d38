"""Append-only, hash-chained audit log: stdout and an optional file, one JSON object a line."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

from mlsec.audit.chain import GENESIS_HASH, canonical_line, line_hash
from mlsec.audit.events import Action, Actor, Context, EventType, Resource, Result
from mlsec.audit.redact import redact, redact_text

Sink = TextIO | logging.Logger | Literal["stdout"] | None
_TAIL_CHUNK = 64 * 1024


class AuditChainError(Exception):
    """The audit file cannot be continued safely (incomplete last line, other writer, ...)."""


def rfc3339_ms(moment: datetime) -> str:
    # isoformat, not strftime: a third of the cost, on every audit record.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _value(value: Any) -> Any:
    return redact_text(value) if type(value) is str else None if value is None else redact(value)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Thread-safe writer (kopf runs sync handlers in threads).

    ``sink`` is where every line is echoed: "stdout" (resolved at write time), a text stream, a
    logger (INFO) or None. With ``path`` the lines are also appended to that file; an existing
    file is continued from its last line. The file is locked with ``flock`` so a second writer,
    which would fork the chain, fails fast instead.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        sink: Sink = "stdout",
        clock: Callable[[], datetime] = _utcnow,
        fsync: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._sink = sink
        self._clock = clock
        self._fsync = fsync
        self._fd: int | None = None
        self.path = Path(path) if path is not None else None
        self.seq, self.last_hash = 0, GENESIS_HASH
        self._broken: str | None = None  # why nothing more may be appended
        if self.path is not None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.seq, self.last_hash = _read_tail(self._fd, self.path)
            except BlockingIOError:
                os.close(self._fd)
                raise AuditChainError(f"{self.path} is open by another audit writer") from None
            except BaseException:
                os.close(self._fd)
                raise

    def record(
        self,
        event_type: EventType | str,
        *,
        actor: Actor | None = None,
        resource: Resource | None = None,
        action: Action | None = None,
        result: Result | None = None,
        context: Context | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it as written (redacted, with seq and prev_hash)."""
        actor, resource = actor or Actor(), resource or Resource()
        action, result, context = action or Action(), result or Result(), context or Context()
        # The sections' own keys are the schema's (none names a secret): only their values are
        # redacted, and the free-form details whole (every promotion decision is a record).
        body: dict[str, Any] = {
            "event_type": (event_type if isinstance(event_type, EventType) else EventType(event_type)).value,
            "actor": {
                "user_id": _value(actor.user_id),
                "groups": [_value(g) for g in actor.groups],
                "service_account": _value(actor.service_account),
            },
            "resource": {k: _value(v) for k, v in vars(resource).items()},
            "action": {"type": _value(action.type), "details": redact(dict(action.details))},
            "result": {k: _value(v) for k, v in vars(result).items()},
            "context": {k: _value(v) for k, v in vars(context).items()},
        }
        with self._lock:
            if self.path is not None and self._fd is None:
                raise AuditChainError(f"audit log {self.path} is closed")
            if self._broken is not None:  # nothing is appended after a partial line
                raise AuditChainError(self._broken)
            record = {
                **body,
                "timestamp": rfc3339_ms(self._clock()),
                "seq": self.seq + 1,
                "prev_hash": self.last_hash,
            }
            line = canonical_line(record)
            if self._fd is not None:
                data = line + b"\n"
                written = os.write(self._fd, data)  # one write on O_APPEND: the line lands whole
                if written != len(data):  # a full disk: the file now ends inside a line
                    self._broken = (f"audit log {self.path}: short write ({written} of {len(data)} "
                                    "bytes); run `mlsec audit verify` and rotate the file before "
                                    "continuing")
                    raise AuditChainError(self._broken)
                if self._fsync:
                    os.fsync(self._fd)
            self.seq, self.last_hash = record["seq"], line_hash(line)
            self._echo(line.decode("ascii"))
        return record

    def _echo(self, text: str) -> None:
        sink = sys.stdout if self._sink == "stdout" else self._sink
        if isinstance(sink, logging.Logger):
            sink.info(text)
        elif sink is not None:
            sink.write(text + "\n")
            sink.flush()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # also releases the flock
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read_tail(fd: int, path: Path) -> tuple[int, str]:
    """(seq, hash) of the last line, reading only the end of the file."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS_HASH
    tail, start = b"", size
    while start > 0 and tail.count(b"\n") < 2:
        start = max(0, start - _TAIL_CHUNK)
        tail = os.pread(fd, size - start, start)
    if not tail.endswith(b"\n"):
        raise AuditChainError(
            f"{path} ends with an incomplete line (interrupted write?); "
            "run `mlsec audit verify` and rotate the file before continuing"
        )
    last = tail[:-1].rsplit(b"\n", 1)[-1]
    try:
        seq = json.loads(last)["seq"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditChainError(f"{path}: last line is not an audit record: {exc}") from None
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise AuditChainError(f"{path}: last line has no integer seq")
    return seq, line_hash(last)
