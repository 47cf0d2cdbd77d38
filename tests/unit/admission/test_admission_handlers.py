"""The webhook handlers with kopf's in-memory indexes faked: decisions, messages, patches, audit."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import kopf
import pytest
import yaml

from mlsec.audit import AuditLog
from mlsec.handlers import admission, context, model_store, webhook

REPO = Path(__file__).resolve().parents[3]
NS = "radiology"
DIGEST = "sha256:" + "a" * 64
IMAGE = f"registry.hospital.com/ml/mri@{DIGEST}"
GROUPS = {"alice": ["data_scientists"], "bob": ["ml_engineers"], "carol": ["ml_leads"],
          "dave": ["compliance"], "erin": []}
KEY = "mlsec.io/requested-by"


def _policy_spec(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests/samples/policy-hospital.yaml").read_text())
    spec = dict(doc["spec"])
    spec.pop("vault", None)
    spec.update(changes)
    return spec


def _model(**changes: Any) -> dict[str, Any]:
    return {"model": "mri", "version": "3", "image": IMAGE, "stage": "staging", "dataClassification": "phi",
            "owner": "alice", "replicas": 1, "port": 8080, **changes}


def _approval(name: str, approver: str, decision: str = "approve", age: timedelta = timedelta(minutes=5),
              **spec: Any) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    created = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"modelDeployment": "mri", "version": "3", "imageDigest": DIGEST, "stage": "production",
            "decision": decision, "approvedBy": approver, "approverGroups": GROUPS[approver], **spec}
    return name, created, body, {}


class World:
    """kopf's three indexes for one namespace."""

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        self.policies = [("2026-01-01T00:00:00Z", "default", 1, policy or _policy_spec(), "uid-1")]
        self.models: list[tuple[str, dict[str, Any]]] = [("mri", _model())]
        self.approvals: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []

    def indexes(self) -> dict[str, Any]:
        return {"policies_by_namespace": {NS: self.policies} if self.policies else {},
                "models_by_namespace": {NS: self.models},
                "approvals_by_namespace": {NS: self.approvals}}


@pytest.fixture(autouse=True)
def indexed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission.STATE, "indexed", True)
    listed = threading.Event()
    listed.set()
    monkeypatch.setattr(model_store.STORE, "listed", listed)


@pytest.fixture
def audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, sink=None)
    monkeypatch.setattr(context, "audit", lambda: log)
    return path


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def userinfo(user: str) -> dict[str, Any]:
    return {"username": user, "groups": [*GROUPS[user], "system:authenticated"]}


def gate(world: World, user: str, new: dict[str, Any], old: dict[str, Any] | None = None,
         warnings: list[str] | None = None, dryrun: bool = False) -> None:
    body = {"metadata": {"name": "mri", "namespace": NS}, "spec": new}
    old_body = {"metadata": {"name": "mri", "namespace": NS}, "spec": old} if old is not None else None
    run(admission.deployment_gate(
        operation="UPDATE" if old is not None else "CREATE", namespace=NS, name="mri",
        userinfo=userinfo(user), spec=new, body=body, old=old_body,
        warnings=warnings if warnings is not None else [], dryrun=dryrun, **world.indexes()))


def denied(call: Any) -> str:
    with pytest.raises(kopf.AdmissionError) as caught:
        call()
    assert caught.value.code == 403
    return str(caught.value)


# --- ModelDeployment: the gate ------------------------------------------------------------------


def test_promotion_without_approvals_is_denied_with_what_is_missing(audit: Path) -> None:
    world = World()
    token = webhook.REQUEST_UID.set("uid-123")
    try:
        msg = denied(lambda: gate(world, "bob", _model(stage="production"), _model()))
    finally:
        webhook.REQUEST_UID.reset(token)
    assert msg == ("promotion of mri version 3 to production: needs 1 approval from model_approver, "
                   "1 approval from compliance_reviewer (required for phi models); have 0")
    (rec,) = records(audit)
    assert rec["event_type"] == "PROMOTION_DENIED" and rec["actor"]["user_id"] == "bob"
    assert rec["result"] == {"status": "DENIED", "reason": msg}
    assert rec["context"] == {"request_id": "uid-123", "policy": f"{NS}/default"}
    assert rec["action"]["details"]["layer"] == "admission-webhook"


def test_promotion_with_the_approvals_is_allowed_and_recorded(audit: Path) -> None:
    world = World()
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    gate(world, "bob", _model(stage="production"), _model())
    (rec,) = records(audit)
    assert rec["event_type"] == "PROMOTION_ALLOWED"
    assert rec["result"]["reason"] == "approved by carol (model_approver), dave (compliance_reviewer)"
    assert rec["action"]["details"]["approvedBy"] == ["carol", "dave"]


def test_no_allow_before_the_indexes_are_loaded(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission.STATE, "indexed", False)
    world = World()
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    assert denied(lambda: gate(world, "bob", _model(stage="production"), _model())) == (
        "the operator has just started and is still loading approvals and policies: retry in a few seconds")
    run(admission.indexes_ready())
    gate(world, "bob", _model(stage="production"), _model())


