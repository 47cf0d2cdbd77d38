"""Property tests: evaluate() against a brute-force oracle, plus invariants."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from mlsec.gate import Approval, PromotionRules, Release, Requirement, evaluate, ledger_entry
from mlsec.gate._matching import greedy_matching

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
ROLES = ["model_approver", "compliance_reviewer", "auditor"]
CLASSES = ["public", "pii", "phi"]
BOTH = frozenset(ROLES[:2])


@dataclass(frozen=True)
class Case:
    release: Release
    approvals: tuple[Approval, ...]
    rules: PromotionRules


@st.composite
def cases(draw: st.DrawFn) -> Case:
    # Sizes come from hypothesis, the noise (mismatches, rejects, ages) from a seeded Random:
    # hypothesis' own choices cluster on boundaries and would mismatch almost every approval.
    rnd = random.Random(draw(st.integers(0, 2**32)))

    def rare(p: float) -> bool:
        return rnd.random() < p

    def req(role: str) -> Requirement:
        when = rnd.choice([None, None, frozenset({"phi"}), frozenset({"pii", "phi"})])
        return Requirement(role, rnd.choice([0, 1, 1, 1, 2, 2, 3]), when)

    # Mostly the two roles that matter, sometimes a role nobody holds or a repeated role.
    roles_wanted = [r for r in ROLES[:2] if rare(0.8)] + ["model_deployer"] * rare(0.1)
    reqs = tuple(req(r) for r in roles_wanted + [rnd.choice(ROLES[:2])] * rare(0.2))
    rules = PromotionRules(reqs, rare(0.8), timedelta(hours=rnd.randint(24, 400)))
    release = Release(
        "m", "2" if rare(0.05) else "3", rnd.choice([D1] * 18 + [D2, ""]),
        rnd.choice(CLASSES), "alice", rnd.choice([None, "bob"]),
    )  # fmt: skip
    # A person's platform roles come from LDAP and are the same on all their approvals.
    role_sets = [frozenset(c) for n in range(3) for c in itertools.combinations(ROLES[:2], n)]
    roles = {p: rnd.choice([*role_sets, *role_sets[1:3], frozenset({"auditor"})]) for p in PEOPLE}
    approvals = [
        Approval(
            name=f"a{i}",
            approver=(who := rnd.choice(PEOPLE)),
            approver_roles=roles[who],
            model="m",
            version="2" if rare(0.1) else "3",
            image_digest=D2 if rare(0.1) else D1,
            stage="staging" if rare(0.1) else "production",
            decision="reject" if rare(0.07) else "approve",
            created=NOW - timedelta(hours=rnd.randint(0, 200)),
        )
        for i in range(draw(st.integers(0, 10)))
    ]
    return Case(release, tuple(approvals), rules)


def _needs(case: Case) -> dict[str, int]:
    need: dict[str, int] = {}
    for r in case.rules.requirements:
        w = r.when_data_classification
        if r.count > 0 and (w is None or case.release.data_classification in w):
            need[r.platform_role] = max(need.get(r.platform_role, 0), r.count)
    return need


def _bound(case: Case, a: Approval) -> bool:
    rel = case.release
    return (
        a.stage == "production"
        and (a.model, a.version, a.image_digest) == (rel.model, rel.version, rel.image_digest)
        and rel.image_digest != ""
    )


def _eligible(case: Case) -> dict[str, tuple[frozenset[str], datetime]]:
    """Person -> (roles, latest expiry) for approvals that could count."""
    out: dict[str, tuple[frozenset[str], datetime]] = {}
    rel, rules = case.release, case.rules
    for a in case.approvals:
        expiry = a.created + rules.approval_ttl
        self_ = rules.forbid_self_approval and a.approver in (rel.owner, rel.requested_by)
        if a.decision == "approve" and _bound(case, a) and not self_ and expiry > NOW:
            prev = out.get(a.approver)
            out[a.approver] = (a.approver_roles, max(expiry, prev[1]) if prev else expiry)
    return out


def _oracle(case: Case) -> tuple[bool, datetime | None]:
    """Brute force over every assignment of people to one role (or none)."""
    need = _needs(case)
    blocked = any(
        a.decision == "reject" and _bound(case, a) and a.approver_roles & need.keys()
        for a in case.approvals
    )
    people = list(_eligible(case).items())
    best: datetime | None = None
    feasible = False
    options = [[None, *sorted(roles & need.keys())] for _, (roles, _) in people]
    for choice in itertools.product(*options):
        got = Counter(r for r in choice if r is not None)
        if all(got[r] == n for r, n in need.items()):
            feasible = True
            expiries = [people[i][1][1] for i, r in enumerate(choice) if r is not None]
            if expiries and (best is None or min(expiries) > best):
                best = min(expiries)
    return feasible and not blocked, best if feasible else None


@settings(max_examples=1000, deadline=None)
@given(cases())
def test_matches_brute_force_oracle(case: Case) -> None:
    d = evaluate(case.release, case.approvals, case.rules, NOW)
    allowed, valid_until = _oracle(case)
    assert d.allowed == allowed
    if d.allowed:
        assert d.valid_until == valid_until


@settings(max_examples=300, deadline=None)
@given(cases())
def test_invariants(case: Case) -> None:
    d = evaluate(case.release, case.approvals, case.rules, NOW)
    rel, need = case.release, _needs(case)
    assert d.allowed == (not d.missing and not d.rejected_by)
    assert len(d.verdicts) == len(case.approvals)
    counted = d.approved_by
    assert len({v.approver for v in counted}) == len(counted)  # a person counts once
    per_role = Counter(v.role for v in counted)
    assert all(per_role[r] <= n for r, n in need.items())
    assert set(per_role) <= set(need)
    by_name = {a.name: a for a in case.approvals}
    for v in counted:
        a = by_name[v.name]
        assert _bound(case, a) and a.created + case.rules.approval_ttl > NOW
        assert v.role in a.approver_roles
        if case.rules.forbid_self_approval:
            assert v.approver not in (rel.owner, rel.requested_by)
    if counted:
        assert d.valid_until is not None and d.valid_until > NOW
    for s in d.missing:
        assert s.have < s.needed == need[s.role]
    if not need:
        assert d.allowed
    msg = d.message()
    assert msg.startswith(("rejected by", "needs")) != d.allowed
    assert all(v.reason for v in d.verdicts)
    entry = ledger_entry(rel, d)
    assert entry["approved"] == d.allowed and (entry["missing"] == "") == d.allowed


@settings(max_examples=200, deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_order_of_approvals_does_not_matter(case: Case, rnd: object) -> None:
    shuffled = list(case.approvals)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    d1 = evaluate(case.release, case.approvals, case.rules, NOW)
    d2 = evaluate(case.release, shuffled, case.rules, NOW)
    assert (d1.allowed, d1.missing, d1.valid_until) == (d2.allowed, d2.missing, d2.valid_until)
    assert {v.name: v for v in d1.verdicts} == {v.name: v for v in d2.verdicts}


@settings(max_examples=200, deadline=None)
@given(cases(), st.sampled_from(PEOPLE), st.sets(st.sampled_from(ROLES)))
def test_adding_an_approve_never_revokes(case: Case, who: str, roles: set[str]) -> None:
    before = evaluate(case.release, case.approvals, case.rules, NOW)
    extra = Approval(
        "extra", who, frozenset(roles), case.release.model, case.release.version,
        case.release.image_digest, "production", "approve", NOW,
    )  # fmt: skip
    after = evaluate(case.release, (*case.approvals, extra), case.rules, NOW)
    assert not before.allowed or after.allowed
    assert len(after.approved_by) >= len(before.approved_by)


def _coverable(people: list[frozenset[str]], slots: list[str]) -> bool:
    """Can every one of these people get a distinct slot of a role they hold? (brute force)"""
    return any(
        all(slots[s] in roles for s, roles in zip(perm, people, strict=True))
        for perm in itertools.permutations(range(len(slots)), len(people))
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sets(st.sampled_from("xyz")).map(frozenset), max_size=6),
    st.lists(st.sampled_from("xyz"), max_size=5),
)
def test_matching_is_maximum_and_greedy_in_candidate_order(
    candidates: list[frozenset[str]], slots: list[str]
) -> None:
    m = greedy_matching(candidates, slots)
    assert len(set(m.values())) == len(m)
    assert all(slots[s] in candidates[c] for c, s in m.items())
    chosen: list[int] = []  # the matroid greedy, by brute force
    for c in range(len(candidates)):
        if _coverable([candidates[i] for i in [*chosen, c]], slots):
            chosen.append(c)
    assert sorted(m) == chosen
