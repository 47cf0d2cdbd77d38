"""Table-driven tests of the promotion approval rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mlsec.gate import (
    Approval,
    ApprovalDecision,
    PromotionRules,
    Release,
    Requirement,
    Shortfall,
    evaluate,
)

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64
APPROVER = frozenset({"model_approver"})
COMPLIANCE = frozenset({"compliance_reviewer"})
BOTH = APPROVER | COMPLIANCE

PHI = Release("mri-classifier", "3", DIGEST, "phi", owner="alice", requested_by="bob")
PUBLIC = replace(PHI, data_classification="public")
RULES = PromotionRules(
    requirements=(
        Requirement("model_approver", 1),
        Requirement("compliance_reviewer", 1, frozenset({"pii", "phi"})),
    ),
    forbid_self_approval=True,
    approval_ttl=timedelta(hours=168),
)


def appr(
    name: str,
    approver: str,
    roles: frozenset[str] = APPROVER,
    *,
    decision: ApprovalDecision = "approve",
    age: timedelta = timedelta(hours=1),
    **binding: str,
) -> Approval:
    fields = {"model": "mri-classifier", "version": "3", "image_digest": DIGEST}
    fields.update(binding)
    stage = fields.pop("stage", "production")
    return Approval(
        name=name,
        approver=approver,
        approver_roles=roles,
        stage=stage,
        decision=decision,
        created=NOW - age,
        **fields,
    )


# (id, release, approvals, allowed, message, {approval name: (counted, role, reason)})
# fmt: off
CASES = [
    ("phi needs both, have none", PHI, [], False,
     "needs 1 approval from model_approver, 1 approval from compliance_reviewer "
     "(required for phi models); have 0", {}),
    ("phi both present", PHI, [appr("a1", "carol"), appr("a2", "dave", COMPLIANCE)], True,
     "approved by carol (model_approver), dave (compliance_reviewer)",
     {"a1": (True, "model_approver", "counts as model_approver"),
      "a2": (True, "compliance_reviewer", "counts as compliance_reviewer")}),
    ("public needs only approver", PUBLIC, [appr("a1", "carol")], True,
     "approved by carol (model_approver)",
     {"a1": (True, "model_approver", "counts as model_approver")}),
    ("phi missing compliance", PHI, [appr("a1", "carol")], False,
     "needs 1 approval from compliance_reviewer (required for phi models); have 1", {}),
    ("one person with both roles counts once", PHI, [appr("a1", "carol", BOTH)], False,
     "needs 1 approval from compliance_reviewer (required for phi models); have 1",
     {"a1": (True, "model_approver", "counts as model_approver")}),
    ("matching puts the dual-role person where needed", PHI,
     [appr("a1", "carol", BOTH), appr("a2", "erin", APPROVER)], True,
     "approved by carol (compliance_reviewer), erin (model_approver)",
     {"a1": (True, "compliance_reviewer", "counts as compliance_reviewer"),
      "a2": (True, "model_approver", "counts as model_approver")}),
    ("requester never counts", PUBLIC, [appr("a1", "bob")], False,
     "needs 1 approval from model_approver; have 0",
     {"a1": (False, None, "self-approval: bob is the requester")}),
    ("owner never counts", PUBLIC, [appr("a1", "alice")], False,
     "needs 1 approval from model_approver; have 0",
     {"a1": (False, None, "self-approval: alice is the model owner")}),
    ("other version", PUBLIC, [appr("a1", "carol", version="2")], False,
     "needs 1 approval from model_approver; have 0",
     {"a1": (False, None, "bound to version 2, release is version 3")}),
    ("other digest", PUBLIC, [appr("a1", "carol", image_digest=OTHER_DIGEST)], False,
     "needs 1 approval from model_approver; have 0",
     {"a1": (False, None, "bound to a different image digest (sha256:bbbbbbbbbbbb)")}),
    ("other model", PUBLIC, [appr("a1", "carol", model="ct-segmenter")], False, None,
     {"a1": (False, None, "bound to model ct-segmenter, release is model mri-classifier")}),
    ("other stage", PUBLIC, [appr("a1", "carol", stage="staging")], False, None,
     {"a1": (False, None, "bound to stage staging, not production")}),
    ("unpinned release", replace(PUBLIC, image_digest=""), [appr("a1", "carol", image_digest="")],
     False, None,
     {"a1": (False, None, "release image is not pinned by digest, so no approval can bind to it")}),
    ("unstamped approver", PUBLIC, [appr("a1", "")], False, None,
     {"a1": (False, None, "approver unknown (not stamped at admission)")}),
    ("expired", PUBLIC, [appr("a1", "carol", age=timedelta(hours=169))], False, None,
     {"a1": (False, None, "expired at 2026-01-10T11:00:00Z")}),
    ("expires exactly now", PUBLIC, [appr("a1", "carol", age=timedelta(hours=168))], False, None,
     {"a1": (False, None, "expired at 2026-01-10T12:00:00Z")}),
    ("wrong role", PHI, [appr("a1", "frank", frozenset({"model_developer"}))], False, None,
     {"a1": (False, None, "approver lacks platform role model_approver or compliance_reviewer")}),
    ("compliance role irrelevant for public", PUBLIC, [appr("a1", "dave", COMPLIANCE)], False, None,
     {"a1": (False, None, "approver lacks platform role model_approver")}),
    ("duplicate approvals of one person", PUBLIC,
     [appr("a1", "carol", age=timedelta(hours=5)), appr("a2", "carol")], True, None,
     {"a1": (False, None, "duplicate: carol already approved in a2"),
      "a2": (True, "model_approver", "counts as model_approver")}),
    ("a person counts once via the approval that serves", PHI,
     [appr("a1", "carol", COMPLIANCE, age=timedelta(hours=9)), appr("a2", "carol"),
      appr("a3", "erin")], True, "approved by carol (compliance_reviewer), erin (model_approver)",
     {"a1": (True, "compliance_reviewer", "counts as compliance_reviewer"),
      "a2": (False, None, "duplicate: carol already approved in a1")}),
    ("surplus approver", PUBLIC, [appr("a1", "carol"), appr("a2", "erin", age=timedelta(hours=2))],
     True, "approved by carol (model_approver)",
     {"a1": (True, "model_approver", "counts as model_approver"),
      "a2": (False, None, "not needed: the model_approver requirement is already met")}),
    ("reject from required role blocks", PUBLIC,
     [appr("a1", "erin"), appr("r1", "carol", decision="reject")], False,
     "rejected by carol (model_approver)",
     {"r1": (True, "model_approver", "rejects the promotion as model_approver")}),
    ("reject and shortfall", PHI, [appr("r1", "carol", decision="reject")], False,
     "rejected by carol (model_approver); needs 1 approval from model_approver, "
     "1 approval from compliance_reviewer (required for phi models); have 0", {}),
    ("reject never expires", PUBLIC,
     [appr("a1", "erin"), appr("r1", "carol", decision="reject", age=timedelta(days=400))],
     False, "rejected by carol (model_approver)", {}),
    ("reject from owner still blocks", PUBLIC,
     [appr("a1", "erin"), appr("r1", "alice", decision="reject")], False,
     "rejected by alice (model_approver)", {}),
    ("reject without required role ignored", PUBLIC,
     [appr("a1", "erin"), appr("r1", "frank", frozenset({"model_developer"}), decision="reject")],
     True, None,
     {"r1": (False, None, "reject ignored: approver lacks platform role model_approver")}),
    ("reject of another version ignored", PUBLIC,
     [appr("a1", "erin"), appr("r1", "carol", decision="reject", version="2")], True, None,
     {"r1": (False, None, "bound to version 2, release is version 3")}),
    ("compliance reject ignored for public", PUBLIC,
     [appr("a1", "erin"), appr("r1", "dave", COMPLIANCE, decision="reject")], True, None, {}),
]
# fmt: on


@pytest.mark.parametrize(
    ("release", "approvals", "allowed", "message", "verdicts"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_evaluate_table(
    release: Release,
    approvals: list[Approval],
    allowed: bool,
    message: str | None,
    verdicts: dict[str, tuple[bool, str | None, str]],
) -> None:
    decision = evaluate(release, approvals, RULES, NOW)
    assert decision.allowed is allowed
    if message is not None:
        assert decision.message() == message
    got = {v.name: (v.counted, v.role, v.reason) for v in decision.verdicts}
    for name, expected in verdicts.items():
        assert got[name] == expected
    assert [v.name for v in decision.verdicts] == [a.name for a in approvals]


def test_zero_requirements_allows_and_ignores_everything() -> None:
    rules = PromotionRules((), True, timedelta(hours=2))
    d = evaluate(PHI, [appr("a1", "carol"), appr("r1", "dave", decision="reject")], rules, NOW)
    assert d.allowed
    assert d.message() == "no approvals required"
    assert d.valid_until is None
    assert [v.reason for v in d.verdicts] == [
        "no approvals are required for this release",
        "reject ignored: no approvals are required for this release",
    ]


def test_n_of_m_with_shortfall_counts() -> None:
    rules = PromotionRules((Requirement("model_approver", 3),), True, timedelta(hours=168))
    d = evaluate(PUBLIC, [appr("a1", "carol"), appr("a2", "erin")], rules, NOW)
    assert not d.allowed
    assert d.missing == (Shortfall("model_approver", 3, 2, ""),)
    assert d.message() == "needs 1 more approval from model_approver; have 2"
    rules2 = replace(rules, requirements=(Requirement("model_approver", 4),))
    d2 = evaluate(PUBLIC, [appr("a1", "carol")], rules2, NOW)
    assert d2.message() == "needs 3 more approvals from model_approver; have 1"


def test_same_role_requirements_merge_by_max() -> None:
    rules = replace(
        RULES,
        requirements=(
            Requirement("model_approver", 1),
            Requirement("model_approver", 2, frozenset({"phi"})),
        ),
    )
    one = [appr("a1", "carol")]
    assert evaluate(PUBLIC, one, rules, NOW).allowed
    d = evaluate(PHI, one, rules, NOW)
    assert d.missing == (Shortfall("model_approver", 2, 1, "for phi models"),)
    assert d.message() == (
        "needs 1 more approval from model_approver (required for phi models); have 1"
    )
    assert evaluate(PHI, [*one, appr("a2", "erin")], rules, NOW).allowed


def test_self_approval_allowed_when_not_forbidden() -> None:
    rules = replace(RULES, forbid_self_approval=False)
    assert evaluate(PUBLIC, [appr("a1", "alice")], rules, NOW).allowed
    assert evaluate(PUBLIC, [appr("a1", "bob")], rules, NOW).allowed


def test_no_requester_only_owner_is_self() -> None:
    release = replace(PUBLIC, requested_by=None)
    assert evaluate(release, [appr("a1", "bob")], RULES, NOW).allowed


def test_valid_until_is_earliest_counted_expiry() -> None:
    approvals = [
        appr("a1", "carol", age=timedelta(hours=10)),
        appr("a2", "dave", COMPLIANCE, age=timedelta(hours=20)),
        appr("a3", "frank", frozenset(), age=timedelta(hours=100)),  # not counted
    ]
    d = evaluate(PHI, approvals, RULES, NOW)
    assert d.allowed
    assert d.valid_until == NOW - timedelta(hours=20) + timedelta(hours=168)
    assert d.verdicts[0].valid_until == NOW - timedelta(hours=10) + timedelta(hours=168)


def test_matching_prefers_longest_lived_approvers() -> None:
    # carol's approval is older; erin's newer one should be counted so valid_until is later.
    approvals = [appr("a1", "carol", age=timedelta(hours=100)), appr("a2", "erin")]
    d = evaluate(PUBLIC, approvals, RULES, NOW)
    assert d.valid_until == NOW - timedelta(hours=1) + timedelta(hours=168)
    assert d.verdicts[0].counted is False


def test_rejects_have_no_expiry_and_do_not_set_valid_until() -> None:
    d = evaluate(PUBLIC, [appr("r1", "carol", decision="reject")], RULES, NOW)
    assert d.rejected_by[0].valid_until is None
    assert d.rejected_by[0].decision == "reject"
    assert d.valid_until is None


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(PUBLIC, [], RULES, datetime(2026, 1, 1))
    naive = replace(appr("a1", "carol"), created=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="approval a1 created"):
        evaluate(PUBLIC, [naive], RULES, NOW)


def test_other_timezones_compare_correctly() -> None:
    cet = timezone(timedelta(hours=1))
    created = (NOW - timedelta(hours=168) + timedelta(seconds=1)).astimezone(cet)
    a = replace(appr("a1", "carol"), created=created)
    assert evaluate(PUBLIC, [a], RULES, NOW).allowed
    assert not evaluate(PUBLIC, [a], RULES, NOW + timedelta(seconds=1)).allowed