def test_no_allow_before_the_models_are_listed(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_store.STORE, "listed", threading.Event())
    world = World()
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    assert "still loading" in denied(lambda: gate(world, "bob", _model(stage="production"), _model()))
    model_store.STORE.listed.set()
    gate(world, "bob", _model(stage="production"), _model())


def test_dry_run_decides_but_records_nothing(audit: Path) -> None:
    denied(lambda: gate(World(), "bob", _model(stage="production"), _model(), dryrun=True))
    assert not audit.exists() or audit.read_text() == ""


@pytest.mark.parametrize(("approvals", "requester", "expected"), [
    ([("carol", "approve"), ("dave", "approve")], "carol",
     "needs 1 approval from model_approver; have 1. Not counted: a-carol by carol: self-approval: carol is "
     "the requester"),
    ([("carol", "approve")], "bob",
     "needs 1 approval from compliance_reviewer (required for phi models); have 1"),
    ([("dave", "approve")], "bob", "needs 1 approval from model_approver; have 1"),
    ([("carol", "approve"), ("dave", "reject")], "bob", "rejected by dave (compliance_reviewer)"),
])
def test_what_the_denial_says(audit: Path, approvals: list[tuple[str, str]], requester: str,
                              expected: str) -> None:
    world = World()
    world.approvals = [_approval(f"a-{who}", who, decision) for who, decision in approvals]
    msg = denied(lambda: gate(world, requester, _model(stage="production"), _model()))
    assert expected in msg


def test_expired_and_rebound_approvals_do_not_count(audit: Path) -> None:
    world = World()
    world.approvals = [_approval("old", "carol", age=timedelta(hours=169)), _approval("a2", "dave")]
    assert "Not counted: old by carol: expired at" in denied(
        lambda: gate(world, "bob", _model(stage="production"), _model()))
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    in_prod = _model(stage="production")
    other = "registry.hospital.com/ml/mri@sha256:" + "b" * 64
    msg = denied(lambda: gate(world, "bob", {**in_prod, "image": other}, in_prod))
    assert "bound to a different image digest" in msg
    msg = denied(lambda: gate(world, "bob", {**in_prod, "version": "4"}, in_prod))
    assert "promotion of mri version 4 to production" in msg and "bound to version 3" in msg
    gate(world, "bob", {**in_prod, "replicas": 5}, in_prod)  # not a release change: no gate


def test_developer_stage_skipping_and_missing_policy(audit: Path) -> None:
    world = World()
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    assert denied(lambda: gate(world, "alice", _model(stage="production"), _model())).startswith(
        "alice is a model_developer: only a model_deployer may move")
    assert denied(lambda: gate(world, "bob", _model(stage="production"), _model(stage="development"))) == \
        "mri: cannot move from development to production directly; promote through staging"
    world.policies = []
    assert denied(lambda: gate(world, "bob", _model(stage="production"), _model())) == \
        f"promotion of mri to production denied: no MLSecurityPolicy in namespace {NS}: nothing is " \
        "rolled out (fail closed)"


def test_audit_enforcement_warns(audit: Path) -> None:
    world = World(_policy_spec(enforcement="audit"))
    warnings: list[str] = []
    gate(world, "bob", _model(stage="production"), _model(), warnings=warnings)
    assert warnings == ["enforcement is audit, so this is allowed, but: promotion of mri version 3 to "
                        "production: needs 1 approval from model_approver, 1 approval from "
                        "compliance_reviewer (required for phi models); have 0"]
    (rec,) = records(audit)
    assert rec["event_type"] == "PROMOTION_WARNED" and rec["result"]["status"] == "WARNING"


