"""kubectl mlsec: the pure parts (approval body, status rendering) and `audit verify`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from mlsec import plugin
from mlsec.audit import AuditLog, EventType

DIGEST = "sha256:" + "d" * 64
MODEL = {"metadata": {"name": "mri-classifier", "namespace": "radiology", "generation": 4},
         "spec": {"version": "3", "image": f"registry.hospital.com/ml/mri@{DIGEST}", "stage": "staging",
                  "owner": "alice", "dataClassification": "phi"}}


def test_approval_body_binds_to_the_models_digest() -> None:
    body = plugin.approval_body(MODEL, "3", "approve", "AUC 0.94")
    assert body == {
        "apiVersion": "mlsec.io/v1alpha1", "kind": "ModelApproval",
        "metadata": {"generateName": "mri-classifier-3-approve-", "namespace": "radiology"},
        "spec": {"modelDeployment": "mri-classifier", "version": "3", "imageDigest": DIGEST,
                 "stage": "production", "decision": "approve", "comment": "AUC 0.94"},
    }
    assert "approvedBy" not in body["spec"]  # stamped by admission, never sent
    other = "sha256:" + "e" * 64
    assert plugin.approval_body(MODEL, "4", "reject", "", digest=other)["spec"]["imageDigest"] == other
    assert plugin.approval_body(MODEL, "1.2_RC", "approve", "", digest=other)["metadata"]["generateName"] == \
        "mri-classifier-1-2-rc-approve-"


@pytest.mark.parametrize(("model", "version", "message"), [
    (MODEL, "4", "mri-classifier is at version 3, not 4: its image digest belongs to that version"),
    ({**MODEL, "spec": {**MODEL["spec"], "image": "registry.hospital.com/ml/mri:3"}}, "3",
     "mri-classifier's image registry.hospital.com/ml/mri:3 is not pinned by digest"),
])
def test_approval_body_refuses(model: dict[str, Any], version: str, message: str) -> None:
    with pytest.raises(plugin.Refused, match=message.replace("(", r"\(").replace(")", r"\)")):
        plugin.approval_body(model, version, "approve", "")


def test_render_status() -> None:
    md = {**MODEL, "metadata": {**MODEL["metadata"], "annotations": {"mlsec.io/requested-by": "bob"}},
          "status": {
              "stage": "staging", "lastAppliedVersion": "3",
              "conditions": [{"type": "PromotionApproved", "status": "False", "reason": "Rejected",
                              "message": "not yet promotable: rejected by dave", "observedGeneration": 3}],
              "approvals": [
                  {"name": "a1", "approver": "carol", "platformRole": "model_approver", "decision": "approve",
                   "counted": True, "reason": "counts as model_approver"},
                  {"name": "a2", "approver": "dave", "platformRole": "compliance_reviewer",
                   "decision": "reject", "counted": True,
                   "reason": "rejects the promotion as compliance_reviewer"},
                  {"name": "a3", "approver": "alice", "decision": "approve", "counted": False,
                   "reason": "self-approval: alice is the model owner"}],
              "missingApprovals": ["compliance_reviewer: 1 more (for phi models)"]}}
    assert plugin.render_status(md) == (
        "ModelDeployment radiology/mri-classifier\n"
        "  stage:       staging (rolled out: staging)\n"
        "  version:     3 (rolled out: 3)\n"
        f"  image:       registry.hospital.com/ml/mri@{DIGEST}\n"
        "  owner:       alice   classification: phi\n"
        "  requestedBy: bob\n"
        "  PromotionApproved: False Rejected (stale): not yet promotable: rejected by dave\n"
        "  approvals counted (1):\n"
        "    ✓ a1  carol (model_approver): counts as model_approver\n"
        "  rejections blocking the promotion (1):\n"
        "    ✗ a2  dave (compliance_reviewer): rejects the promotion as compliance_reviewer\n"
        "  not counted (1):\n"
        "    - a3  alice [approve]: self-approval: alice is the model owner\n"
        "  missing:     compliance_reviewer: 1 more (for phi models)\n")
    bare = plugin.render_status({"metadata": {"name": "m", "namespace": "n"}, "spec": {"stage": "staging"}})
    assert "rolled out: nothing yet" in bare and "approvals counted (0):\n    (none)" in bare
    assert "missing:     nothing" in bare


def test_audit_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, sink=None) as log:
        for _ in range(3):
            log.record(EventType.PROMOTION_DENIED)
    assert plugin.main(["audit", "verify", str(path)], out=io.StringIO()) == 0
    assert capsys.readouterr().out == "OK: 3 records\n"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])
    assert plugin.main(["audit", "verify", str(path), "--context", "carol"], out=io.StringIO()) == 1
    assert capsys.readouterr().out.startswith("BROKEN at line 2: seq 3 where 2 was expected")


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as caught:
        plugin.main(["promote", "m", "--to", "prod"])
    assert caught.value.code == 2


def test_an_unreadable_kubeconfig_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert plugin.main(["status", "m", "--kubeconfig", str(missing), "--context", "x"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot load the kubeconfig")
