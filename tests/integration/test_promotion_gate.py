"""The promotion gate's attack catalogue (issue 5) on the real API server, with the kopf webhook as the
gate (a cluster without the native admission policies), real identities and LDAP-derived roles:
alice (model_developer, the owner), bob (model_deployer), carol (model_approver), dave
(compliance_reviewer), erin (no role).

Every attack must be refused with a message that says what is wrong. The expiry test is near the
end on purpose: its approvals are made when the module starts (approvalTTL is at least 1m), so
the minute passes while the other tests run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from mlsec.api.ledger import unpack_releases
from mlsec.handlers import webhook
from mlsec.handlers.promotion import EXPIRY_INTERVAL
from mlsec.local import env as local

from . import resources as r
from .conftest import OperatorProcess, wait_until
from .gate_env import (
    EXPECTED_BINDINGS,
    Gate,
    ldap_policy,
    running_shared_operator,
    unique,
    webhook_configs,
    webhook_operator,
)

PHI_RULES = ("needs 1 approval from model_approver, 1 approval from compliance_reviewer "
             "(required for phi models)")
BIN = Path(sys.executable).parent
OPERATOR = "system:serviceaccount:mlsec-system:mlsec-operator"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gate_operator(request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # Fail: the fallback configuration, where the webhook alone holds the gate.
    with webhook_operator(localenv, running_shared_operator(request),
                          tmp_path_factory.mktemp("gate-operator"),
                          "--webhook-failure-policy", "Fail", "--webhook-timeout", "5") as op:
        yield op


def _namespace(localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient, kube_as: Any,
               ldap_info: dict[str, str], prefix: str, **policy: Any) -> Gate:
    g = Gate(localenv, admin_client, kube_as, unique(prefix))
    g.create_namespace()
    g.ldap_secrets(ldap_info)
    g.admin.create(ldap_policy(g.ns, ldap_info, **policy))
    wait_until(lambda: g.platform_bindings() == EXPECTED_BINDINGS, timeout=30,
               what=f"RoleBindings from LDAP in {g.ns}")
    return g


@pytest.fixture(scope="module")
def expiring(gate_operator: OperatorProcess, localenv: local.LocalEnv,
             admin_client: kubernetes.client.ApiClient, kube_as: Any,
             ldap_info: dict[str, str]) -> Iterator[tuple[Gate, float]]:
    """A namespace whose approvals live one minute, approved as early as possible."""
    promotion = {"production": {
        "requiredApprovals": [{"platformRole": "model_approver", "count": 1},
                              {"platformRole": "compliance_reviewer", "count": 1,
                               "whenDataClassification": ["pii", "phi"]}],
        "forbidSelfApproval": True, "approvalTTL": "1m"}}
    g = _namespace(localenv, admin_client, kube_as, ldap_info, "gate-ttl", promotion=promotion)
    g.model("alice", "ttl")
    approved_at = time.time()
    g.counted(g.approve("carol", "ttl"))
    g.counted(g.approve("dave", "ttl"))
    wait_until(lambda: "ttl" in _ledger_releases(g), timeout=30, what="the ledger lists ttl's release")
    yield g, approved_at
    g.delete_namespace()


@pytest.fixture(scope="module")
def gate(expiring: tuple[Gate, float], localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
         kube_as: Any, ldap_info: dict[str, str]) -> Iterator[Gate]:
    g = _namespace(localenv, admin_client, kube_as, ldap_info, "gate")
    yield g
    g.delete_namespace()


def release(g: Gate, name: str, version: str = "2", **kw: Any) -> dict[str, Any]:
    """A model alice owns, approved by carol and dave, promoted by bob, rolled out."""
    g.model("alice", name, version=version, **kw)
    g.counted(g.approve("carol", name))
    g.counted(g.approve("dave", name))
    g.change("bob", name, stage="production")
    g.rolled_out(name, version)
    return g.get(name)


@pytest.fixture(scope="module")
def released(gate: Gate) -> dict[str, Any]:
    """One approved production release that the attacks below try to change (none may)."""
    return release(gate, "released")


def kubectl_mlsec(g: Gate, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl mlsec …` through the real kubectl (plugin found on PATH), as ``user``."""
    env = {**os.environ, "KUBECONFIG": str(g.localenv.kubeconfig),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(g.localenv.bin("kubectl")), "mlsec", *args, "-n", g.ns, "--context", user],
                          capture_output=True, text=True, env=env, timeout=60)


