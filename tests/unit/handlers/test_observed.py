"""The operator's view of its children decides when a reconcile may skip reading one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mlsec.builders.meta import DESIRED_HASH_ANNOTATION
from mlsec.handlers import observed

OURS = "mlsec-operator"


def child(rv: int, digest: str | None = "h1", managers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m", "namespace": "ns", "resourceVersion": str(rv),
                            "managedFields": managers or [{"manager": OURS, "time": "2026-11-23T10:00:00Z"}]}
    if digest:
        meta["annotations"] = {DESIRED_HASH_ANNOTATION: digest}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    observed.clear()
    yield
    observed.clear()


def test_unknown_child_must_be_read() -> None:
    assert observed.in_sync(child(1)) is None


def test_same_hash_is_in_sync_and_another_is_not() -> None:
    observed.record(child(5), OURS)
    assert observed.in_sync(child(0, "h1")) is True
    assert observed.in_sync(child(0, "h2")) is False


def test_an_edit_by_someone_else_forces_a_read() -> None:
    observed.record(child(6, managers=[{"manager": OURS, "time": "2026-11-23T10:00:00Z"},
                                       {"manager": "kubectl-edit", "time": "2026-11-23T10:05:00Z"}]), OURS)
    assert observed.in_sync(child(0)) is None


def test_an_older_event_does_not_replace_a_newer_write() -> None:
    observed.record(child(9, "h2"), OURS)  # our apply's response
    observed.record(child(7, "h1"), OURS)  # the watch catching up
    assert observed.in_sync(child(0, "h2")) is True


def test_a_deleted_child_is_forgotten() -> None:
    observed.record(child(5), OURS)
    observed.forget("Service", "ns", "m")
    assert observed.in_sync(child(0)) is None


def test_a_child_without_our_annotation_is_not_in_sync() -> None:
    observed.record(child(5, digest=None), OURS)
    assert observed.in_sync(child(0, "h1")) is False


def test_what_is_kept_is_exact_for_any_hash_and_version() -> None:
    """One int per child: the hash (ours: SHA-256 hex; anything else too), the version and the
    touched bit come back exactly."""
    sha = "0f" * 32
    pairs = ((sha, "1f" + sha[2:]), ("h1", "h1 "), ("\x00", "\x00\x00"), ("0_" + sha[2:], "00" + sha[2:]),
             ("é" * 40, "é" * 39 + "e"), ("A" * 64, "a" * 64), ("z" * 64, "y" * 64))
    for digest, other in pairs:
        observed.clear()
        observed.record(child(2**63 - 1, digest), OURS)
        assert observed.in_sync(child(0, digest)) is True, digest
        assert observed.in_sync(child(0, other)) is False, (digest, other)
    observed.record(child(2**63 - 2, "h9"), OURS)  # older than what is kept: ignored
    assert observed.in_sync(child(0, "z" * 64)) is True
