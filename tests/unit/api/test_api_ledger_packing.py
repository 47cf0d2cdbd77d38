"""The ledger's packed strings: lossless, and a release's key finds exactly its own line."""

from __future__ import annotations

from typing import Any

import pytest

from mlsec.api.ledger import pack, pack_releases, unpack

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def release(version: str = "3", digest: str = DIGEST, owner: str = "alice", dc: str = "phi",
            approvers: tuple[str, ...] = ("carol", "dave")) -> dict[str, Any]:
    return {"version": version, "digest": digest, "owner": owner, "dataClassification": dc,
            "approvers": list(approvers)}


def approvers_of(text: str, name: str, version: str, digest: str, owner: str, dc: str) -> list[str] | None:
    """What the gate's CEL does (mlsec.api.admission.GATE_VARIABLES): indexOf of the key, then
    the rest of that line."""
    key = f"\n{name}\t{version}\t{digest}\t{owner}\t{dc}\t"
    at = text.find(key)
    if at < 0:
        return None
    rest = text[at + len(key):text.index("\n", at + 1)]
    return rest.split("\t")[:-1]


def test_round_trip() -> None:
    releases = {"mri": [release(), release("4", OTHER, approvers=())],
                "ct": [release(owner="cn=Bob Smith,ou=x")]}
    spec = {"policy": "default", "releases": releases}
    assert unpack(pack(spec)) == spec
    assert pack_releases({}) == ""
    # pending messages are not part of the ledger (each model's status carries its own)
    assert "pending" not in pack({**spec, "pending": {"mri": "needs 1 model_approver"}})


def test_key_finds_only_the_exact_release() -> None:
    text = pack_releases({"mri": [release()], "mri-v2": [release(owner="alice2")],
                          "m": [release(version="31")]})
    assert approvers_of(text, "mri", "3", DIGEST, "alice", "phi") == ["carol", "dave"]
    for changed in (("mri", "3", DIGEST, "alice", "internal"), ("mri", "3", OTHER, "alice", "phi"),
                    ("mri", "3", DIGEST, "alic", "phi"), ("mr", "3", DIGEST, "alice", "phi"),
                    ("m", "3", DIGEST, "alice", "phi"), ("mri-v2", "3", DIGEST, "alice", "phi")):
        assert approvers_of(text, *changed) is None, changed


@pytest.mark.parametrize("bad", ["a\tb", "a\nb", ""])
def test_a_field_that_would_break_the_format_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="tab or newline"):
        pack_releases({"mri": [release(owner=bad)]})
