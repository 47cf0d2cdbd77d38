"""The compliance Report builder: one result per model and rule, bounded, stable when nothing changed."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from report_cases import NOW, NS, POLICY_UID, cond, model, policy, results_of, synced_status

from mlsec.builders import report as rb

CRD = Path.home() / ".cache" / "mlsec" / "openreports-api-v0.2.1" / "reports.yaml"


def build(pol: rb.ObjectFacts | None = None, models: list[rb.ObjectFacts] | None = None,
          previous: dict[str, Any] | None = None, now: Any = NOW) -> dict[str, Any]:
    return rb.build_report(NS, pol or policy(), models if models is not None else [model()], previous, now)


# --- the object -------------------------------------------------------------------------------------


def test_report_identity_owner_and_summary() -> None:
    report = build(models=[model("a"), model("b", image="registry.hospital.com/ml/b:3")])
    assert report["apiVersion"] == "openreports.io/v1alpha1" and report["kind"] == "Report"
    meta = report["metadata"]
    assert (meta["name"], meta["namespace"]) == ("mlsec", NS)
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "mlsec-operator"
    assert meta["ownerReferences"] == [{"apiVersion": "mlsec.io/v1alpha1", "kind": "MLSecurityPolicy",
                                        "name": "default", "uid": POLICY_UID, "controller": True}]
    assert report["source"] == "mlsec"
    assert report["summary"] == rb.summarize(report["results"])
    assert report["summary"]["fail"] == 1
    assert sum(report["summary"].values()) == len(report["results"])


def test_results_name_rule_subject_and_timestamp() -> None:
    r = results_of(build(), "mri-classifier")[rb.RULE_REQUIRE_DIGEST]
    assert r["policy"] == "default" and r["category"] == "Supply chain" and r["severity"] == "high"
    assert r["resources"] == [{"apiVersion": "mlsec.io/v1alpha1", "kind": "ModelDeployment",
                               "name": "mri-classifier", "namespace": NS, "uid": "uid-mri-classifier"}]
    assert r["timestamp"] == {"seconds": int(NOW.timestamp()), "nanos": 0}


@pytest.mark.skipif(not CRD.exists(), reason="OpenReports CRD not fetched (mlsec local build)")
def test_report_fits_the_crd_schema() -> None:
    """Every field we write exists in the CRD (a structural schema would silently prune others)."""
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def check(value: Any, sch: dict[str, Any], path: str) -> None:
        if "enum" in sch:
            assert value in sch["enum"], path
        if sch.get("type") == "object" and isinstance(value, dict):
            props = sch.get("properties")
            for k in sch.get("required", []):
                assert k in value, f"{path}.{k} required"
            for k, v in value.items():
                if props is not None:
                    assert k in props, f"{path}.{k} not in the schema"
                    check(v, props[k], f"{path}.{k}")
                elif "additionalProperties" in sch:
                    check(v, sch["additionalProperties"], f"{path}.{k}")
        if sch.get("type") == "array":
            for i, item in enumerate(value):
                check(item, sch["items"], f"{path}[{i}]")
        if sch.get("type") == "integer":
            assert isinstance(value, int), path
        if sch.get("type") == "string":
            assert isinstance(value, str), path

    body = {k: v for k, v in build(models=[
        model("a"), model("b", image="nginx:1", vault=True, stage="production",
                          status={"conditions": [cond("Ready", "False", "RolloutBlocked", "x")]})]).items()
            if k != "metadata"}
    check(body, {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "metadata"}},
          "")


# --- rules ---------------------------------------------------------------------------------------------


def test_compliant_model_passes_every_rule() -> None:
    rs = results_of(build(models=[model(vault=True, stage="production")]), "mri-classifier")
    assert {k: v["result"] for k, v in rs.items()} == {
        rb.RULE_ALLOWED_REGISTRIES: "pass", rb.RULE_REQUIRE_DIGEST: "pass", rb.RULE_POD_SECURITY: "pass",
        rb.RULE_MTLS: "pass", rb.RULE_RATE_LIMIT: "pass", rb.RULE_VAULT_ACCESS: "pass",
        rb.RULE_PROMOTION: "pass"}
    assert "mlsec-radiology-ml-mri-classifier" in rs[rb.RULE_VAULT_ACCESS]["message"]
    assert "100 requests/s, burst 200" in rs[rb.RULE_RATE_LIMIT]["message"]


def test_tag_instead_of_digest_fails_with_the_fix() -> None:
    rs = results_of(build(models=[model(image="registry.hospital.com/ml/mri:3")]), "mri-classifier")
    r = rs[rb.RULE_REQUIRE_DIGEST]
    assert r["result"] == "fail"
    assert r["message"] == ("image registry.hospital.com/ml/mri:3 is not pinned by digest: set spec.image to "
                            "registry.hospital.com/ml/mri@sha256:<digest> (images.requireDigest)")
    assert r["properties"] == {"image": "registry.hospital.com/ml/mri:3"}
    assert rs[rb.RULE_ALLOWED_REGISTRIES]["result"] == "pass"


def test_foreign_registry_fails() -> None:
    r = results_of(build(models=[model(image="docker.io/evil/x@sha256:" + "a" * 64)]))[
        rb.RULE_ALLOWED_REGISTRIES]
    assert r["result"] == "fail"
    assert "docker.io/evil/x" in r["message"] and "registry.hospital.com/" in r["message"]


def test_rules_the_policy_does_not_ask_for_are_skipped() -> None:
    pol = policy(images={"allowedRegistries": [], "requireDigest": False},
                 network={"mtls": "STRICT", "allowedPrincipals": []})
    rs = results_of(build(pol, [model(image="nginx")]), "mri-classifier")
    assert rs[rb.RULE_ALLOWED_REGISTRIES]["result"] == "skip"
    assert rs[rb.RULE_REQUIRE_DIGEST]["result"] == "skip"
    assert rs[rb.RULE_RATE_LIMIT]["result"] == "skip"
    assert rs[rb.RULE_MTLS]["message"] == "mTLS STRICT, no caller allowed"


def test_not_applicable_rules_are_left_out() -> None:
    rs = results_of(build(models=[model(vault=False, stage="staging")]), "mri-classifier")
    assert rb.RULE_VAULT_ACCESS not in rs and rb.RULE_PROMOTION not in rs


def test_permissive_mtls_warns() -> None:
    pol = policy(network={"mtls": "PERMISSIVE", "allowedPrincipals": ["cluster.local/ns/a/sa/b"]})
    r = results_of(build(pol), "mri-classifier")[rb.RULE_MTLS]
    assert r["result"] == "warn" and "set network.mtls: STRICT" in r["message"]


def test_missing_children_fail() -> None:
    status = model().status
    status = {**status, "children": {"Deployment": "mri-classifier"}}
    rs = results_of(build(models=[model(status=status)]), "mri-classifier")
    assert rs[rb.RULE_MTLS]["result"] == "fail"
    assert "PeerAuthentication and no AuthorizationPolicy" in rs[rb.RULE_MTLS]["message"]
    assert rs[rb.RULE_RATE_LIMIT]["result"] == "fail"
    assert rs[rb.RULE_POD_SECURITY]["result"] == "pass"


def test_not_rolled_out_skips_workload_rules_with_the_reason() -> None:
    blocked = {"conditions": [cond("Ready", "False", "RolloutBlocked",
                                   "not rolled out, the previous rollout stays: images.requireDigest: …")]}
    rs = results_of(build(models=[model(image="registry.hospital.com/ml/x:1", status=blocked)]))
    for rule in (rb.RULE_POD_SECURITY, rb.RULE_MTLS, rb.RULE_RATE_LIMIT):
        assert rs[rule]["result"] == "skip"
        assert rs[rule]["message"].startswith("not rolled out (RolloutBlocked)")
    assert rs[rb.RULE_REQUIRE_DIGEST]["result"] == "fail"
    fresh = results_of(build(models=[model(status={})]))
    assert fresh[rb.RULE_POD_SECURITY]["message"] == "not reconciled yet"


@pytest.mark.parametrize(("reason", "expected"), [("VaultUnavailable", "error"), ("VaultForbidden", "fail")])
def test_vault_not_ready(reason: str, expected: str) -> None:
    status = model(vault=True).status
    not_ready = cond("VaultReady", "False", reason, "boom")
    status = {**status, "conditions": [*status["conditions"][:3], not_ready]}
    r = results_of(build(models=[model(vault=True, status=status)]))[rb.RULE_VAULT_ACCESS]
    assert r["result"] == expected and r["message"] == f"{reason}: boom"


def test_vault_path_outside_the_allow_list_fails() -> None:
    md = model(vault=True, secrets=[{"name": "x", "path": "secret/data/other/x"}])
    r = results_of(build(models=[md]))[rb.RULE_VAULT_ACCESS]
    assert r["result"] == "fail" and "secret/data/other/x is not in" in r["message"]


def test_production_without_approval_fails() -> None:
    status = model().status
    status = {**status, "conditions": [c if c["type"] != "PromotionApproved" else
                                       cond("PromotionApproved", "False", "ApprovalsMissing",
                                            "production rollout held back: model_approver: 1 more")
                                       for c in status["conditions"]]}
    r = results_of(build(models=[model(stage="production", status=status)]))[rb.RULE_PROMOTION]
    assert r["result"] == "fail" and r["severity"] == "critical"
    assert "model_approver: 1 more" in r["message"]


def test_invalid_model_spec_is_an_error() -> None:
    r = results_of(build(models=[model(replicas=-1)]))[rb.RULE_MODEL_SPEC]
    assert r["result"] == "error" and "spec.replicas" in r["message"]


def test_invalid_policy_is_one_failure() -> None:
    pol = policy()
    pol = rb.ObjectFacts(name=pol.name, uid=pol.uid, spec={**pol.spec, "enforcement": "sometimes"},
                         status=pol.status)
    report = build(pol, [model("a"), model("b")])
    assert [(r["rule"], r["result"]) for r in report["results"]] == [(rb.RULE_POLICY_VALID, "fail")]
    assert "spec.enforcement" in report["results"][0]["message"]


# --- policy-wide rules ---------------------------------------------------------------------------------


def test_ldap_freshness_comes_from_the_operators_last_success_over_the_last_change() -> None:
    """status.ldap.lastChange moves only with a change; an unchanged directory synced a minute ago
    is fresh, however old the last change."""
    later = NOW + timedelta(days=3)
    pol = policy()
    assert results_of(build(pol, now=later))[rb.RULE_LDAP_SYNC]["result"] == "warn"
    known = dataclasses.replace(pol, ldap_synced_at=later - timedelta(minutes=1))
    assert results_of(build(known, now=later))[rb.RULE_LDAP_SYNC]["result"] == "pass"
    stalled = dataclasses.replace(pol, ldap_synced_at=later - timedelta(minutes=12))
    assert results_of(build(stalled, now=later))[rb.RULE_LDAP_SYNC]["result"] == "warn"


def test_ldap_sync_fresh_stale_failing_and_unknown() -> None:
    assert results_of(build())[rb.RULE_LDAP_SYNC]["result"] == "pass"
    # syncInterval 5m: stale after 2 intervals and a minute
    assert results_of(build(now=NOW + timedelta(minutes=10)))[rb.RULE_LDAP_SYNC]["result"] == "pass"
    stale = results_of(build(now=NOW + timedelta(minutes=12)))[rb.RULE_LDAP_SYNC]
    assert stale["result"] == "warn" and "2025-06-01T12:00:00Z" in stale["message"]
    failing = synced_status()
    failing["conditions"] = [cond("LDAPSynced", "False", "LDAPUnavailable",
                                  "cannot reach ldaps://127.0.0.1:1: connection refused; Roles and "
                                  "RoleBindings left unchanged (no successful sync yet); "
                                  "retrying in 20s")]
    r = results_of(build(policy(failing)))[rb.RULE_LDAP_SYNC]
    assert r["result"] == "error" and r["properties"] == {"reason": "LDAPUnavailable"}
    assert "connection refused" in r["message"] and "retrying" not in r["message"]
    assert r["resources"][0]["kind"] == "MLSecurityPolicy" and r["resources"][0]["name"] == "default"
    assert results_of(build(policy({})))[rb.RULE_LDAP_SYNC]["result"] == "skip"


def test_ldap_retry_backoff_is_not_a_change() -> None:
    def failing(delay: int) -> rb.ObjectFacts:
        return policy({"conditions": [cond("LDAPSynced", "False", "LDAPUnavailable",
                                           f"down; retrying in {delay}s")]})
    first = build(failing(10))
    again = build(failing(40), previous=first, now=NOW + timedelta(minutes=1))
    assert not rb.differs(first, again)


@pytest.mark.parametrize(("status", "required", "expected"), [
    ("True", True, "pass"), ("False", True, "fail"), ("False", False, "warn"), (None, True, None)])
def test_vault_audit_device(status: str | None, required: bool, expected: str | None) -> None:
    st = synced_status()
    if status is not None:
        st["conditions"].append(cond("VaultAuditEnabled", status, "NoAuditDevice",
                                     "Vault has no audit device"))
    pol = policy(st)
    pol.spec["vault"]["requireAuditDevice"] = required
    r = results_of(build(pol)).get(rb.RULE_AUDIT_DEVICE)
    assert (r or {}).get("result") == expected


# --- writes only on change -----------------------------------------------------------------------------


def test_recompute_without_change_is_identical() -> None:
    models = [model("a"), model("b", image="registry.hospital.com/ml/b:1")]
    first = build(models=models)
    later = build(models=models, previous=first, now=NOW + timedelta(minutes=5))
    assert later == first
    assert not rb.differs(first, later)


def test_a_changed_result_alone_gets_a_new_timestamp() -> None:
    first = build(models=[model("a"), model("b", image="registry.hospital.com/ml/b:1")])
    later_now = NOW + timedelta(minutes=5)
    fixed = build(models=[model("a"), model("b")], previous=first, now=later_now)
    assert rb.differs(first, fixed)
    before, after = results_of(first, "b"), results_of(fixed, "b")
    assert after[rb.RULE_REQUIRE_DIGEST]["result"] == "pass"
    assert after[rb.RULE_REQUIRE_DIGEST]["timestamp"]["seconds"] == int(later_now.timestamp())
    assert after[rb.RULE_POD_SECURITY]["timestamp"] == before[rb.RULE_POD_SECURITY]["timestamp"]
    assert results_of(fixed, "a") == results_of(first, "a")


def test_differs_sees_foreign_edits_and_owner_changes() -> None:
    report = build()
    assert rb.differs(None, report)
    edited = json.loads(json.dumps(report))
    edited["results"][0]["result"] = "pass" if edited["results"][0]["result"] != "pass" else "fail"
    assert rb.differs(edited, report)
    served = json.loads(json.dumps(report))
    served["metadata"].update(resourceVersion="7", uid="x", managedFields=[{}])
    served["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    assert not rb.differs(served, report)
    served["metadata"]["ownerReferences"][0]["uid"] = "another"
    assert rb.differs(served, report)


def test_what_is_kept_of_a_report_answers_as_the_report_does() -> None:
    """The operator keeps rb.seen(report), not the report: same timestamps, same verdicts."""
    models = [model("a"), model("b", image="registry.hospital.com/ml/b:1")]
    first = build(models=models)
    served = json.loads(json.dumps(first))
    served["metadata"].update(resourceVersion="7", uid="x", managedFields=[{"manager": "m"}])
    kept = rb.seen(served)
    assert kept is not None and len(kept.stamps) == len(first["results"])
    later_now = NOW + timedelta(minutes=5)
    assert build(models=models, previous=kept, now=later_now) == first
    assert not rb.differs(kept, first)
    fixed_models = [model("a"), model("b")]
    fixed = build(models=fixed_models, previous=kept, now=later_now)
    assert fixed == build(models=fixed_models, previous=first, now=later_now)
    assert rb.differs(kept, fixed)
    edited = json.loads(json.dumps(served))
    edited["results"][0]["message"] = "edited by hand"
    owner = json.loads(json.dumps(served))
    owner["metadata"]["ownerReferences"][0]["uid"] = "another"
    unlabeled = json.loads(json.dumps(served))
    unlabeled["metadata"]["labels"] = {}
    for live in (served, edited, owner, unlabeled):
        assert rb.differs(rb.seen(live), first) == rb.differs(live, first)
    assert [rb.differs(rb.seen(x), first) for x in (edited, owner, unlabeled)] == [True, True, True]
    assert rb.seen(None) is None


# --- bounds ------------------------------------------------------------------------------------------------


def test_messages_are_truncated() -> None:
    long = "x" * 5000
    status = {"conditions": [cond("Ready", "False", "RolloutBlocked", long)]}
    report = build(models=[model(status=status)])
    assert all(len(r["message"]) <= rb.MAX_MESSAGE for r in report["results"])


def test_200_models_stay_small() -> None:
    models = [model(f"model-{i:03d}", vault=i % 2 == 0, stage="production" if i % 3 == 0 else "staging")
              for i in range(200)]
    report = build(models=models)
    size = rb.size_bytes(report)
    assert size < 1024 * 1024 and size < rb.MAX_REPORT_BYTES
    assert len(report["results"]) == report["summary"]["pass"] + report["summary"]["skip"] \
        + report["summary"]["fail"] + report["summary"]["warn"] + report["summary"]["error"]
    assert "statusFilter" not in report["configuration"]["limits"]


def test_over_the_bounds_pass_results_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rb, "MAX_RESULTS", 50)
    models = [model(f"m-{i:03d}", image=f"registry.hospital.com/ml/m{i}:1" if i < 10 else None)
              for i in range(100)]
    report = build(models=models)
    kept = report["results"]
    assert len(kept) == 10  # only the failures (the LDAP pass went too)
    assert {r["result"] for r in kept} == {"fail"}
    assert report["configuration"]["limits"]["statusFilter"] == ["fail", "error", "warn"]
    assert report["metadata"]["annotations"][rb.TRUNCATED_ANNOTATION] == str(1 + 100 * 5 - 10)
    assert report["summary"]["fail"] == 10 and report["summary"]["pass"] > 400  # the true counts


def test_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rb, "MAX_REPORT_BYTES", 20_000)
    models = [model(f"m-{i:03d}", image=f"registry.hospital.com/ml/m{i}:1") for i in range(200)]
    report = build(models=models)
    assert rb.size_bytes(report) <= 20_000
    assert 0 < len(report["results"]) < 200


def test_counts_by_rule() -> None:
    report = build(models=[model("a"), model("b", image="registry.hospital.com/ml/b:1")])
    counts = rb.counts_by_rule(report["results"])
    assert counts[(rb.RULE_REQUIRE_DIGEST, "pass")] == 1
    assert counts[(rb.RULE_REQUIRE_DIGEST, "fail")] == 1
    assert counts[(rb.RULE_LDAP_SYNC, "pass")] == 1


def test_kept_stamps_are_the_reports_and_a_wild_timestamp_is_stamped_anew() -> None:
    models = [model("a"), model("b", image="registry.hospital.com/ml/b:1")]
    served = json.loads(json.dumps(build(models=models)))
    served["results"][0]["timestamp"] = {"seconds": 1_700_000_000, "nanos": 123}
    served["results"][1]["timestamp"] = {"seconds": 1 << 70, "nanos": 0}  # no int64: dropped
    kept = rb.seen(served)
    assert kept is not None and isinstance(kept.packed_stamps, bytes)
    first_key = hash(rb._result_key(served["results"][0]))
    assert kept.stamps[first_key] == (hash(rb._outcome(served["results"][0])), 1_700_000_000, 123)
    assert hash(rb._result_key(served["results"][1])) not in kept.stamps
    assert len(kept.stamps) == len(served["results"]) - 1
    later = build(models=models, previous=kept, now=NOW + timedelta(minutes=5))
    assert later["results"][0]["timestamp"] == {"seconds": 1_700_000_000, "nanos": 123}
    assert later["results"][1]["timestamp"]["seconds"] == int((NOW + timedelta(minutes=5)).timestamp())
