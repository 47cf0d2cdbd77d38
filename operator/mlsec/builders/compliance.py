"""Policy rules a ModelDeployment must satisfy before its children are applied.

Each violation names the policy rule it breaks (the field path in the MLSecurityPolicy spec), so
that a status condition, an event or an admission message can say which rule to look at:
``images.allowedRegistries: registry.evil.io/x is not in [registry.hospital.com/]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlsec.api import MLSecurityPolicy, ModelDeployment, image_digest, normalize_image
from mlsec.builders.vault import MAX_SECRET_NAME, disallowed_paths

RULE_ALLOWED_REGISTRIES = "images.allowedRegistries"
RULE_REQUIRE_DIGEST = "images.requireDigest"
RULE_ALLOWED_SECRET_PATHS = "vault.allowedSecretPaths"
RULE_VAULT = "vault"


@dataclass(frozen=True, order=True)
class Violation:
    rule: str  # the policy field, e.g. images.requireDigest
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def image_violations(md: ModelDeployment, policy: MLSecurityPolicy) -> list[Violation]:
    """The image rules ``md.spec.image`` breaks, in the order of the policy's fields.

    Registries are matched as prefixes of the fully qualified reference (``nginx`` is
    ``docker.io/library/nginx``); the policy's prefixes end in ``/``, so a prefix never matches
    a longer host name. An empty allow list allows any registry.
    """
    rules = policy.spec.images
    image = md.spec.image
    out: list[Violation] = []
    full = normalize_image(image)
    if rules.allowed_registries and not any(full.startswith(p) for p in rules.allowed_registries):
        shown = image if full == image else f"{image} ({full})"
        out.append(
            Violation(
                RULE_ALLOWED_REGISTRIES,
                f"{shown} is not in [{', '.join(rules.allowed_registries)}]",
            )
        )
    if rules.require_digest and image_digest(image) is None:
        out.append(Violation(RULE_REQUIRE_DIGEST, "image must be pinned by @sha256 digest"))
    return out


def vault_violations(md: ModelDeployment, policy: MLSecurityPolicy) -> list[Violation]:
    """Vault paths (secrets and the tls ``pki/issue/<role>``) outside vault.allowedSecretPaths.

    Without a vault section in the policy no path is allowed. The globs are Vault's: ``+`` is one
    path segment, a trailing ``*`` any suffix.
    """
    vault = policy.spec.vault
    allowed = ", ".join(vault.allowed_secret_paths) if vault else ""
    where = f"[{allowed}]" if vault else "[] (the policy has no vault section)"
    out = [
        Violation(RULE_ALLOWED_SECRET_PATHS, f"{path} is not in {where}")
        for path in disallowed_paths(md, policy)
    ]
    # The injector's annotation keys (agent-inject-template-<name>) must stay within 63 characters.
    out += [
        Violation(
            RULE_VAULT,
            f"secret name {s.name} is longer than {MAX_SECRET_NAME} characters "
            "(the Vault Agent Injector's annotation key would be too long)",
        )
        for s in md.spec.secrets
        if len(s.name) > MAX_SECRET_NAME
    ]
    return out


def violations(md: ModelDeployment, policy: MLSecurityPolicy) -> list[Violation]:
    """Every rule of ``policy`` that ``md`` breaks (image and Vault rules); empty if compliant."""
    return image_violations(md, policy) + vault_violations(md, policy)


def violation_messages(md: ModelDeployment, policy: MLSecurityPolicy) -> list[str]:
    """:func:`violations` as ``rule: message`` lines."""
    return [str(v) for v in violations(md, policy)]
