"""What Vault holds for one ModelDeployment, and the pod annotations that use it (pure).

- an ACL policy granting exactly ``read`` on each listed secret path (kv v2 data paths,
  ``database/creds/<role>``) and ``update`` on ``pki/issue/<role>`` when tls is set;
- a Kubernetes-auth role bound to exactly the model's ServiceAccount and namespace, audience
  ``vault``, with short-lived tokens carrying that policy;
- the Vault Agent Injector annotations of the pod template.

Both Vault objects are called ``mlsec-<namespace>-<name>``. That name alone can be ambiguous
(namespace ``a-b`` + model ``c`` vs. namespace ``a`` + model ``b-c``), so the role's binding is what
says who owns a name: :func:`owned_by` lets the handler refuse a name another namespace holds.

Everything here is deterministic: the annotations feed the Deployment's desired hash (a change
rolls the pods) and the policy text is compared byte for byte with what Vault holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from mlsec.api import DataClassification, MLSecurityPolicy, ModelDeployment, TLSSpec
from mlsec.builders.naming import namespace_of, service_account_name

NAME_PREFIX = "mlsec"
AUDIENCE = "vault"
# Short-lived tokens: the agent sidecar renews up to the max and then logs in again. Dynamic
# database leases are children of the token, so they rotate at least hourly as well.
TOKEN_TTL_SECONDS = 15 * 60
TOKEN_MAX_TTL_SECONDS = 60 * 60
PKI_MOUNT = "pki"
TRANSIT_MOUNT = "transit"
# Models trained on or serving these get their own transit key (kept when the model is deleted).
TRANSIT_CLASSIFICATIONS = frozenset({DataClassification.PII, DataClassification.PHI})
# The model pod runs as the distroless "nonroot" user (mlsec.builders.workload.NONROOT_ID; not
# imported because workload imports this module). The agent writes the secret files as the same
# user, so the model can read them and nothing runs as root.
AGENT_UID = 65532
AGENT_GID = 65532

INJECT = "vault.hashicorp.com/"
ANNOTATION_PREFIXES = ("agent-inject-secret-", "agent-inject-template-", "agent-inject-perms-")
# An annotation key's name part is at most 63 characters: "agent-inject-template-" leaves 41.
MAX_SECRET_NAME = 63 - len("agent-inject-template-")
TLS_CERT_FILE = "tls.crt"  # secret names are DNS labels (no dots): these never collide
TLS_KEY_FILE = "tls.key"
TLS_SECRET_MOUNT = "/vault/tls"  # where the injector mounts vault.hashicorp.com/tls-secret


class SecretKind(StrEnum):
    """How a secret path is read and rendered."""

    KV = "kv"  # kv v2: <mount>/data/<path>, fields under .Data.data
    DATABASE = "database"  # dynamic credentials: <mount>/creds/<role>, username and password
    GENERIC = "generic"  # anything else readable (kv v1, ...): fields under .Data


def secret_kind(path: str) -> SecretKind:
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "data":
        return SecretKind.KV
    if len(parts) == 3 and parts[1] == "creds":
        return SecretKind.DATABASE
    return SecretKind.GENERIC


# --- names --------------------------------------------------------------------------------------


def vault_name(md: ModelDeployment) -> str:
    """``mlsec-<namespace>-<name>``: the name of both the policy and the role."""
    if not md.metadata.name:
        raise ValueError("ModelDeployment has no metadata.name")
    return f"{NAME_PREFIX}-{namespace_of(md)}-{md.metadata.name}"


def policy_name(md: ModelDeployment) -> str:
    return vault_name(md)


def role_name(md: ModelDeployment) -> str:
    return vault_name(md)


def needs_vault(md: ModelDeployment) -> bool:
    """Whether the model reads anything from Vault (secrets or a serving certificate)."""
    return bool(md.spec.secrets) or md.spec.tls is not None


def needs_service_account_token(md: ModelDeployment) -> bool:
    """Whether the pods need their ServiceAccount token: the Vault agent logs in with it."""
    return needs_vault(md)


# --- the ACL policy ---------------------------------------------------------------------------


def pki_issue_path(tls: TLSSpec) -> str:
    return f"{PKI_MOUNT}/issue/{tls.pki_role}"


def grants(md: ModelDeployment) -> dict[str, list[str]]:
    """Each path the model may use → its capabilities: ``read`` for secrets, ``update`` to issue
    a certificate. Sorted by path; a path listed twice gets one entry."""
    out: dict[str, set[str]] = {}
    for s in md.spec.secrets:
        out.setdefault(s.path, set()).add("read")
    if md.spec.tls is not None:
        out.setdefault(pki_issue_path(md.spec.tls), set()).add("update")
    return {path: sorted(caps) for path, caps in sorted(out.items())}


def requested_paths(md: ModelDeployment) -> list[str]:
    """Every Vault path the model asks for (checked against vault.allowedSecretPaths)."""
    return list(grants(md))


def needs_transit_key(md: ModelDeployment) -> bool:
    """pii/phi models get their own transit key (``mlsec-<namespace>-<model>``)."""
    return md.spec.data_classification in TRANSIT_CLASSIFICATIONS


def transit_key_name(md: ModelDeployment) -> str:
    return vault_name(md)


def transit_grants(md: ModelDeployment, mount: str = TRANSIT_MOUNT) -> dict[str, list[str]]:
    """Encrypt and decrypt with exactly the model's own key (nothing on other keys, no key
    reads, no export, no rotation): empty unless the model is pii/phi."""
    if not needs_transit_key(md):
        return {}
    key = transit_key_name(md)
    return {f"{mount}/decrypt/{key}": ["update"], f"{mount}/encrypt/{key}": ["update"]}


def policy_hcl(md: ModelDeployment, transit_mount: str = TRANSIT_MOUNT) -> str:
    """The policy text. Paths cannot hold quotes or braces (API pattern): nothing to escape."""
    lines = [
        f"# Managed by mlsec-operator for ModelDeployment {namespace_of(md)}/{md.metadata.name}.",
        "# Rewritten on every change: edit the ModelDeployment's secrets or tls instead.",
    ]
    for path, caps in {**grants(md), **transit_grants(md, transit_mount)}.items():
        quoted = ", ".join(f'"{c}"' for c in caps)
        lines += ["", f'path "{path}" {{', f"  capabilities = [{quoted}]", "}"]
    return "\n".join(lines) + "\n"


# --- the Kubernetes-auth role -----------------------------------------------------------------


def role_definition(md: ModelDeployment) -> dict[str, Any]:
    """The role's fields as Vault's API takes them (and returns them on read)."""
    return {
        "bound_service_account_names": [service_account_name(md)],
        "bound_service_account_namespaces": [namespace_of(md)],
        "audience": AUDIENCE,
        # The identity alias follows the ServiceAccount's uid: a ServiceAccount deleted and
        # re-created under the same name is a new entity in Vault.
        "alias_name_source": "serviceaccount_uid",
        "token_policies": [policy_name(md)],
        "token_ttl": TOKEN_TTL_SECONDS,
        "token_max_ttl": TOKEN_MAX_TTL_SECONDS,
        "token_type": "default",
    }


def _normal(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return sorted(str(v) for v in value)
    if value is None:
        return None
    return value if isinstance(value, str) else int(value)


def role_differences(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[str]:
    """Fields of ``desired`` that ``live`` (a role as read from Vault) lacks or has otherwise.

    Only our fields count: Vault returns many more (defaults) which we leave alone.
    """
    if live is None:
        return sorted(desired)
    out = []
    for key, want in desired.items():
        have = live.get(key)
        try:
            same = _normal(have) == _normal(want)
        except (TypeError, ValueError):
            same = False
        if not same:
            out.append(key)
    return sorted(out)


def owned_by(live_role: Mapping[str, Any], md: ModelDeployment) -> bool:
    """Whether a role read from Vault is this model's, not a same-named one of another namespace.

    Names can only collide across namespaces, and the other model's role is bound to its own
    namespace. A role bound to ours (or widened to ``*`` by hand) is ours, to repair.
    """
    bound = [str(n) for n in live_role.get("bound_service_account_namespaces") or []]
    return namespace_of(md) in bound or "*" in bound


# --- vault.allowedSecretPaths -----------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Vault's policy path globs: ``+`` is exactly one segment, a trailing ``*`` any suffix.

    A ``*`` anywhere else is a literal character, as in Vault; secret paths cannot contain one,
    so such a pattern matches nothing (fail closed).
    """
    prefix = pattern.endswith("*")
    body = pattern[:-1] if prefix else pattern
    parts = ["[^/]+" if seg == "+" else re.escape(seg) for seg in body.split("/")]
    return re.compile("/".join(parts) + (".*" if prefix else ""))


