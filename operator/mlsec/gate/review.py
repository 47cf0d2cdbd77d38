"""What one admission request asks of the promotion gate: pure functions over request dicts.

The kopf webhook (``mlsec.handlers.admission``) maps each AdmissionReview onto these, so the same
rules are unit-tested without a cluster and agree with the native admission policies
(``mlsec.api.admission``) and the reconcile loop:

- A ModelDeployment request is a *promotion* when its result is in production and it enters
  production, or changes what is released there (version, image, owner or data classification —
  the same fields the native gate matches).
- The requester recorded on a ModelDeployment is whoever last changed one of the release fields
  (stage included); any other write keeps the recorded requester.
- The approver of a new ModelApproval is whoever created it, with the groups the API server
  authenticated them with; a spec naming anyone else is refused if it survived mutation.
- An approval that can never count is refused when it is created (enforce mode): from someone who
  holds none of the platform roles the rules require for that release, or from the model's owner
  when self-approval is forbidden.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlsec.api.deployment import RELEASE_FIELDS
from mlsec.gate.rules import (
    PRODUCTION,
    Decision,
    PromotionRules,
    Release,
    required_roles,
)

MAX_APPROVER_GROUPS = 128  # as the ModelApproval CRD bounds spec.approverGroups
DEVELOPER, DEPLOYER = "model_developer", "model_deployer"
APPROVED_BY_ANNOTATION = "mlsec.io/approved-by"
MAX_NOT_COUNTED = 8  # approvals explained in a denial message; `kubectl mlsec status` shows all


def _field(spec: Mapping[str, Any] | None, name: str) -> str | None:
    value = (spec or {}).get(name)
    return None if value is None else str(value)


def release_changed(old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any]) -> bool:
    """True for a create, or an update of any release field (stage, version, image, …)."""
    if old_spec is None:
        return True
    return any(_field(old_spec, f) != _field(new_spec, f) for f in RELEASE_FIELDS)


def is_promotion(old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any]) -> bool:
    """Does this create/update need the production approvals?"""
    if _field(new_spec, "stage") != PRODUCTION:
        return False
    if old_spec is None or _field(old_spec, "stage") != PRODUCTION:
        return True
    return any(_field(old_spec, f) != _field(new_spec, f) for f in RELEASE_FIELDS if f != "stage")


def requester_after(old_meta: Mapping[str, Any] | None, old_spec: Mapping[str, Any] | None,
                    new_spec: Mapping[str, Any], username: str, key: str) -> str | None:
    """The requester annotation the stored object must carry: ``username`` when this request
    changes the release, else whatever was recorded before (None: no annotation)."""
    if release_changed(old_spec, new_spec):
        return username
    return ((old_meta or {}).get("annotations") or {}).get(key)


def stamped_groups(groups: Sequence[str] | None) -> list[str]:
    return [str(g) for g in (groups or ())][:MAX_APPROVER_GROUPS]


def forged_approver(spec: Mapping[str, Any], annotations: Mapping[str, Any] | None,
                    username: str, groups: Sequence[str] | None) -> str | None:
    """Why a new ModelApproval names someone other than its creator (after mutation), or None."""
    named = spec.get("approvedBy")
    if named is not None and named != username:
        return (f"spec.approvedBy names {named!r}, but the approver is whoever creates the approval "
                f"(you are {username!r}): an approval cannot name another approver")
    if "approverGroups" in spec and list(spec.get("approverGroups") or []) != stamped_groups(groups):
        return ("spec.approverGroups must be the groups the API server authenticated you with: "
                "an approval cannot claim other groups")
    in_meta = (annotations or {}).get(APPROVED_BY_ANNOTATION)
    if in_meta is not None and in_meta != username:
        return (f"annotation {APPROVED_BY_ANNOTATION} names {in_meta!r}, but you are {username!r}: "
                "an approval cannot name another approver")
    return None


def _needed_roles(release: Release | None, rules: PromotionRules) -> dict[str, tuple[int, str]]:
    if release is not None:
        return required_roles(release, rules)
    out: dict[str, tuple[int, str]] = {}
    for r in rules.requirements:  # the model does not exist (yet): any role the rules name
        if r.count > 0:
            out.setdefault(r.platform_role, (r.count, ""))
    return out


def approval_problem(username: str, roles: Iterable[str], release: Release | None,
                     rules: PromotionRules) -> str | None:
    """Why an approval by ``username`` (holding ``roles``) for ``release`` could never count, or
    None. ``release`` is the ModelDeployment as it stands with the approval's version (None if
    the model does not exist)."""
    needed = _needed_roles(release, rules)
    what = f"{release.model}" if release else "this model"
    if rules.forbid_self_approval and release is not None and release.owner == username:
        return (f"self-approval: {username} owns {what}, and the policy forbids self-approval: "
                "another person must approve")
    if not needed:
        return None  # nothing is required: the approval is harmless, the decision needs none
    held = set(roles)
    if held.isdisjoint(needed):
        wanted = " or ".join(f"{role}" + (f" ({why})" if why else "") for role, (_, why) in needed.items())
        have = ", ".join(sorted(held)) or "none"
        return (f"{username} holds no platform role that approves {what} for production "
                f"(needs {wanted}; {username} has: {have})")
    return None


def role_problem(username: str, roles: Iterable[str]) -> str | None:
    """A model_developer (without model_deployer) may not move a model to production."""
    held = set(roles)
    if DEVELOPER in held and DEPLOYER not in held:
        return (f"{username} is a {DEVELOPER}: only a {DEPLOYER} may move a ModelDeployment to "
                "production or change its release there")
    return None


def denial_message(name: str, new_spec: Mapping[str, Any], decision: Decision) -> str:
    """What is missing, then why the approvals that exist do not count."""
    version = _field(new_spec, "version") or "?"
    text = f"promotion of {name} version {version} to production: {decision.message()}"
    unused = [v for v in decision.verdicts if not v.counted and v.decision == "approve"]
    if unused:
        shown = "; ".join(f"{v.name} by {v.approver or '?'}: {v.reason}" for v in unused[:MAX_NOT_COUNTED])
        more = f" (+{len(unused) - MAX_NOT_COUNTED} more)" if len(unused) > MAX_NOT_COUNTED else ""
        text += f". Not counted: {shown}{more}"
    return text
