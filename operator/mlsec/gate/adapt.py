"""Map API objects onto the gate's small types, and compute a namespace's promotion ledger.

Pure: callers pass plain dicts (kopf bodies or index entries) and a role resolver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from mlsec.api import MLSecurityPolicy, image_digest, parse_duration
from mlsec.gate.rules import (
    PRODUCTION,
    Approval,
    ApprovalVerdict,
    Decision,
    PromotionRules,
    Release,
    Requirement,
    evaluate,
    rfc3339,
)

RoleResolver = Callable[[str, tuple[str, ...]], frozenset[str]]  # (user, groups) -> roles


class _PerPolicy:
    """What a function computes from a policy object, kept while that object is in use.

    The handlers reuse one parsed policy per generation (``deployment.policy_in_force``), and
    the admission gate asks for its rules and role mappings on every request. Keyed by identity:
    an entry keeps its policy alive, so the id is not reused while cached."""

    def __init__(self, size: int = 256) -> None:
        self._entries: dict[int, tuple[object, Any]] = {}
        self._size = size

    def get(self, policy: object, compute: Callable[[], Any]) -> Any:
        hit = self._entries.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        value = compute()
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[id(policy)] = (policy, value)
        return value


_rules, _mappings = _PerPolicy(), _PerPolicy()


def rules_of(policy: MLSecurityPolicy) -> PromotionRules:
    rules: PromotionRules = _rules.get(policy, lambda: _rules_of(policy))
    return rules


def _rules_of(policy: MLSecurityPolicy) -> PromotionRules:
    prod = policy.spec.promotion.production
    return PromotionRules(
        requirements=tuple(
            Requirement(
                str(r.platform_role),
                r.count,
                frozenset(str(c) for c in r.when_data_classification)
                if r.when_data_classification else None,
            )
            for r in prod.required_approvals
        ),
        forbid_self_approval=prod.forbid_self_approval,
        approval_ttl=parse_duration(prod.approval_ttl),
    )


def roles_from_groups(groups: Iterable[str], policy: MLSecurityPolicy) -> frozenset[str]:
    """Platform roles from the groups the API server authenticated someone with.

    A group matches a mapping by its full DN or by its first RDN value (``ml_leads`` for
    ``cn=ml_leads,ou=groups,…``), as identity providers report either.
    """
    names = {g.lower() for g in groups}
    mappings: tuple[tuple[str, str, str], ...] = _mappings.get(policy, lambda: _group_names(policy))
    return frozenset(role for dn, cn, role in mappings if dn in names or cn in names)


def _group_names(policy: MLSecurityPolicy) -> tuple[tuple[str, str, str], ...]:
    """(full DN, first RDN value, platform role) of each mapping, lower-cased."""
    out = []
    for m in policy.spec.role_mappings:
        dn = m.ldap_group.lower()
        out.append((dn, dn.split(",", 1)[0].split("=", 1)[-1], str(m.platform_role)))
    return tuple(out)


def release_of(spec: Mapping[str, Any], requested_by: str | None = None) -> Release:
    return Release(
        model=str(spec.get("_name") or spec.get("model")),
        version=str(spec.get("version", "")),
        image_digest=image_digest(str(spec.get("image", ""))) or "",
        data_classification=str(spec.get("dataClassification", "")),
        owner=str(spec.get("owner", "")),
        requested_by=requested_by,
    )


def approval_of(name: str, spec: Mapping[str, Any], created: datetime,
                resolve: RoleResolver) -> Approval:
    approver = str(spec.get("approvedBy") or "")
    groups = tuple(str(g) for g in spec.get("approverGroups") or ())
    return Approval(
        name=name,
        approver=approver,
        approver_roles=resolve(approver, groups) if approver else frozenset(),
        model=str(spec.get("modelDeployment", "")),
        version=str(spec.get("version", "")),
        image_digest=str(spec.get("imageDigest", "")),
        stage=str(spec.get("stage", PRODUCTION)),
        decision="reject" if spec.get("decision") == "reject" else "approve",
        created=created,
    )


def candidate_releases(md_name: str, spec: Mapping[str, Any],
                       approvals: Iterable[Approval]) -> list[Release]:
    """The model's current release plus every (version, digest) someone approved for it."""
    current = release_of({**spec, "_name": md_name})
    seen = {(current.version, current.image_digest)}
    out = [current]
    for a in approvals:
        if a.model == md_name and a.decision == "approve" and (a.version, a.image_digest) not in seen:
            seen.add((a.version, a.image_digest))
            out.append(Release(md_name, a.version, a.image_digest, current.data_classification,
                               current.owner))
    return out


def ledger_spec(policy: MLSecurityPolicy, models: Mapping[str, Mapping[str, Any]],
                approvals: Iterable[Approval], now: datetime,
                blocked: str = "") -> tuple[dict[str, Any], dict[str, Decision], dict[str, ApprovalVerdict]]:
    """The PromotionLedger spec for a namespace, the decision for each model's current spec, and
    the verdict on each approval for the release it is bound to (for its status).

    ``models`` maps ModelDeployment name → spec. An entry lists the approvers that counted: the
    admission policy refuses a promotion requested by one of them (no self-promotion).
    """
    rules = rules_of(policy)
    approvals = list(approvals)
    releases: dict[str, list[dict[str, Any]]] = {}
    pending: dict[str, str] = {}
    current: dict[str, Decision] = {}
    verdicts: dict[str, ApprovalVerdict] = {}
    for name in sorted(models):
        spec = models[name]
        mine = [a for a in approvals if a.model == name]
        for i, release in enumerate(candidate_releases(name, spec, mine)):
            decision = evaluate(release, mine, rules, now)
            bound = {a.name for a in mine
                     if (a.version, a.image_digest) == (release.version, release.image_digest)}
            verdicts.update({v.name: v for v in decision.verdicts if v.name in bound})
            if i == 0:
                current[name] = decision
                if not decision.allowed and len(pending) < 1024:
                    pending[name] = decision.message()[:512]
            # Bounds of the ledger's schema: 16 releases per model, 1024 models.
            if decision.allowed and release.image_digest and len(releases.get(name, [])) < 16 \
                    and (name in releases or len(releases) < 1024):
                releases.setdefault(name, []).append({
                    "version": release.version,
                    "digest": release.image_digest,
                    "owner": release.owner,
                    "dataClassification": release.data_classification,
                    "approvers": sorted(v.approver for v in decision.approved_by),
                    "validUntil": rfc3339(decision.valid_until) if decision.valid_until else "",
                })
    spec_out: dict[str, Any] = {
        "policy": policy.metadata.name,
        "enforcement": str(policy.spec.enforcement),
        "images": {
            "allowedRegistries": list(policy.spec.images.allowed_registries),
            "requireDigest": policy.spec.images.require_digest,
        },
        "blocked": blocked,
        "releases": releases,
        "pending": pending,
    }
    return spec_out, current, verdicts
