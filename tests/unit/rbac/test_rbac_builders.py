"""Platform-role Roles and RoleBindings: least privilege, membership, determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsec.api import MLSecurityPolicy, PlatformRole, RoleMapping
from mlsec.builders.meta import DESIRED_HASH_ANNOTATION, desired_hash
from mlsec.builders.rbac import (
    RULES,
    SELECTOR,
    desired_rbac,
    role,
    role_binding,
    role_members,
    role_name,
    roles_by_user,
)
from mlsec.config.rbac import rules as operator_rules

SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "policy-hospital.yaml"
UID = "0c7a7f0e-3d2b-4b8e-9f59-1d2a3b4c5d6e"
G = "ou=groups,dc=hospital,dc=com"
DS, ENG, LEADS, COMP = (f"cn={c},{G}" for c in ("data_scientists", "ml_engineers", "ml_leads", "compliance"))


def policy() -> MLSecurityPolicy:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["uid"] = UID
    return MLSecurityPolicy.model_validate(body)


def mapping(group: str, role_: str) -> RoleMapping:
    return RoleMapping.model_validate({"ldapGroup": group, "platformRole": role_})


def rules_allow(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


# --- membership ---------------------------------------------------------------------------------


def test_role_members_of_the_hospital_directory() -> None:
    members = role_members({DS: {"alice"}, ENG: {"bob"}, LEADS: {"carol"}, COMP: {"dave"}},
                           policy().spec.role_mappings)
    assert members == {"compliance_reviewer": ["dave"], "model_approver": ["carol"],
                       "model_deployer": ["bob"], "model_developer": ["alice"]}


def test_role_members_unions_groups_of_one_role_and_keeps_empty_roles() -> None:
    mappings = [mapping(DS, "model_developer"), mapping(ENG, "model_developer"),
                mapping(LEADS, "model_approver"), mapping(COMP, "auditor")]
    members = role_members({DS: ["zed", "alice"], ENG: ["alice", "bob"], LEADS: []}, mappings)
    # COMP was not found in LDAP: its role exists, with nobody in it.
    assert members == {"auditor": [], "model_approver": [], "model_developer": ["alice", "bob", "zed"]}


def test_roles_by_user_inverts_role_members() -> None:
    assert roles_by_user({"model_approver": ["carol"], "compliance_reviewer": ["carol", "dave"]}) == {
        "carol": frozenset({"model_approver", "compliance_reviewer"}),
        "dave": frozenset({"compliance_reviewer"}),
    }


# --- least privilege ----------------------------------------------------------------------------


@pytest.mark.parametrize("platform_role", list(PlatformRole))
def test_no_role_gets_secrets_workloads_delete_or_wildcards(platform_role: PlatformRole) -> None:
    for rule in RULES[platform_role]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
        assert "secrets" not in rule["resources"]
        assert not {"apps", "batch"} & set(rule["apiGroups"])
        if rule["apiGroups"] == [""]:
            assert rule["resources"] == ["events"] and rule["verbs"] == ["get", "list", "watch"]


@pytest.mark.parametrize("platform_role", [PlatformRole.MODEL_DEVELOPER, PlatformRole.MODEL_DEPLOYER])
def test_authors_write_model_deployments_but_never_approve(platform_role: PlatformRole) -> None:
    rules = RULES[platform_role]
    for verb in ("get", "list", "watch", "create", "update", "patch"):
        assert rules_allow(rules, "mlsec.io", "modeldeployments", verb)
    assert not rules_allow(rules, "mlsec.io", "modeldeployments/status", "update")
    assert not any("modelapprovals" in r["resources"] for r in rules)
    assert not any("mlsecuritypolicies" in r["resources"] for r in rules)


@pytest.mark.parametrize("platform_role", [PlatformRole.MODEL_APPROVER, PlatformRole.COMPLIANCE_REVIEWER])
def test_reviewers_read_everything_and_create_approvals_only(platform_role: PlatformRole) -> None:
    rules = RULES[platform_role]
    for resource in ("modeldeployments", "modelapprovals", "mlsecuritypolicies"):
        for verb in ("get", "list", "watch"):
            assert rules_allow(rules, "mlsec.io", resource, verb)
    assert rules_allow(rules, "mlsec.io", "modelapprovals", "create")
    writes = {v for r in rules for v in r["verbs"]} - {"get", "list", "watch"}
    assert writes == {"create"}
    assert not rules_allow(rules, "mlsec.io", "modeldeployments", "create")
    assert not rules_allow(rules, "mlsec.io", "modelapprovals/status", "update")  # the stamp is ours


def test_auditor_is_read_only_and_sees_events() -> None:
    rules = RULES[PlatformRole.AUDITOR]
    assert {v for r in rules for v in r["verbs"]} == {"get", "list", "watch"}
    assert rules_allow(rules, "", "events", "list")
    assert rules_allow(rules, "events.k8s.io", "events", "list")
    assert rules_allow(rules, "mlsec.io", "modelapprovals", "get")


# --- objects ------------------------------------------------------------------------------------


def test_names_follow_the_platform_roles() -> None:
    assert [role_name(r) for r in PlatformRole] == [
        "mlsec-model-developer", "mlsec-model-deployer", "mlsec-model-approver",
        "mlsec-compliance-reviewer", "mlsec-auditor"]


def test_role_binding_subjects_are_sorted_unique_users() -> None:
    rb = role_binding(policy(), PlatformRole.MODEL_APPROVER, ["dave", "carol", "dave"])
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "mlsec-model-approver"}
    assert rb["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "carol"},
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "dave"},
    ]


def test_metadata_labels_owner_and_hash() -> None:
    obj = role(policy(), PlatformRole.AUDITOR)
    meta = obj["metadata"]
    assert meta["namespace"] == "radiology-ml"
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "mlsec-operator",
                              "app.kubernetes.io/component": "platform-rbac",
                              "mlsec.io/platform-role": "auditor"}
    assert SELECTOR == "app.kubernetes.io/managed-by=mlsec-operator,app.kubernetes.io/component=platform-rbac"
    assert meta["ownerReferences"] == [{"apiVersion": "mlsec.io/v1alpha1", "kind": "MLSecurityPolicy",
                                        "name": "default", "uid": UID, "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["annotations"][DESIRED_HASH_ANNOTATION] == desired_hash(obj)


def test_desired_rbac_roles_first_and_hash_moves_only_with_membership() -> None:
    p = policy()
    members = {"model_developer": ["alice"], "model_approver": ["carol"]}
    objs = desired_rbac(p, members)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Role", "mlsec-model-approver"), ("Role", "mlsec-model-developer"),
        ("RoleBinding", "mlsec-model-approver"), ("RoleBinding", "mlsec-model-developer")]
    again = desired_rbac(p, {"model_approver": ["carol"], "model_developer": ["alice"]})
    assert again == objs
    hashes = [o["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] for o in objs]
    moved = desired_rbac(p, {"model_developer": ["alice", "bob"], "model_approver": ["carol"]})
    moved_hashes = [o["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] for o in moved]
    assert [a == b for a, b in zip(hashes, moved_hashes, strict=True)] == [True, True, True, False]


def test_empty_role_still_gets_a_binding_without_subjects() -> None:
    objs = desired_rbac(policy(), {"auditor": []})
    assert [o["kind"] for o in objs] == ["Role", "RoleBinding"]
    assert objs[1]["subjects"] == []


def test_owner_needs_a_uid() -> None:
    p = policy()
    p.metadata.uid = None
    with pytest.raises(ValueError, match="uid"):
        role(p, PlatformRole.AUDITOR)


@pytest.mark.parametrize("platform_role", list(PlatformRole))
def test_operator_holds_every_permission_it_grants(platform_role: PlatformRole) -> None:
    # The API server refuses a Role granting what its writer does not hold (escalation check).
    held = operator_rules()
    for rule in RULES[platform_role]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert rules_allow(held, group, resource, verb), (group, resource, verb)
