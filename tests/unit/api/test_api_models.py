"""The pydantic models: samples parse, invalid objects are rejected naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from api_cases import APPROVAL, DEPLOYMENT, INVALID, POLICY, Invalid, load_sample, mutate
from pydantic import ValidationError

from mlsec.api import (
    CustomResource,
    Enforcement,
    MLSecurityPolicy,
    ModelApproval,
    ModelDeployment,
    PlatformRole,
    Stage,
    stage_transition_error,
    validation_messages,
)

MODELS: dict[str, type[CustomResource]] = {
    POLICY: MLSecurityPolicy,
    DEPLOYMENT: ModelDeployment,
    APPROVAL: ModelApproval,
}


@pytest.mark.parametrize("sample", list(MODELS))
def test_sample_parses_and_round_trips(sample: str) -> None:
    doc = load_sample(sample)
    obj = MODELS[sample].model_validate(doc)
    dumped = obj.model_dump(mode="json", exclude_none=True)
    assert _contains(dumped["spec"], doc["spec"])  # nothing lost or renamed
    assert MODELS[sample].model_validate(dumped) == obj


def _contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return len(big) == len(small) and all(map(_contains, big, small))
    return bool(big == small)


def test_policy_sample_content() -> None:
    policy = MLSecurityPolicy.model_validate(load_sample(POLICY))
    assert policy.metadata.namespace == "radiology-ml"
    assert policy.spec.enforcement is Enforcement.ENFORCE
    assert [m.platform_role for m in policy.spec.role_mappings] == [
        PlatformRole.MODEL_DEVELOPER,
        PlatformRole.MODEL_DEPLOYER,
        PlatformRole.MODEL_APPROVER,
        PlatformRole.COMPLIANCE_REVIEWER,
    ]
    assert policy.spec.ldap.url.startswith("ldaps://")
    assert policy.spec.promotion.production.required_approvals[1].when_data_classification


def test_yaml_names_are_camel_case_with_initialisms() -> None:
    dumped = MLSecurityPolicy.model_validate(load_sample(POLICY)).model_dump(mode="json")
    ldap = dumped["spec"]["ldap"]
    assert {"startTLS", "bindDN", "bindPasswordSecretRef", "userIdAttribute"} <= ldap.keys()
    assert "approvalTTL" in dumped["spec"]["promotion"]["production"]
    assert "requestsPerSecond" in dumped["spec"]["network"]["rateLimit"]


def test_python_names_also_accepted() -> None:
    doc = load_sample(POLICY)
    ldap = doc["spec"]["ldap"]
    ldap["start_tls"] = ldap.pop("startTLS")
    ldap["bind_dn"] = ldap.pop("bindDN")
    assert MLSecurityPolicy.model_validate(doc).spec.ldap.bind_dn == "cn=admin,dc=hospital,dc=com"


def test_defaults_match_design() -> None:
    doc = load_sample(POLICY)
    spec = doc["spec"]
    for key in ("enforcement", "network", "images", "vault"):
        spec.pop(key)
    for key in ("startTLS", "userIdAttribute", "syncInterval", "groupObjectClass"):
        spec["ldap"].pop(key)
    prod = spec["promotion"]["production"]
    prod.pop("forbidSelfApproval")
    prod.pop("approvalTTL")
    policy = MLSecurityPolicy.model_validate(doc).spec
    assert policy.enforcement == "enforce"
    assert (policy.ldap.start_tls, policy.ldap.user_id_attribute) == (False, "uid")
    assert policy.ldap.sync_interval == "5m"
    assert policy.promotion.production.forbid_self_approval is True
    assert policy.promotion.production.approval_ttl == "168h"
    assert policy.network.mtls == "STRICT"
    assert policy.images.require_digest is True
    assert policy.vault is None

    mld = load_sample(DEPLOYMENT)
    for key in ("replicas", "port", "secrets", "tls", "resources"):
        mld["spec"].pop(key)
    dep = ModelDeployment.model_validate(mld).spec
    assert (dep.replicas, dep.port, dep.secrets, dep.tls) == (1, 8080, [], None)

    mla = load_sample(APPROVAL)
    mla["spec"].pop("stage")
    assert ModelApproval.model_validate(mla).spec.stage == "production"


def test_ldap_plain_url_allowed_with_starttls() -> None:
    doc = mutate(load_sample(POLICY), "spec.ldap.url", "ldap://ldap.hospital.com:389")
    doc = mutate(doc, "spec.ldap.startTLS", True)
    assert MLSecurityPolicy.model_validate(doc).spec.ldap.start_tls


@pytest.mark.parametrize("case", INVALID, ids=lambda c: f"{c.path}={str(c.value)[:24]}")
def test_invalid_object_rejected_naming_the_field(case: Invalid) -> None:
    doc = mutate(load_sample(case.sample), case.path, case.value)
    with pytest.raises(ValidationError) as err:
        MODELS[case.sample].model_validate(doc)
    lines = validation_messages(err.value, root=None)
    assert any(line.startswith(case.field + ":") for line in lines), (case.why, lines)


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 20
    assert {c.sample for c in INVALID} == set(MODELS)


def test_cross_field_messages_are_readable() -> None:
    doc = mutate(load_sample(POLICY), "spec.ldap.url", "ldap://ldap.hospital.com")
    with pytest.raises(ValidationError) as err:
        MLSecurityPolicy.model_validate(doc)
    assert validation_messages(err.value, root=None) == [
        "spec.ldap.url: ldap:// requires startTLS: true"
    ]
    spec: dict[str, Any] = load_sample(DEPLOYMENT)["spec"]
    spec["secrets"].append({"name": "db", "path": "secret/data/other"})
    with pytest.raises(ValidationError) as err:
        ModelDeployment.model_validate({"kind": "ModelDeployment", "spec": spec})
    assert validation_messages(err.value, root=None) == [
        "spec.secrets: secret names must be unique: db"
    ]


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (Stage.STAGING, Stage.PRODUCTION, True),
        (Stage.PRODUCTION, Stage.PRODUCTION, True),
        (Stage.DEVELOPMENT, Stage.STAGING, True),
        (Stage.PRODUCTION, Stage.ARCHIVED, True),
        (Stage.ARCHIVED, Stage.STAGING, True),
        (Stage.DEVELOPMENT, Stage.PRODUCTION, False),
        ("archived", "production", False),
    ],
)
def test_stage_transitions(old: str, new: str, allowed: bool) -> None:
    assert (stage_transition_error(old, new) is None) == allowed


def test_status_ignores_unknown_fields_and_parses_conditions() -> None:
    doc = load_sample(DEPLOYMENT)
    doc["status"] = {
        "stage": "staging",
        "fromTheFuture": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "RolledOut",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    status = ModelDeployment.model_validate(doc).status
    assert status.stage is Stage.STAGING
    assert status.conditions[0].status == "True"
