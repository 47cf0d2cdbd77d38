"""People's Vault policies (pure builder) and the global sync against an in-memory Vault."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsec.api import MLSecurityPolicy, ModelDeployment, PlatformRole
from mlsec.builders import people as p
from mlsec.clients.vault import VaultRequestError
from mlsec.handlers import people as step

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"
KV = "secret/data/ml-models/mri-classifier"
KV2 = "secret/data/ml-models/ct-segmenter"


def policy(namespace: str = "radiology-ml", mount: str | None = "ldap",
           mappings: list[tuple[str, str]] | None = None) -> MLSecurityPolicy:
    body = yaml.safe_load((SAMPLES / "policy-hospital.yaml").read_text())
    body["metadata"] = {"name": "default", "namespace": namespace}
    if mount is None:
        body["spec"]["vault"].pop("ldapAuthMount", None)
    else:
        body["spec"]["vault"]["ldapAuthMount"] = mount
    if mappings is not None:
        body["spec"]["roleMappings"] = [
            {"ldapGroup": f"cn={g},ou=groups,dc=hospital,dc=com", "platformRole": r} for g, r in mappings]
    return MLSecurityPolicy.model_validate(body)


def model(name: str, stage: str, path: str, namespace: str = "radiology-ml") -> ModelDeployment:
    body = yaml.safe_load((SAMPLES / "modeldeployment-mri-classifier.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(model=name, stage=stage, secrets=[
        {"name": "hyperparams", "path": path},
        {"name": "db", "path": "database/creds/mri-preprocessing-role"}])
    return ModelDeployment.model_validate(body)


MODELS = [model("mri-classifier", "staging", KV), model("ct-segmenter", "production", KV2)]

DEVELOPER = """\
# Managed by mlsec-operator: platform role model_developer in namespace radiology-ml:
# create/update/read on models not in production, read in production.
# Rewritten on every change of the namespace's models and roleMappings.

path "secret/data/ml-models/ct-segmenter" {
  capabilities = ["read"]
}