def path_allowed(path: str, allowed: Sequence[str]) -> bool:
    return any(_glob_regex(p).fullmatch(path) for p in allowed)


def disallowed_paths(md: ModelDeployment, policy: MLSecurityPolicy) -> list[str]:
    """The paths ``md`` asks for that the policy does not allow (all of them without vault)."""
    vault = policy.spec.vault
    allowed = vault.allowed_secret_paths if vault else []
    return [p for p in requested_paths(md) if not path_allowed(p, allowed)]


# --- injector annotations ---------------------------------------------------------------------


def _template(path: str, kind: SecretKind) -> str:
    """A consul-template rendering ``path`` as a properties file: ``key=value`` lines.

    Go templates range over a map in key order, so the file is stable.
    """
    if kind is SecretKind.DATABASE:
        body = "username={{ .Data.username }}\npassword={{ .Data.password }}\n"
    else:
        data = ".Data.data" if kind is SecretKind.KV else ".Data"
        body = f"{{{{ range $k, $v := {data} }}}}{{{{ $k }}}}={{{{ $v }}}}\n{{{{ end }}}}"
    return f'{{{{ with secret "{path}" }}}}{body}{{{{ end }}}}'


def _pki_template(tls: TLSSpec, fields: str) -> str:
    # ``secret`` (a write with parameters), not ``pkiCert``: identical ``secret`` calls are one
    # dependency shared by both templates, so cert and key come from the same issue. pkiCert's
    # dependency is per destination file: two templates would get two different certificates.
    return (
        f'{{{{ with secret "{pki_issue_path(tls)}" "common_name={tls.common_name}" }}}}'
        f"{fields}{{{{ end }}}}"
    )


