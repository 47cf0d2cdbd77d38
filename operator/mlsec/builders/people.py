"""People's Vault access, derived from one mapping (pure).

One ``roleMappings`` entry decides what an LDAP group may do in Kubernetes and in Vault. For each
namespace and mapped platform role there is one ACL policy ``mlsec-<namespace>-<role>``, computed
from the namespace's ModelDeployments only (their kv v2 secret paths and stages):

- ``model_developer``: ``create``, ``update``, ``read`` on the kv data of models not in
  production; ``read`` only on those in production (their configuration is frozen once promoted:
  a path shared with a production model is frozen too);
- ``model_deployer``: ``read`` on the kv data of every model of the namespace;
- ``model_approver``, ``compliance_reviewer``: ``list`` and ``read`` on the kv *metadata* of those
  paths, never their values;
- ``auditor`` and anything else: no Vault policy.

The LDAP auth method's group entries (``auth/<mount>/groups/<cn>``) then carry, for each group named
in any namespace's roleMappings, the union of the people policies it earns. Policy names that mlsec
did not write are kept on the entry (:func:`merge_group_policies`).

Role names contain an underscore and model names (DNS labels) cannot, so a people policy never
shares its name with a model's ``mlsec-<namespace>-<model>`` policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mlsec.api import MLSecurityPolicy, ModelDeployment, PlatformRole, Stage
from mlsec.builders.naming import namespace_of
from mlsec.builders.vault import NAME_PREFIX, SecretKind, secret_kind

ROLE_CAPABILITIES: dict[PlatformRole, str] = {
    PlatformRole.MODEL_DEVELOPER: "create/update/read on models not in production, read in production",
    PlatformRole.MODEL_DEPLOYER: "read on every model's kv data",
    PlatformRole.MODEL_APPROVER: "list/read kv metadata only",
    PlatformRole.COMPLIANCE_REVIEWER: "list/read kv metadata only",
}
PEOPLE_ROLES: tuple[PlatformRole, ...] = tuple(ROLE_CAPABILITIES)
_PEOPLE_NAME = re.compile(
    rf"^{NAME_PREFIX}-(?P<namespace>[a-z0-9][a-z0-9-]*)-(?P<role>"
    + "|".join(r.value for r in PEOPLE_ROLES) + ")$")


def people_policy_name(namespace: str, role: PlatformRole | str) -> str:
    return f"{NAME_PREFIX}-{namespace}-{PlatformRole(role).value}"


def is_people_policy(name: str) -> bool:
    """Whether ``name`` is a policy mlsec writes for people (``mlsec-<ns>-<role>``)."""
    return _PEOPLE_NAME.match(name) is not None


def namespace_of_people_policy(name: str) -> str | None:
    m = _PEOPLE_NAME.match(name)
    return m.group("namespace") if m else None


def group_cn(dn: str) -> str:
    """The LDAP auth method's group name for a group DN: its first RDN value (groupattr=cn),
    lower-cased as Vault stores group entries (their names are case-insensitive)."""
    first = dn.split(",", 1)[0]
    _, _, value = first.partition("=")
    return (value or first).strip().lower()


def metadata_path(data_path: str) -> str:
    """``secret/data/ml-models/x`` → ``secret/metadata/ml-models/x`` (kv v2)."""
    mount, _, rest = data_path.partition("/data/")
    return f"{mount}/metadata/{rest}"


@dataclass(frozen=True, slots=True)
class KvUse:
    """All the people policies read of one model: its namespace, its kv v2 data paths, and
    whether it is in production (by spec or status). The sync lists every model of the cluster:
    this, not the model, is what it keeps of each."""

    namespace: str
    paths: tuple[str, ...]
    production: bool


def kv_use(md: ModelDeployment) -> KvUse:
    status_stage = md.status.stage if md.status is not None else None
    paths = tuple(s.path for s in md.spec.secrets if secret_kind(s.path) is SecretKind.KV)
    production = md.spec.stage is Stage.PRODUCTION or status_stage is Stage.PRODUCTION
    return KvUse(namespace_of(md), paths, production)


Model = ModelDeployment | KvUse


def _use(m: Model) -> KvUse:
    return m if isinstance(m, KvUse) else kv_use(m)


def kv_paths(models: Iterable[Model]) -> dict[str, bool]:
    """Every kv v2 data path the models list → whether any model listing it is in production."""
    out: dict[str, bool] = {}
    for use in map(_use, models):
        for path in use.paths:
            out[path] = out.get(path, False) or use.production
    return dict(sorted(out.items()))


def role_grants(role: PlatformRole, models: Sequence[Model]) -> dict[str, list[str]]:
    """Path → capabilities of ``role``'s people policy for the namespace's ``models``."""
    paths = kv_paths(models)
    if role is PlatformRole.MODEL_DEVELOPER:
        return {p: ["read"] if prod else ["create", "read", "update"] for p, prod in paths.items()}
    if role is PlatformRole.MODEL_DEPLOYER:
        return {p: ["read"] for p in paths}
    if role in (PlatformRole.MODEL_APPROVER, PlatformRole.COMPLIANCE_REVIEWER):
        return dict(sorted({metadata_path(p): ["list", "read"] for p in paths}.items()))
    return {}


def people_policy_hcl(namespace: str, role: PlatformRole, models: Sequence[Model]) -> str:
    """The policy text (deterministic: compared byte for byte with what Vault holds).

    A role with nothing to grant still gets its policy (comments only): the group entry keeps a
    stable list of names while models come and go.
    """
    lines = [
        f"# Managed by mlsec-operator: platform role {role.value} in namespace {namespace}:",
        f"# {ROLE_CAPABILITIES[role]}.",
        "# Rewritten on every change of the namespace's models and roleMappings.",
    ]
    for path, caps in role_grants(role, models).items():
        quoted = ", ".join(f'"{c}"' for c in caps)
        lines += ["", f'path "{path}" {{', f"  capabilities = [{quoted}]", "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PeopleState:
    """What Vault should hold for people, across all namespaces."""

    policies: dict[str, str]  # policy name → text
    groups: dict[str, dict[str, frozenset[str]]]  # ldap mount → group cn → policy names
    namespaces: frozenset[str]  # namespaces whose people access is managed


def desired(policies: Iterable[MLSecurityPolicy],
            models_by_namespace: Mapping[str, Sequence[Model]]) -> PeopleState:
    """From the active policy of each namespace (with ``vault.ldapAuthMount`` set) and the
    namespace's models: every people policy and every group entry's mlsec names."""
    texts: dict[str, str] = {}
    groups: dict[str, dict[str, set[str]]] = {}
    managed: set[str] = set()
    for pol in policies:
        vault = pol.spec.vault
        if vault is None or vault.ldap_auth_mount is None:
            continue
        ns = str(pol.metadata.namespace)
        managed.add(ns)
        models = [u for u in map(_use, models_by_namespace.get(ns, ())) if u.namespace == ns]
        for mapping in pol.spec.role_mappings:
            role = PlatformRole(mapping.platform_role)
            if role not in ROLE_CAPABILITIES:
                continue
            name = people_policy_name(ns, role)
            texts.setdefault(name, people_policy_hcl(ns, role, models))
            groups.setdefault(vault.ldap_auth_mount, {}).setdefault(
                group_cn(mapping.ldap_group), set()).add(name)
    return PeopleState(
        policies=dict(sorted(texts.items())),
        groups={m: {g: frozenset(n) for g, n in sorted(gs.items())} for m, gs in sorted(groups.items())},
        namespaces=frozenset(managed),
    )


def merge_group_policies(live: Sequence[str], ours: Iterable[str]) -> list[str]:
    """The group entry's new policy list: everything mlsec did not write, plus ``ours``.

    Any ``mlsec-<ns>-<role>`` name on the entry is mlsec's (and dropped unless still earned); every
    other name (a hand-added policy) is kept as it was. Sorted, without duplicates.
    """
    kept = {p.strip() for p in live if p.strip() and not is_people_policy(p.strip())}
    return sorted(kept | set(ours))