def audit_records(op: OperatorProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in op.audit_file.read_text().splitlines() if line]


# --- registration -------------------------------------------------------------------------------


def test_webhooks_are_registered_for_mlsec_io_only(gate_operator: OperatorProcess,
                                                   localenv: local.LocalEnv) -> None:
    configs = webhook_configs(localenv)
    names = {kind: sorted(h["name"] for h in cfg["webhooks"]) for kind, cfg in configs.items()}
    assert names == {
        "mutatingwebhookconfiguration": ["approval-stamp.mlsec.io", "deployment-stamp.mlsec.io"],
        "validatingwebhookconfiguration": [
            "approval-check.mlsec.io", "deployment-gate.mlsec.io",
            "status-guard-mlsecuritypolicies.mlsec.io", "status-guard-modelapprovals.mlsec.io",
            "status-guard-modeldeployments.mlsec.io"],
    }
    for cfg in configs.values():
        for hook in cfg["webhooks"]:
            assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 5
            assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:")
            assert hook["clientConfig"]["caBundle"]
            assert hook["matchConditions"][0] == {  # the operator never depends on its own webhook
                "name": "not-the-operator",
                "expression": f'request.userInfo.username != "{OPERATOR}"'}
            # the gate decides promotions only: other writes skip the hop
            only_production = [{"name": "production", "expression": "object.spec.stage == 'production'"}]
            gate = hook["name"].startswith("deployment-gate.")
            assert hook["matchConditions"][1:] == (only_production if gate else [])
            assert {g for rule in hook["rules"] for g in rule["apiGroups"]} == {"mlsec.io"}
    # This API server serves MutatingAdmissionPolicy, so the default (auto) would register Ignore.
    from mlsec.clients.kube import Kube, load_api_client

    kube = Kube(load_api_client(str(localenv.kubeconfig), "admin"))
    assert webhook.decide_failure_policy("auto", lambda: webhook.native_policies_served(kube)) == "Ignore"


def _webhook_requests(op: OperatorProcess) -> dict[str, float]:
    found = re.findall(r'^mlsec_webhook_requests_total\{protocol="([^"]+)"\} (\S+)$', op.metrics(), re.M)
    return {protocol: float(value) for protocol, value in found}


def test_the_api_server_calls_the_webhooks_over_http2(gate: Gate, gate_operator: OperatorProcess) -> None:
    """kube-apiserver negotiates HTTP/2 (ALPN) and sends every call over it: no TLS handshake per
    call beyond the 25 idle HTTP/1.1 connections it would keep (bench/webhook_latency.py)."""
    before = _webhook_requests(gate_operator)
    gate.model("alice", "h2")  # the requester stamp (mutating webhook)
    err = gate.refused(lambda: gate.change("bob", "h2", stage="production"))  # the gate
    assert "promotion of h2 version 3 to production: needs" in err.message
    after = _webhook_requests(gate_operator)
    assert after["h2"] - before.get("h2", 0) >= 2
    assert after.get("http/1.1", 0) == before.get("http/1.1", 0)


# --- the happy path -------------------------------------------------------------------------------