path "secret/data/ml-models/mri-classifier" {
  capabilities = ["create", "read", "update"]
}
"""


def test_developer_policy_is_exact_and_freezes_production() -> None:
    assert p.people_policy_hcl("radiology-ml", PlatformRole.MODEL_DEVELOPER, MODELS) == DEVELOPER


def test_role_grants() -> None:
    dep = p.role_grants(PlatformRole.MODEL_DEPLOYER, MODELS)
    assert dep == {KV2: ["read"], KV: ["read"]}
    meta = {"secret/metadata/ml-models/ct-segmenter": ["list", "read"],
            "secret/metadata/ml-models/mri-classifier": ["list", "read"]}
    assert p.role_grants(PlatformRole.MODEL_APPROVER, MODELS) == meta
    assert p.role_grants(PlatformRole.COMPLIANCE_REVIEWER, MODELS) == meta
    assert p.role_grants(PlatformRole.AUDITOR, MODELS) == {}
    # database credentials and anything not kv v2 never reach people
    for role in p.PEOPLE_ROLES:
        assert "database/" not in p.people_policy_hcl("ns", role, MODELS)


def test_a_path_shared_with_a_production_model_is_frozen() -> None:
    shared = [model("a", "staging", KV), model("b", "production", KV)]
    assert p.role_grants(PlatformRole.MODEL_DEVELOPER, shared) == {KV: ["read"]}


def test_names_and_ownership() -> None:
    assert p.people_policy_name("radiology-ml", "model_developer") == "mlsec-radiology-ml-model_developer"
    assert p.is_people_policy("mlsec-a-b-compliance_reviewer")
    assert p.namespace_of_people_policy("mlsec-a-b-compliance_reviewer") == "a-b"
    assert not p.is_people_policy("mlsec-radiology-ml-mri-classifier")  # a model's policy
    assert not p.is_people_policy("team-readers")
    assert p.group_cn("cn=Data_Scientists,ou=groups,dc=hospital,dc=com") == "data_scientists"
    assert p.merge_group_policies(["team", "mlsec-x-model_developer"], ["mlsec-y-model_developer"]) == [
        "mlsec-y-model_developer", "team"]


def test_desired_unions_groups_across_namespaces_and_skips_unmanaged() -> None:
    a = policy("ns-a", mappings=[("data_scientists", "model_developer"), ("auditors", "auditor")])
    b = policy("ns-b", mappings=[("data_scientists", "model_deployer")])
    c = policy("ns-c", mount=None, mappings=[("data_scientists", "model_approver")])
    state = p.desired([a, b, c], {"ns-a": [model("m", "staging", KV, "ns-a")]})
    assert state.groups == {"ldap": {"data_scientists": frozenset(
        {"mlsec-ns-a-model_developer", "mlsec-ns-b-model_deployer"})}}
    assert sorted(state.policies) == ["mlsec-ns-a-model_developer", "mlsec-ns-b-model_deployer"]
    assert state.namespaces == frozenset({"ns-a", "ns-b"})
    assert 'path "secret/data/ml-models/mri-classifier"' in state.policies["mlsec-ns-a-model_developer"]
    assert "path" not in state.policies["mlsec-ns-b-model_deployer"].split("\n", 2)[2]  # no models there


def test_what_the_sync_keeps_of_a_listed_model_gives_the_same_policies() -> None:
    """The sync reduces each listed model to its kv paths and production flag (KvUse): the
    policies are those the whole models give; deleted, invalid and kv-less models grant nothing."""
    pols = [policy("radiology-ml", mappings=[(f"g{r}", r) for r in ("model_developer", "model_deployer",
                                                                    "model_approver")])]
    promoted = model("promoted", "staging", KV2).model_dump(mode="json", by_alias=True, exclude_none=True)
    promoted["status"] = {"stage": "production"}  # promoted by status, spec not yet
    bodies = [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in MODELS] + [promoted]
    uses = [step._kv_use(b) for b in bodies]
    assert all(u is not None for u in uses)
    assert uses[-1] == p.KvUse("radiology-ml", (KV2,), True)
    whole = p.desired(pols, {"radiology-ml": [ModelDeployment.model_validate(b) for b in bodies]})
    assert p.desired(pols, {"radiology-ml": [u for u in uses if u]}) == whole
    gone = {**bodies[0], "metadata": {**bodies[0]["metadata"], "deletionTimestamp": "2026-12-04T00:00:00Z"}}
    invalid = {**bodies[0], "spec": {**bodies[0]["spec"], "stage": "nowhere"}}
    no_kv = {**bodies[0], "spec": {**bodies[0]["spec"], "secrets": []}}
    assert [step._kv_use(b) for b in (gone, invalid, no_kv)] == [None, None, None]


class MemoryVault:
    address = "http://vault"

    def __init__(self) -> None:
        self.policies: dict[str, str] = {"default": "", "team-readers": "# by hand"}
        self.groups: dict[str, dict[str, list[str]]] = {"ldap": {}}
        self.writes = 0

    def read_policy(self, name: str) -> str | None:
        return self.policies.get(name)

    def write_policy(self, name: str, text: str) -> None:
        self.writes += 1
        self.policies[name] = text

    def delete_policy(self, name: str) -> None:
        self.writes += 1
        self.policies.pop(name, None)

    def list_policies(self) -> list[str]:
        return sorted(self.policies)

    def list_ldap_groups(self, mount: str) -> list[str]:
        if mount not in self.groups:
            raise VaultRequestError("list", f"auth/{mount}/groups", 400, "no handler")
        return sorted(self.groups[mount])

    def read_ldap_group(self, mount: str, name: str) -> list[str] | None:
        got = self.groups[mount].get(name)
        return list(got) if got is not None else None

    def write_ldap_group(self, mount: str, name: str, policies: list[str]) -> None:
        self.writes += 1
        self.groups[mount][name] = list(policies)


def run(v: MemoryVault, pols: list[MLSecurityPolicy], **kw: Any) -> step.SyncReport:
    return step.sync(v, pols, {}, **kw)  # type: ignore[arg-type]


def test_sync_is_idempotent_keeps_hand_added_and_removes_only_its_own() -> None:
    v = MemoryVault()
    a = policy("ns-a", mappings=[("data_scientists", "model_developer")])
    b = policy("ns-b", mappings=[("data_scientists", "model_developer"),
                                 ("compliance", "compliance_reviewer")])
    v.groups["ldap"]["data_scientists"] = ["team-readers"]
    first = run(v, [a, b])
    assert first.policies_written == ["mlsec-ns-a-model_developer", "mlsec-ns-b-compliance_reviewer",
                                      "mlsec-ns-b-model_developer"]
    assert v.groups["ldap"]["data_scientists"] == [
        "mlsec-ns-a-model_developer", "mlsec-ns-b-model_developer", "team-readers"]
    writes = v.writes
    assert not run(v, [a, b]).changed and v.writes == writes
    # ns-b's policy deleted: only its names go, the hand-added one stays
    gone = run(v, [a])
    assert gone.policies_removed == ["mlsec-ns-b-compliance_reviewer", "mlsec-ns-b-model_developer"]
    assert v.groups["ldap"]["data_scientists"] == ["mlsec-ns-a-model_developer", "team-readers"]
    assert v.groups["ldap"]["compliance"] == []
    assert "team-readers" in v.policies and "default" in v.policies
    # the last mapping gone, mount still remembered: the entries are cleaned
    run(v, [], mounts=["ldap"])
    assert v.groups["ldap"]["data_scientists"] == ["team-readers"]
    assert not [n for n in v.policies if n.startswith("mlsec-")]


def test_scope_leaves_other_namespaces_alone() -> None:
    v = MemoryVault()
    v.policies["mlsec-other-model_developer"] = "# another operator's"
    v.groups["ldap"]["data_scientists"] = ["mlsec-other-model_developer"]
    run(v, [policy("ns-a", mappings=[("data_scientists", "model_developer")])], scope=["ns-a"])
    assert "mlsec-other-model_developer" in v.policies
    assert v.groups["ldap"]["data_scientists"] == ["mlsec-ns-a-model_developer",
                                                   "mlsec-other-model_developer"]


def test_full_sync_for_200_groups_is_fast() -> None:
    v = MemoryVault()
    pols = [policy(f"ns-{i}", mappings=[(f"group-{i}", "model_developer"),
                                        (f"group-{i + 100}", "model_deployer")]) for i in range(100)]
    started = time.monotonic()
    report = run(v, pols)
    assert len(report.groups_written) == 200
    assert not run(v, pols).changed
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("devices", "enabled"), [({"file/": {"type": "file"}}, True), ({}, False)])
def test_audit_check_and_blocker(monkeypatch: pytest.MonkeyPatch, devices: dict[str, Any],
                                 enabled: bool) -> None:
    class AuditVault:
        def list_audit_devices(self) -> dict[str, Any]:
            return devices

    got, message = step.check_audit_devices(AuditVault())  # type: ignore[arg-type]
    assert got is enabled
    monkeypatch.setattr(step, "check_audit_devices", lambda *a, **k: (got, message))
    reason = step.audit_blocker("radiology-ml", policy())
    assert (reason == "") is enabled
    if not enabled:
        assert "no audit device" in reason and "requireAuditDevice" in reason
    body = policy().model_dump(by_alias=True, mode="json")
    body["spec"]["vault"]["requireAuditDevice"] = False
    assert step.audit_blocker("radiology-ml", MLSecurityPolicy.model_validate(body)) == ""


def test_the_sync_reads_a_compact_body_of_each_model() -> None:
    from mlsec.api import ModelDeployment
    from mlsec.handlers import people as handler

    ready = {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
             "lastTransitionTime": "2026-12-03T00:00:00Z"}
    image = "registry.hospital.com/ml/mri@sha256:" + "a" * 64
    body = {"apiVersion": "mlsec.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "mri", "namespace": "radiology", "uid": "u1", "generation": 4,
                         "managedFields": [{"manager": "kubectl"}] * 20,
                         "annotations": {"mlsec.io/last-handled-configuration": "{...}" * 100}},
            "spec": {"model": "mri", "version": "3", "image": image, "stage": "staging",
                     "dataClassification": "phi", "owner": "alice",
                     "secrets": [{"name": "weights", "path": "secret/data/ml-models/mri"}]},
            "status": {"stage": "production", "conditions": [ready]}}
    compact = handler._what_sync_reads(body)
    assert "managedFields" not in compact["metadata"] and "annotations" not in compact["metadata"]
    assert compact["status"] == {"stage": "production"}
    full, small = ModelDeployment.model_validate(body), ModelDeployment.model_validate(compact)
    assert small.spec == full.spec and small.metadata.namespace == "radiology"
    assert small.status is not None and full.status is not None and small.status.stage == full.status.stage


def test_events_wake_the_sync_only_when_what_it_reads_changed_and_deletions_leave_nothing() -> None:
    def event(stage: str, *, secrets: list[dict[str, str]] | None = None, replicas: int = 1,
              deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "m", "namespace": "ns-people"}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
        return {"metadata": meta, "spec": {"stage": stage, "replicas": replicas,
                                           "secrets": secrets or []}}

    def woke(body: dict[str, Any], type_: str | None = "MODIFIED") -> bool:
        step._wake.clear()
        step._observe("ModelDeployment", body, type_)
        return step._wake.is_set()

    step._fingerprints.clear()
    kv = [{"name": "a", "path": "secret/data/ml-models/m"}]
    assert woke(event("staging", secrets=kv))  # first sight
    assert not woke(event("staging", secrets=kv, replicas=3))  # nothing the sync reads
    assert woke(event("production", secrets=kv))
    assert woke(event("production"))  # its kv paths went
    assert woke(event("production", deleting=True))
    assert step._fingerprints == {"ModelDeployment": {}}  # nothing kept of it, not even its namespace
    assert not woke(event("production"), "DELETED")  # already forgotten
    assert step._fingerprints == {"ModelDeployment": {}}
