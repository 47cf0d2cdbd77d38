"""What an admission request asks of the gate (mlsec.gate.review): pure, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlsec.gate import PromotionRules, Release, Requirement, evaluate
from mlsec.gate import review as rv
from mlsec.gate.rules import Approval

KEY = "mlsec.io/requested-by"
DIGEST = "sha256:" + "a" * 64
STAGING = {"stage": "staging", "version": "3", "image": f"r.example/m@{DIGEST}", "owner": "alice",
           "dataClassification": "phi", "replicas": 1}
PROD = {**STAGING, "stage": "production"}
RULES = PromotionRules(requirements=(Requirement("model_approver", 1),
                                     Requirement("compliance_reviewer", 1, frozenset({"pii", "phi"}))))
PHI = Release("mri", "3", DIGEST, "phi", owner="alice")


@pytest.mark.parametrize(("old", "new", "promotion", "changed"), [
    (None, STAGING, False, True),                                      # create at staging
    (None, PROD, True, True),                                          # create straight in production
    (STAGING, {**STAGING, "replicas": 3}, False, False),               # scale: no release change
    (STAGING, PROD, True, True),                                       # staging → production
    (PROD, {**PROD, "replicas": 3}, False, False),                     # scale in production
    (PROD, {**PROD, "version": "4"}, True, True),                      # new version in production
    (PROD, {**PROD, "image": "r.example/m@sha256:" + "b" * 64}, True, True),  # new digest
    (PROD, {**PROD, "owner": "bob"}, True, True),                      # new owner: approvals re-checked
    (PROD, {**PROD, "dataClassification": "public"}, True, True),      # other rules may apply
    (PROD, STAGING, False, True),                                      # demotion is never gated
    (STAGING, {**STAGING, "version": "4"}, False, True),               # staging change: stamped only
])
def test_promotion_and_release_change(old: dict[str, object] | None, new: dict[str, object],
                                      promotion: bool, changed: bool) -> None:
    assert rv.is_promotion(old, new) is promotion
    assert rv.release_changed(old, new) is changed


def test_version_compared_as_text() -> None:
    assert not rv.is_promotion({**PROD, "version": 3}, {**PROD, "version": "3"})


def test_requester_is_stamped_on_release_changes_and_kept_otherwise() -> None:
    stamped = {"annotations": {KEY: "bob"}}
    assert rv.requester_after(None, None, STAGING, "alice", KEY) == "alice"
    assert rv.requester_after(stamped, STAGING, PROD, "carol", KEY) == "carol"
    assert rv.requester_after(stamped, PROD, {**PROD, "replicas": 5}, "carol", KEY) == "bob"
    assert rv.requester_after({}, PROD, {**PROD, "replicas": 5}, "carol", KEY) is None


@pytest.mark.parametrize(("spec", "annotations", "problem"), [
    ({"approvedBy": "carol", "approverGroups": ["ml_leads", "system:authenticated"]}, {}, None),
    ({}, {}, None),
    ({"approvedBy": "dave"}, {}, "spec.approvedBy names 'dave', but the approver is whoever creates"),
    ({"approvedBy": "carol", "approverGroups": ["compliance"]}, {}, "spec.approverGroups must be"),
    ({}, {rv.APPROVED_BY_ANNOTATION: "dave"}, "annotation mlsec.io/approved-by names 'dave'"),
    ({}, {rv.APPROVED_BY_ANNOTATION: "carol"}, None),
])
def test_forged_approver(spec: dict[str, object], annotations: dict[str, str], problem: str | None) -> None:
    got = rv.forged_approver(spec, annotations, "carol", ["ml_leads", "system:authenticated"])
    assert (got is None) if problem is None else (got is not None and got.startswith(problem))


def test_stamped_groups_are_bounded() -> None:
    assert rv.stamped_groups([f"g{i}" for i in range(200)]) == [f"g{i}" for i in range(128)]
    assert rv.stamped_groups(None) == []


@pytest.mark.parametrize(("user", "roles", "release", "expected"), [
    ("carol", {"model_approver"}, PHI, None),
    ("dave", {"compliance_reviewer"}, PHI, None),
    ("erin", set(), PHI, "erin holds no platform role that approves mri for production (needs "
                         "model_approver or compliance_reviewer (for phi models); erin has: none)"),
    ("bob", {"model_deployer"}, PHI, "bob holds no platform role that approves mri for production "
                                     "(needs model_approver or compliance_reviewer (for phi models); "
                                     "bob has: model_deployer)"),
    # compliance is not required for a public model, so a compliance reviewer alone cannot approve
    ("dave", {"compliance_reviewer"}, Release("m", "1", DIGEST, "public", "alice"),
     "dave holds no platform role that approves m for production (needs model_approver; "
     "dave has: compliance_reviewer)"),
    ("alice", {"model_approver"}, PHI, "self-approval: alice owns mri, and the policy forbids"),
    ("erin", set(), None, "erin holds no platform role that approves this model for production (needs "
                          "model_approver or compliance_reviewer; erin has: none)"),
])
def test_approval_problem(user: str, roles: set[str], release: Release | None, expected: str | None) -> None:
    got = rv.approval_problem(user, roles, release, RULES)
    assert (got is None) if expected is None else (got is not None and got.startswith(expected))


def test_owner_may_approve_when_self_approval_is_allowed() -> None:
    lenient = PromotionRules(requirements=RULES.requirements, forbid_self_approval=False)
    assert rv.approval_problem("alice", {"model_approver"}, PHI, lenient) is None


def test_no_requirements_means_no_role_needed() -> None:
    assert rv.approval_problem("erin", set(), PHI, PromotionRules()) is None


@pytest.mark.parametrize(("roles", "refused"), [
    ({"model_developer"}, True),
    ({"model_developer", "model_deployer"}, False),
    ({"model_deployer"}, False),
    (set(), False),  # no platform role: RBAC decides whether they may write at all
])
def test_role_problem(roles: set[str], refused: bool) -> None:
    got = rv.role_problem("alice", roles)
    assert (got is not None) is refused
    if refused:
        assert got == ("alice is a model_developer: only a model_deployer may move a ModelDeployment to "
                       "production or change its release there")


def test_denial_message_lists_what_is_missing_and_why_approvals_do_not_count() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    approvals = [
        Approval("a-carol", "carol", frozenset({"model_approver"}), "mri", "3", DIGEST, "production",
                 "approve", now - timedelta(hours=1)),
        Approval("a-bob", "bob", frozenset({"model_approver"}), "mri", "3", DIGEST, "production",
                 "approve", now - timedelta(hours=1)),
    ]
    release = Release("mri", "3", DIGEST, "phi", owner="alice", requested_by="bob")
    decision = evaluate(release, approvals, RULES, now)
    text = rv.denial_message("mri", PROD, decision)
    assert text == ("promotion of mri version 3 to production: needs 1 approval from compliance_reviewer "
                    "(required for phi models); have 1. Not counted: a-bob by bob: self-approval: bob is "
                    "the requester")