def test_approved_by_lead_and_compliance_then_promoted_by_bob(
        gate: Gate, gate_operator: OperatorProcess, tmp_path: Path) -> None:
    gate.model("alice", "happy", version="3")
    for user in ("carol", "dave"):
        done = kubectl_mlsec(gate, user, "approve", "happy", "--version", "3", "--comment", "validated")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{user} approved happy version 3 (sha256:")
    approvals = gate.admin.list(r.API, "ModelApproval", gate.ns)
    for a in approvals:
        gate.counted(a)
    assert sorted(a["spec"]["approvedBy"] for a in approvals) == ["carol", "dave"]

    promoted = kubectl_mlsec(gate, "bob", "promote", "happy", "--to", "production", "--wait", "30")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "Ready=True" in promoted.stdout
    md = gate.get("happy")
    assert md["metadata"]["annotations"]["mlsec.io/requested-by"] == "bob"
    dep = gate.rolled_out("happy", "3")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == md["spec"]["image"]
    assert md["status"]["stage"] == "production" and md["status"]["requestedBy"] == "bob"
    shown = kubectl_mlsec(gate, "bob", "status", "happy").stdout
    assert "approvals counted (2)" in shown and "carol (model_approver)" in shown
    assert "dave (compliance_reviewer)" in shown and "missing:     nothing" in shown

    records = audit_records(gate_operator)
    allowed = [x for x in records if x["event_type"] == "PROMOTION_ALLOWED"
               and x["resource"]["namespace"] == gate.ns and x["resource"]["name"] == "happy"]
    webhook_record = next(x for x in allowed if x["action"]["details"].get("layer") == "admission-webhook")
    assert webhook_record["actor"]["user_id"] == "bob"
    assert sorted(webhook_record["action"]["details"]["approvedBy"]) == ["carol", "dave"]
    assert webhook_record["context"]["request_id"]  # the AdmissionReview uid

    # The audit file verifies; without one of its lines it does not, and the line is named.
    ok = subprocess.run([sys.executable, "-m", "mlsec", "audit", "verify", str(gate_operator.audit_file)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stdout + ok.stderr
    lines = gate_operator.audit_file.read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    cut = tmp_path / "audit-cut.jsonl"
    cut.write_text("".join(lines[:1] + lines[2:]))
    broken = subprocess.run([sys.executable, "-m", "mlsec", "audit", "verify", str(cut)],
                            capture_output=True, text=True)
    assert broken.returncode == 1
    assert broken.stdout.startswith("BROKEN at line 2: seq 3 where 2 was expected"), broken.stdout


# --- the attack catalogue -------------------------------------------------------------------------


def test_self_approval_by_the_requester_does_not_count(gate: Gate) -> None:
    # carol may also edit ModelDeployments here
    gate.grant("carol", "mlsec-model-deployer", "patch", "modeldeployments.mlsec.io")
    gate.model("alice", "selfreq")
    gate.counted(gate.approve("carol", "selfreq"))
    gate.counted(gate.approve("dave", "selfreq"))
    err = gate.refused(lambda: gate.change("carol", "selfreq", stage="production"))
    assert err.status == 403
    assert "promotion of selfreq version 3 to production: needs 1 approval from model_approver; have 1" \
        in err.message
    assert "by carol: self-approval: carol is the requester" in err.message


def test_approval_by_the_owner_is_refused(gate: Gate) -> None:
    gate.model("bob", "owned", owner="carol")
    gate.observed("owned")  # the approval check reads the owner from the operator's index
    err = gate.refused(lambda: gate.approve("carol", "owned"))
    assert err.status == 403
    assert "self-approval: carol owns owned, and the policy forbids self-approval: another person " \
           "must approve" in err.message


def test_an_approval_cannot_name_someone_else(gate: Gate) -> None:
    md = gate.model("alice", "forged")
    body = {"apiVersion": r.API, "kind": "ModelApproval",
            "metadata": {"name": "forged-by-dave", "namespace": gate.ns},
            "spec": {"modelDeployment": "forged", "version": "3",
                     "imageDigest": md["spec"]["image"].rsplit("@", 1)[1], "decision": "approve",
                     "approvedBy": "dave", "approverGroups": ["compliance"]}}
    created, warnings = gate.with_warnings("carol", "POST",
                                           f"/apis/{r.API}/namespaces/{gate.ns}/modelapprovals", body)
    assert created["spec"]["approvedBy"] == "carol"
    assert created["spec"]["approverGroups"] == ["ml_leads", "system:authenticated"]
    assert any("spec.approvedBy 'dave' was replaced by the authenticated user 'carol'" in w
               for w in warnings), warnings
    gate.counted(created)
    err = gate.refused(lambda: gate.change("bob", "forged", stage="production"))
    assert "needs 1 approval from compliance_reviewer (required for phi models); have 1" in err.message


def test_an_approver_without_the_required_role_is_refused(gate: Gate) -> None:
    gate.model("alice", "norole")
    gate.role("approval-writer", [
        {"apiGroups": ["mlsec.io"], "resources": ["modelapprovals"], "verbs": ["create"]},
        {"apiGroups": ["mlsec.io"], "resources": ["modeldeployments"], "verbs": ["get"]}])
    gate.grant("erin", "approval-writer", "create", "modelapprovals.mlsec.io")
    err = gate.refused(lambda: gate.approve("erin", "norole"))
    assert err.status == 403
    assert "erin holds no platform role that approves norole for production (needs model_approver or " \
           "compliance_reviewer (for phi models); erin has: none)" in err.message


def test_a_digest_change_after_approval_needs_new_approvals(gate: Gate, released: dict[str, Any]) -> None:
    image = released["spec"]["image"].rsplit("@", 1)[0] + "@" + r.digest("a different build")
    err = gate.refused(lambda: gate.change("bob", "released", image=image))
    assert f"promotion of released version 2 to production: {PHI_RULES}; have 0" in err.message
    assert "bound to a different image digest" in err.message
    gate.rolled_out("released", "2")  # still the approved release


def test_a_version_change_in_production_needs_new_approvals(gate: Gate, released: dict[str, Any]) -> None:
    image = released["spec"]["image"].rsplit("@", 1)[0] + "@" + r.digest("v3")
    err = gate.refused(lambda: gate.change("bob", "released", version="3", image=image))
    assert f"promotion of released version 3 to production: {PHI_RULES}; have 0" in err.message
    assert "bound to version 2, release is version 3" in err.message


def test_one_of_two_required_approvals_is_not_enough(gate: Gate) -> None:
    gate.model("alice", "half")
    gate.counted(gate.approve("dave", "half"))
    err = gate.refused(lambda: gate.change("bob", "half", stage="production"))
    assert "promotion of half version 3 to production: needs 1 approval from model_approver; have 1" \
        in err.message


def test_compliance_approval_missing_for_a_phi_model(gate: Gate) -> None:
    gate.model("alice", "phi")
    gate.counted(gate.approve("carol", "phi"))
    err = gate.refused(lambda: gate.change("bob", "phi", stage="production"))
    assert "promotion of phi version 3 to production: needs 1 approval from compliance_reviewer " \
           "(required for phi models); have 1" in err.message
    # The same model classified internal needs no compliance review.
    gate.change("alice", "phi", dataClassification="internal")
    gate.change("bob", "phi", stage="production")


def test_a_reject_blocks(gate: Gate) -> None:
    gate.model("alice", "rejected")
    gate.counted(gate.approve("carol", "rejected"))
    gate.counted(gate.approve("dave", "rejected", decision="reject", comment="no DPIA on file"))
    err = gate.refused(lambda: gate.change("bob", "rejected", stage="production"))
    assert "rejected by dave (compliance_reviewer)" in err.message


def test_approvals_cannot_be_edited(gate: Gate) -> None:
    gate.model("alice", "frozen")
    approval = gate.approve("carol", "frozen")
    name = approval["metadata"]["name"]
    by_carol = gate.refused(lambda: gate.kube_as("carol").patch(
        r.API, "ModelApproval", gate.ns, name, {"spec": {"version": "4"}}))
    assert by_carol.status == 403 and 'cannot patch resource "modelapprovals"' in by_carol.message
    by_admin = gate.refused(lambda: gate.admin.patch(r.API, "ModelApproval", gate.ns, name,
                                                     {"spec": {"approvedBy": "dave"}}))
    assert "spec is immutable: approvals cannot be edited, create a new one" in by_admin.message


def test_faked_status_is_refused_and_never_causes_a_rollout(gate: Gate, localenv: local.LocalEnv) -> None:
    md = release(gate, "faked")
    gate.role("status-writer", [{"apiGroups": ["mlsec.io"],
                                 "resources": ["modeldeployments/status", "modelapprovals/status"],
                                 "verbs": ["get", "patch", "update"]}])
    gate.grant("bob", "status-writer", "patch", "modeldeployments.mlsec.io/status")
    fake = {"conditions": [{"type": "PromotionApproved", "status": "True", "reason": "Approved",
                            "message": "approved by everyone", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "approvals": [{"name": "x", "approver": "carol", "decision": "approve", "counted": True,
                           "reason": "trust me"}]}
    for user in ("bob", "admin"):
        err = gate.refused(lambda u=user: gate.kube_as(u).patch_status(r.API, "ModelDeployment", gate.ns,
                                                                       "faked", fake))
        assert f"the status of ModelDeployment faked is written only by the operator ({OPERATOR}); " \
               f"{user} may not change it" in err.message

    # Both admission layers bypassed (the webhook configuration removed, no native policies): a
    # faked status and an unapproved version still do not roll out.
    saved = yaml.safe_load(localenv.kubectl("get", "validatingwebhookconfiguration", "mlsec.io",
                                            "-o", "yaml").stdout)
    localenv.kubectl("delete", "validatingwebhookconfiguration", "mlsec.io")
    try:
        gate.admin.patch_status(r.API, "ModelDeployment", gate.ns, "faked", fake)
        gate.admin.patch(r.API, "ModelDeployment", gate.ns, "faked", {"spec": {
            "version": "9", "image": md["spec"]["image"].rsplit("@", 1)[0] + "@" + r.digest("unapproved")}})
    finally:
        saved["metadata"] = {"name": "mlsec.io"}
        localenv.kubectl("create", "-f", "-", input=yaml.safe_dump(saved))

    def held_back() -> dict[str, Any] | None:
        obj = gate.get("faked")
        return obj if r.has_condition(obj, "PromotionApproved", "False", "ApprovalsMissing") else None

    obj = wait_until(held_back, timeout=30, what="the reconcile holds the unapproved release back")
    assert isinstance(obj, dict)
    assert r.has_condition(obj, "Ready", "False", "PromotionBlocked")
    assert not any(a.get("name") == "x" for a in obj["status"].get("approvals") or [])  # recomputed
    dep = gate.admin.get("apps/v1", "Deployment", gate.ns, "faked")
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == md["spec"]["image"]  # the approved release keeps running
    assert {"name": "MODEL_VERSION", "value": "2"} in container["env"]


def test_a_deployer_cannot_edit_or_scale_the_deployment(gate: Gate, released: dict[str, Any]) -> None:
    bob = gate.kube_as("bob")
    err = gate.refused(lambda: bob.patch("apps/v1", "Deployment", gate.ns, "released",
                                         {"spec": {"template": {"spec": {"containers": [
                                             {"name": "model", "image": "evil.example.com/x:latest"}]}}}}))
    assert err.status == 403 and 'User "bob" cannot patch resource "deployments"' in err.message
    scale = kubernetes.client.AppsV1Api(bob.api)
    with pytest.raises(kubernetes.client.ApiException) as caught:
        scale.patch_namespaced_deployment_scale("released", gate.ns, {"spec": {"replicas": 0}})
    assert caught.value.status == 403
    assert 'cannot patch resource "deployments/scale"' in json.loads(caught.value.body)["message"]


def test_stage_skipping_is_refused(gate: Gate) -> None:
    gate.model("alice", "skip", stage="development")
    err = gate.refused(lambda: gate.change("bob", "skip", stage="production"))
    assert "cannot move from development to production directly; promote through staging" in err.message


def test_a_developer_cannot_promote(gate: Gate) -> None:
    gate.model("alice", "devpromo")
    gate.counted(gate.approve("carol", "devpromo"))
    gate.counted(gate.approve("dave", "devpromo"))
    err = gate.refused(lambda: gate.change("alice", "devpromo", stage="production"))
    assert "alice is a model_developer: only a model_deployer may move a ModelDeployment to production" \
        in err.message


def test_the_requester_cannot_be_forged(gate: Gate) -> None:
    md = r.model(gate.ns, "who")
    md["metadata"]["annotations"] = {"mlsec.io/requested-by": "carol"}
    created = gate.kube_as("alice").create(md)
    assert created["metadata"]["annotations"]["mlsec.io/requested-by"] == "alice"
    labelled = gate.kube_as("bob").patch(r.API, "ModelDeployment", gate.ns, "who", {"metadata": {
        "labels": {"team": "radiology"}, "annotations": {"mlsec.io/requested-by": "dave"}}})
    assert labelled["metadata"]["annotations"]["mlsec.io/requested-by"] == "alice"  # not a release change


def test_audit_enforcement_warns_and_records(
        gate_operator: OperatorProcess, localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
        kube_as: Any, ldap_info: dict[str, str]) -> None:
    g = _namespace(localenv, admin_client, kube_as, ldap_info, "gate-audit", enforcement="audit")
    try:
        g.model("alice", "lenient")
        moved, warnings = g.with_warnings(
            "bob", "PATCH", f"/apis/{r.API}/namespaces/{g.ns}/modeldeployments/lenient",
            {"spec": {"stage": "production"}}, content_type="application/merge-patch+json")
        assert moved["spec"]["stage"] == "production"
        assert any(w.startswith("enforcement is audit, so this is allowed, but: promotion of lenient "
                                f"version 3 to production: {PHI_RULES}; have 0") for w in warnings), warnings
        warned = [x for x in audit_records(gate_operator) if x["event_type"] == "PROMOTION_WARNED"
                  and x["resource"]["namespace"] == g.ns]
        assert warned and warned[0]["actor"]["user_id"] == "bob"
        assert warned[0]["result"]["status"] == "WARNING"
    finally:
        g.delete_namespace()


def _ledger_releases(g: Gate) -> dict[str, Any]:
    ledger = g.admin.get(r.API, "PromotionLedger", g.ns, "promotion-ledger") or {}
    return unpack_releases(str((ledger.get("spec") or {}).get("releases") or ""))


def test_expired_approvals_do_not_count(expiring: tuple[Gate, float]) -> None:
    """In the webhook's decision at once, and in the ledger (the native gate's input) by the
    operator's expiry pass (every EXPIRY_INTERVAL seconds: the API server's CEL has no clock)."""
    g, approved_at = expiring
    time.sleep(max(0.0, approved_at + 61 - time.time()))
    err = g.refused(lambda: g.change("bob", "ttl", stage="production"))
    assert f"promotion of ttl version 3 to production: {PHI_RULES}; have 0" in err.message
    assert "by carol: expired at" in err.message and "by dave: expired at" in err.message
    wait_until(lambda: "ttl" not in _ledger_releases(g), timeout=EXPIRY_INTERVAL + 15,
               what="the expired release dropped from the ledger")


def test_the_gate_fails_closed_when_the_operator_is_down(gate: Gate, gate_operator: OperatorProcess) -> None:
    """Last: stops the module's operator. With failurePolicy Fail, writes to mlsec.io objects are
    refused while no replica serves the webhook; nothing outside mlsec.io is affected."""
    gate.model("alice", "outage")
    gate_operator.stop()
    err = gate.refused(lambda: gate.change("alice", "outage", replicas=3))
    assert "failed calling webhook" in err.message and "deployment-stamp.mlsec.io" in err.message
    gate.admin.create({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "unrelated", "namespace": gate.ns}, "data": {"k": "v"}})

