"""Roles and RoleBindings of a namespace's platform roles (DESIGN.md "Platform roles").

Pure: the LDAP sync computes who holds which role (:func:`role_members`) and this module turns that
into one Role per platform role the policy maps and one RoleBinding per such role, both owned by
the MLSecurityPolicy and carrying the desired-hash annotation so that unchanged membership causes
no write.

The Roles are least privilege on the mlsec.io kinds only. RBAC cannot see field values, so
"model_developer may not set stage production" is enforced by the admission layers, not here; the
developer and deployer Roles are therefore alike. Nobody gets Secrets, workloads (apps/*), delete,
or wildcard verbs: the operator writes the Deployments, people write ModelDeployments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from mlsec import API_VERSION, GROUP
from mlsec.api import MLSecurityPolicy, PlatformRole, RoleMapping
from mlsec.builders.meta import Obj, finish
from mlsec.builders.naming import LABEL_MANAGED_BY, MANAGED_BY

RBAC_API = "rbac.authorization.k8s.io"
RBAC_API_VERSION = f"{RBAC_API}/v1"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT = "platform-rbac"
LABEL_PLATFORM_ROLE = "mlsec.io/platform-role"
# Selects every Role and RoleBinding this module builds (the sync prunes the ones not desired).
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT}"

READ = ("get", "list", "watch")
_MD, _MA, _POL = "modeldeployments", "modelapprovals", "mlsecuritypolicies"
_ALL_MLSEC = (_MD, _MA, _POL)
_ALL_STATUS = tuple(f"{r}/status" for r in _ALL_MLSEC)


def _rule(group: str, resources: Sequence[str], verbs: Sequence[str]) -> Obj:
    return {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}


_AUTHOR = [
    _rule(GROUP, [_MD], (*READ, "create", "update", "patch")),
    _rule(GROUP, [f"{_MD}/status"], ("get",)),
]
# list/watch mean nothing on a subresource (and the operator, which must hold every permission it
# grants, has only get there): status subresources are get-only.
_READ_ALL = [_rule(GROUP, _ALL_MLSEC, READ), _rule(GROUP, _ALL_STATUS, ("get",))]
_REVIEWER = [
    *_READ_ALL,
    _rule(GROUP, [_MA], ("create",)),  # approvals are immutable: no update/patch
]
_AUDITOR = [
    *_READ_ALL,
    _rule("", ["events"], READ),
    _rule("events.k8s.io", ["events"], READ),
    # Who holds which platform role is what an auditor checks first.
    _rule(RBAC_API, ["rolebindings", "roles"], READ),
]
RULES: dict[PlatformRole, list[Obj]] = {
    PlatformRole.MODEL_DEVELOPER: _AUTHOR,
    PlatformRole.MODEL_DEPLOYER: _AUTHOR,
    PlatformRole.MODEL_APPROVER: _REVIEWER,
    PlatformRole.COMPLIANCE_REVIEWER: _REVIEWER,
    PlatformRole.AUDITOR: _AUDITOR,
}


def role_name(role: PlatformRole | str) -> str:
    """``mlsec-model-developer`` for model_developer: the name of both the Role and its binding."""
    return "mlsec-" + PlatformRole(role).value.replace("_", "-")


def role_members(group_members: Mapping[str, Iterable[str]],
                 role_mappings: Sequence[RoleMapping]) -> dict[str, list[str]]:
    """platform role → sorted user ids, for every role the mappings use (possibly with no one).

    ``group_members`` is keyed by the group DN exactly as the mapping spells it; a group missing
    from it (not found in LDAP) contributes no one.
    """
    out: dict[str, set[str]] = {}
    for mapping in role_mappings:
        users = out.setdefault(PlatformRole(mapping.platform_role).value, set())
        users.update(group_members.get(mapping.ldap_group, ()))
    return {role: sorted(users) for role, users in sorted(out.items())}


def roles_by_user(members: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Invert :func:`role_members`: user → the platform roles they hold."""
    out: dict[str, set[str]] = {}
    for role, users in members.items():
        for user in users:
            out.setdefault(user, set()).add(role)
    return {user: frozenset(roles) for user, roles in out.items()}


def policy_owner_reference(policy: MLSecurityPolicy) -> Obj:
    """A controller reference to ``policy``: deleting the policy garbage-collects its RBAC."""
    if not policy.metadata.uid or not policy.metadata.name:
        raise ValueError("MLSecurityPolicy needs metadata.name and metadata.uid to own its RBAC")
    return {
        "apiVersion": API_VERSION,
        "kind": policy.kind,
        "name": policy.metadata.name,
        "uid": policy.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(policy: MLSecurityPolicy, role: PlatformRole) -> Obj:
    if not policy.metadata.namespace:
        raise ValueError("MLSecurityPolicy has no metadata.namespace")
    return {
        "name": role_name(role),
        "namespace": policy.metadata.namespace,
        "labels": {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_COMPONENT: COMPONENT,
            LABEL_PLATFORM_ROLE: role.value,
        },
        "ownerReferences": [policy_owner_reference(policy)],
    }


def role(policy: MLSecurityPolicy, platform_role: PlatformRole) -> Obj:
    """The namespaced Role of ``platform_role``."""
    return finish({
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _meta(policy, platform_role),
        "rules": [dict(r) for r in RULES[platform_role]],
    })


def role_binding(policy: MLSecurityPolicy, platform_role: PlatformRole, users: Iterable[str]) -> Obj:
    """Binds the Role of ``platform_role`` to ``users`` (User subjects, sorted, no duplicates)."""
    return finish({
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _meta(policy, platform_role),
        "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": role_name(platform_role)},
        "subjects": [{"kind": "User", "apiGroup": RBAC_API, "name": u} for u in sorted(set(users))],
    })


def desired_rbac(policy: MLSecurityPolicy, members: Mapping[str, Iterable[str]]) -> list[Obj]:
    """Roles first (a binding to a missing Role grants nothing), then RoleBindings.

    ``members`` is :func:`role_members`' result: one Role and one RoleBinding per key.
    """
    roles = [PlatformRole(r) for r in sorted(members)]
    return [
        *(role(policy, r) for r in roles),
        *(role_binding(policy, r, members[r.value]) for r in roles),
    ]