def test_blockers_deny(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlsec.handlers import promotion

    monkeypatch.setattr(promotion, "BLOCKERS", [lambda ns, pol: "Vault has no audit device"])
    world = World()
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    assert denied(lambda: gate(world, "bob", _model(stage="production"), _model())) == \
        f"promotion to production is blocked in {NS}: Vault has no audit device"


# --- ModelDeployment: the requester stamp --------------------------------------------------------


def stamp(user: str, new: dict[str, Any], old: dict[str, Any] | None = None,
          annotations: dict[str, str] | None = None, old_annotations: dict[str, str] | None = None) -> Any:
    raw = {"metadata": {"name": "mri", "namespace": NS, "annotations": annotations or {}}, "spec": new}
    old_raw = ({"metadata": {"name": "mri", "annotations": old_annotations or {}}, "spec": old}
               if old is not None else None)
    patch = kopf.Patch(body=kopf.Body(raw))
    run(admission.deployment_stamp(operation="UPDATE" if old else "CREATE", userinfo=userinfo(user),
                                   spec=new, old=old_raw, patch=patch))
    return patch.as_json_patch()


def test_requester_stamp() -> None:
    assert stamp("alice", _model()) == [{"op": "add", "path": "/metadata/annotations/mlsec.io~1requested-by",
                                         "value": "alice"}]
    forged = stamp("bob", _model(stage="production"), _model(), annotations={KEY: "carol"},
                   old_annotations={KEY: "alice"})
    path = "/metadata/annotations/mlsec.io~1requested-by"
    assert forged == [{"op": "replace", "path": path, "value": "bob"}]
    kept = stamp("bob", _model(replicas=4), _model(), annotations={KEY: "dave"},
                 old_annotations={KEY: "alice"})
    assert kept == [{"op": "replace", "path": path, "value": "alice"}]
    removed = stamp("bob", _model(replicas=4), _model(), annotations={KEY: "dave", "team": "x"})
    assert removed == [{"op": "remove", "path": "/metadata/annotations/mlsec.io~1requested-by"}]
    assert stamp("bob", _model(replicas=4), _model(), annotations={KEY: "alice"},
                 old_annotations={KEY: "alice"}) == []


# --- ModelApproval -------------------------------------------------------------------------------


def approve(world: World, user: str, spec: dict[str, Any], annotations: dict[str, str] | None = None,
            warnings: list[str] | None = None) -> None:
    run(admission.approval_check(operation="CREATE", namespace=NS, userinfo=userinfo(user), spec=spec,
                                 meta={"annotations": annotations or {}}, old=None,
                                 warnings=warnings if warnings is not None else [], **world.indexes()))


def test_approval_stamp_overwrites_the_client() -> None:
    raw = {"metadata": {"name": "a"}, "spec": {"modelDeployment": "mri", "approvedBy": "dave",
                                               "approverGroups": ["compliance"]}}
    patch = kopf.Patch(body=kopf.Body(raw))
    warnings: list[str] = []
    run(admission.approval_stamp(userinfo=userinfo("carol"), spec=raw["spec"], patch=patch,
                                 warnings=warnings))
    body = jsonpatch.apply_patch(copy.deepcopy(raw), patch.as_json_patch())
    assert body["spec"]["approvedBy"] == "carol"
    assert body["spec"]["approverGroups"] == ["ml_leads", "system:authenticated"]
    assert warnings == ["spec.approvedBy 'dave' was replaced by the authenticated user 'carol': an approval "
                        "records its creator"]


def test_approval_checks() -> None:
    world = World()
    stamped = {"modelDeployment": "mri", "version": "3", "imageDigest": DIGEST, "decision": "approve",
               "approvedBy": "carol", "approverGroups": ["ml_leads", "system:authenticated"]}
    approve(world, "carol", stamped)  # fine
    assert denied(lambda: approve(world, "carol", {**stamped, "approvedBy": "dave"})).startswith(
        "spec.approvedBy names 'dave'")
    assert denied(lambda: approve(world, "erin", {**stamped, "approvedBy": "erin", "approverGroups": [
        "system:authenticated"]})).startswith("erin holds no platform role that approves mri")
    world.models = [("mri", _model(owner="carol"))]
    assert denied(lambda: approve(world, "carol", stamped)).startswith("self-approval: carol owns mri")


def test_approval_warnings() -> None:
    world = World()
    warnings: list[str] = []
    other = {"modelDeployment": "mri", "version": "4", "imageDigest": "sha256:" + "c" * 64,
             "decision": "approve"}
    approve(world, "carol", other, warnings=warnings)
    assert warnings == [f"mri is now version 3 ({DIGEST}): this approval counts only for version 4 at "
                        f"sha256:{'c' * 64}"]
    world.policies = []
    warnings.clear()
    approve(world, "carol", other, warnings=warnings)
    assert warnings[0].startswith("this approval cannot count yet: no MLSecurityPolicy")


def test_approvals_are_immutable() -> None:
    spec = {"modelDeployment": "mri", "version": "3"}
    run(admission.approval_check(operation="UPDATE", namespace=NS, userinfo={"username": "admin"}, spec=spec,
                                 meta={}, old={"spec": spec}, warnings=[]))
    assert denied(lambda: run(admission.approval_check(
        operation="UPDATE", namespace=NS, userinfo={"username": "admin"}, spec={**spec, "version": "4"},
        meta={}, old={"spec": spec}, warnings=[]))) == \
        "spec is immutable: approvals cannot be edited, create a new one"


# --- status ------------------------------------------------------------------------------------------


def test_status_is_written_only_by_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    operator = "system:serviceaccount:mlsec-system:mlsec-operator"
    monkeypatch.setattr(admission.STATE, "identity", operator)
    resource = kopf.Resource("mlsec.io", "v1alpha1", "modeldeployments", kind="ModelDeployment")
    run(admission.status_guard(userinfo={"username": operator}, resource=resource, name="mri"))
    for user in ("bob", "admin"):
        assert denied(lambda u=user: run(admission.status_guard(
            userinfo={"username": u}, resource=resource, name="mri"))) == (
            f"the status of ModelDeployment mri is written only by the operator ({operator}); "
            f"{user} may not change it")