def vault_annotations(md: ModelDeployment, policy: MLSecurityPolicy) -> dict[str, str]:
    """Pod annotations asking the Vault Agent Injector for ``md``'s secrets (sorted keys).

    Empty when the model needs no Vault, or when the policy has no vault section (then the
    compliance check refuses the model anyway).
    """
    vault = policy.spec.vault
    if not needs_vault(md) or vault is None:
        return {}
    a = {
        "agent-inject": "true",
        "role": role_name(md),
        "auth-path": f"auth/{vault.kubernetes_auth_mount}",
        "service": vault.address.rstrip("/"),
        "agent-run-as-user": str(AGENT_UID),
        "agent-run-as-group": str(AGENT_GID),
        # Run the agent's init container before Istio's: while istio-init's iptables rules send
        # traffic to a sidecar that is not running yet, the agent could not reach Vault.
        "agent-init-first": "true",
    }
    if vault.ca_secret_ref is not None:
        a["tls-secret"] = vault.ca_secret_ref.name
        a["ca-cert"] = f"{TLS_SECRET_MOUNT}/{vault.ca_secret_ref.key}"
    kinds = set()
    for s in md.spec.secrets:
        kind = secret_kind(s.path)
        kinds.add(kind)
        a[f"agent-inject-secret-{s.name}"] = s.path
        a[f"agent-inject-template-{s.name}"] = _template(s.path, kind)
    tls = md.spec.tls
    if tls is not None:
        a[f"agent-inject-secret-{TLS_CERT_FILE}"] = pki_issue_path(tls)
        a[f"agent-inject-template-{TLS_CERT_FILE}"] = _pki_template(
            tls, "{{ .Data.certificate }}\n{{ .Data.issuing_ca }}\n")
        a[f"agent-inject-secret-{TLS_KEY_FILE}"] = pki_issue_path(tls)
        a[f"agent-inject-template-{TLS_KEY_FILE}"] = _pki_template(tls, "{{ .Data.private_key }}\n")
        a[f"agent-inject-perms-{TLS_KEY_FILE}"] = "0400"
    # Static secrets are rendered once by the init container and need no sidecar. Database
    # leases die with the init agent's token (15 minutes) and certificates expire: those need the
    # sidecar to renew and re-render.
    if tls is None and SecretKind.DATABASE not in kinds:
        a["agent-pre-populate-only"] = "true"
    return {INJECT + k: v for k, v in sorted(a.items())}
