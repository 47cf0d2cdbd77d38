"""Promotion approval rules: may this release run in production, given these approvals?

Pure functions over small frozen dataclasses (the handlers map the API models onto them), so the
admission webhook, the reconcile loop and the ledger writer all reach the same decision.

Decisions taken here (see DESIGN.md "ModelApproval"):
- Requirements that apply to the release (``when_data_classification`` unset or containing the
  release's classification) are merged per role by taking the *largest* count, so
  ``{model_approver: 1}`` plus ``{model_approver: 2, when phi}`` means two for phi models.
- A person counts once in total. Someone holding several required roles is assigned by maximum
  bipartite matching, so the assignment satisfies as many requirements as possible; ties go to
  the approvals that expire last, which maximises ``valid_until``. A person's roles are the union
  over their eligible approvals (the handlers should pass the approver's *current* roles, so
  leaving an LDAP group withdraws the approval's weight).
- Approvals bind to stage production and the exact model, version and image digest; a release
  without a digest can never be approved. Approvals expire ``approval_ttl`` after creation.
- A ``reject`` bound to the release from someone holding an applicable required role blocks until
  the object is deleted: it never expires, and it blocks even from the owner or requester (a
  reject is the fail-safe direction; self-approval rules only stop approvals from counting).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from mlsec.gate._matching import greedy_matching

PRODUCTION = "production"
ApprovalDecision = Literal["approve", "reject"]


@dataclass(frozen=True)
class Requirement:
    platform_role: str
    count: int
    when_data_classification: frozenset[str] | None = None

    def applies_to(self, data_classification: str) -> bool:
        wanted = self.when_data_classification
        return wanted is None or data_classification in wanted


@dataclass(frozen=True)
class PromotionRules:
    requirements: tuple[Requirement, ...] = ()
    forbid_self_approval: bool = True
    approval_ttl: timedelta = timedelta(hours=168)


@dataclass(frozen=True)
class Approval:
    name: str
    approver: str  # stamped at admission from userInfo; "" means unknown
    approver_roles: frozenset[str]
    model: str
    version: str
    image_digest: str
    stage: str
    decision: ApprovalDecision
    created: datetime  # timezone-aware


@dataclass(frozen=True)
class Release:
    model: str
    version: str
    image_digest: str  # "" when the image is not pinned by digest
    data_classification: str
    owner: str
    requested_by: str | None = None


@dataclass(frozen=True)
class ApprovalVerdict:
    """Effect of one approval. ``counted`` means it takes part in the decision: an approve that
    fills a requirement (``role``) or a reject that blocks (``role`` it was made under)."""

    name: str
    approver: str
    counted: bool
    role: str | None
    reason: str
    decision: ApprovalDecision = "approve"
    valid_until: datetime | None = None  # created + ttl for approvals; None for rejects


@dataclass(frozen=True)
class Shortfall:
    role: str
    needed: int
    have: int
    why: str  # "" for unconditional requirements, else e.g. "for phi models"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    verdicts: tuple[ApprovalVerdict, ...]
    missing: tuple[Shortfall, ...]
    rejected_by: tuple[ApprovalVerdict, ...]
    valid_until: datetime | None  # earliest expiry among counted approvals: re-evaluate then

    @property
    def approved_by(self) -> tuple[ApprovalVerdict, ...]:
        return tuple(v for v in self.verdicts if v.counted and v.decision == "approve")

    def message(self) -> str:
        parts: list[str] = []
        if self.rejected_by:
            who = ", ".join(f"{v.approver} ({v.role})" for v in self.rejected_by)
            parts.append(f"rejected by {who}")
        if self.missing:
            needs = ", ".join(_describe_shortfall(s) for s in self.missing)
            parts.append(f"needs {needs}; have {len(self.approved_by)}")
        if parts:
            return "; ".join(parts)
        if not self.approved_by:
            return "no approvals required"
        return "approved by " + ", ".join(f"{v.approver} ({v.role})" for v in self.approved_by)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def required_roles(release: Release, rules: PromotionRules) -> dict[str, tuple[int, str]]:
    """Applicable requirements merged per role: role -> (count, why), in rule order."""
    merged: dict[str, tuple[int, str]] = {}
    for req in rules.requirements:
        if req.count <= 0 or not req.applies_to(release.data_classification):
            continue
        conditional = req.when_data_classification is not None
        why = f"for {release.data_classification} models" if conditional else ""
        if req.count > merged.get(req.platform_role, (0, ""))[0]:
            merged[req.platform_role] = (req.count, why)
    return merged


def evaluate(
    release: Release, approvals: Iterable[Approval], rules: PromotionRules, now: datetime
) -> Decision:
    _require_aware(now, "now")
    required = required_roles(release, rules)
    ttl = rules.approval_ttl
    items = list(approvals)
    verdicts: list[ApprovalVerdict | None] = [None] * len(items)
    eligible: dict[str, list[int]] = {}  # approver -> their approvals that could count

    def approve(i: int, counted: bool, role: str | None, reason: str) -> None:
        a = items[i]
        verdicts[i] = ApprovalVerdict(
            a.name, a.approver, counted, role, reason, valid_until=a.created + ttl
        )

    for i, a in enumerate(items):
        _require_aware(a.created, f"approval {a.name} created")
        if a.decision == "reject":
            verdicts[i] = _judge_reject(release, a, required)
        elif (problem := _approval_problem(release, a, rules, required, now)) is not None:
            approve(i, False, None, problem)
        else:
            eligible.setdefault(a.approver, []).append(i)

    # One person, one vote, via whichever of their approvals serves best. Latest expiry first,
    # so the matching keeps the longest-lived approvers (see module doc).
    for mine in eligible.values():
        mine.sort(key=lambda i: (items[i].created, items[i].name), reverse=True)
    people = sorted(eligible, key=lambda p: (-items[eligible[p][0]].created.timestamp(), p))
    roles = [frozenset().union(*(items[i].approver_roles for i in eligible[p])) for p in people]
    slots = [role for role, (count, _) in required.items() for _ in range(count)]
    matched = greedy_matching(roles, slots)
    have = dict.fromkeys(required, 0)
    for k, person in enumerate(people):
        mine = eligible[person]
        if k in matched:
            role = slots[matched[k]]
            have[role] += 1
            chosen = next(i for i in mine if role in items[i].approver_roles)
            approve(chosen, True, role, f"counts as {role}")
        else:
            chosen = mine[0]
            held = "/".join(r for r in required if r in roles[k])
            approve(chosen, False, None, f"not needed: the {held} requirement is already met")
        for i in mine:
            if i != chosen:
                approve(
                    i, False, None, f"duplicate: {person} already approved in {items[chosen].name}"
                )

    final = tuple(v for v in verdicts if v is not None)
    missing = tuple(
        Shortfall(role, count, have[role], why)
        for role, (count, why) in required.items()
        if have[role] < count
    )
    rejected = tuple(v for v in final if v.counted and v.decision == "reject")
    expiries = [v.valid_until for v in final if v.counted and v.valid_until is not None]
    return Decision(
        allowed=not missing and not rejected,
        verdicts=final,
        missing=missing,
        rejected_by=rejected,
        valid_until=min(expiries, default=None),
    )


def _binding_problem(release: Release, a: Approval) -> str | None:
    if not a.approver:
        return "approver unknown (not stamped at admission)"
    if a.stage != PRODUCTION:
        return f"bound to stage {a.stage}, not {PRODUCTION}"
    if a.model != release.model:
        return f"bound to model {a.model}, release is model {release.model}"
    if a.version != release.version:
        return f"bound to version {a.version}, release is version {release.version}"
    if not release.image_digest:
        return "release image is not pinned by digest, so no approval can bind to it"
    if a.image_digest != release.image_digest:
        return f"bound to a different image digest ({a.image_digest[:19] or 'none'})"
    return None


def _approval_problem(
    release: Release,
    a: Approval,
    rules: PromotionRules,
    required: dict[str, tuple[int, str]],
    now: datetime,
) -> str | None:
    problem = _binding_problem(release, a)
    if problem is not None:
        return problem
    if rules.forbid_self_approval:
        if a.approver == release.requested_by:
            return f"self-approval: {a.approver} is the requester"
        if a.approver == release.owner:
            return f"self-approval: {a.approver} is the model owner"
    if now >= (expiry := a.created + rules.approval_ttl):
        return f"expired at {rfc3339(expiry)}"
    if not required:
        return "no approvals are required for this release"
    if not any(role in a.approver_roles for role in required):
        return f"approver lacks platform role {' or '.join(required)}"
    return None


def _judge_reject(
    release: Release, a: Approval, required: dict[str, tuple[int, str]]
) -> ApprovalVerdict:
    problem = _binding_problem(release, a)
    role = next((r for r in required if r in a.approver_roles), None)
    if problem is None and role is not None:
        return ApprovalVerdict(
            a.name, a.approver, True, role, f"rejects the promotion as {role}", "reject"
        )
    if problem is None and not required:
        problem = "reject ignored: no approvals are required for this release"
    elif problem is None:
        problem = f"reject ignored: approver lacks platform role {' or '.join(required)}"
    return ApprovalVerdict(a.name, a.approver, False, None, problem, "reject")


def _describe_shortfall(s: Shortfall) -> str:
    n = s.needed - s.have
    text = f"{n} {'more ' if s.have else ''}approval{'' if n == 1 else 's'} from {s.role}"
    return f"{text} (required {s.why})" if s.why else text


def _require_aware(moment: datetime, what: str) -> None:
    # Naive datetimes would silently compare as local time; Kubernetes timestamps are UTC.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
