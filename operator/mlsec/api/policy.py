"""MLSecurityPolicy: the per-namespace security policy (LDAP, roles, promotion, network, Vault)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from mlsec.api.common import (
    Condition,
    CustomResource,
    DataClassification,
    DistinguishedName,
    Duration,
    PlatformRole,
    SecretKeyRef,
    SpecModel,
    StatusModel,
    cel,
    cel_duration_between,
    cel_rules,
    conditions_field,
    duration_between,
)
from mlsec.api.deployment import image_digest, normalize_image

_HOST = r"([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
LDAP_URL_PATTERN = rf"^ldaps?://{_HOST}/?$"
VAULT_ADDRESS_PATTERN = rf"^https?://{_HOST}/?$"
# A Vault path (glob allowed: `*` suffix, `+` segment); no leading slash, no `.`/`..` segments.
_SEG = r"[A-Za-z0-9_*+-]+(\.[A-Za-z0-9_*+-]+)*"
VAULT_PATH_GLOB_PATTERN = rf"^{_SEG}(/{_SEG})*$"
VAULT_MOUNT_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
# A registry prefix must end with "/" so that prefix matching stops at a path boundary
# ("registry.hospital.com/" never matches "registry.hospital.com.evil.io/x").
REGISTRY_PREFIX_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?/([A-Za-z0-9._-]+/)*$"

SyncInterval = Annotated[
    Duration,
    AfterValidator(duration_between("30s", "24h")),
    Field(json_schema_extra=cel_duration_between("30s", "24h")),
]
ApprovalTTL = Annotated[
    Duration,
    AfterValidator(duration_between("1m", "8760h")),
    Field(json_schema_extra=cel_duration_between("1m", "8760h")),
]
VaultPathGlob = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=VAULT_PATH_GLOB_PATTERN)
]
VaultMount = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=VAULT_MOUNT_PATTERN)
]


class Enforcement(StrEnum):
    """enforce blocks what the policy forbids; audit decides, logs and reports but never blocks."""

    ENFORCE = "enforce"
    AUDIT = "audit"


class MTLSMode(StrEnum):
    """Istio PeerAuthentication mode for the model servers."""

    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"


class PolicyConditionType(StrEnum):
    VALID = "Valid"
    ACTIVE = "Active"  # False on every policy but the oldest when a namespace has several
    LDAP_SYNCED = "LDAPSynced"
    VAULT_READY = "VaultReady"


class LDAPConfig(SpecModel):
    """Directory the operator reads users and groups from; memberships become RoleBindings."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!self.url.startsWith('ldap://') || (has(self.startTLS) && self.startTLS)",
                "ldap:// requires startTLS: true",
                field_path=".url",
                reason="FieldValueInvalid",
            )
        )
    )

    # Declared before url so that url's validator can see it (pydantic validates in order).
    start_tls: bool = Field(
        default=False,
        alias="startTLS",
        description="Upgrade an ldap:// connection with StartTLS. Required for ldap:// URLs.",
    )
    url: Annotated[str, StringConstraints(max_length=256, pattern=LDAP_URL_PATTERN)] = Field(
        description="Directory server, e.g. ldaps://ldap.hospital.com:636. Plain ldap:// is "
        "accepted only together with startTLS: true."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="CA bundle (PEM) to verify the server certificate; system CAs if omitted.",
    )
    bind_dn: DistinguishedName = Field(
        alias="bindDN", description="DN the operator binds as (read-only access suffices)."
    )
    bind_password_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the bind password. A literal password is never accepted."
    )
    user_search_base: DistinguishedName = Field(description="Subtree searched for users.")
    group_search_base: DistinguishedName = Field(description="Subtree searched for groups.")
    user_id_attribute: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9-]*$")
    ] = Field(
        default="uid",
        description="User attribute whose value becomes the Kubernetes user name.",
    )
    group_object_class: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9-]*$")
        ]
        | None
    ) = Field(
        default=None,
        description="Object class of group entries (e.g. groupOfNames); any class if omitted.",
    )
    sync_interval: SyncInterval = Field(
        default="5m",
        description="How often memberships are re-read from LDAP (Go duration, 30s..24h).",
    )

    @field_validator("url")
    @classmethod
    def _plain_ldap_needs_starttls(cls, url: str, info: ValidationInfo) -> str:
        if url.startswith("ldap://") and not info.data.get("start_tls", False):
            raise PydanticCustomError("ldap_url", "ldap:// requires startTLS: true")
        return url


class RoleMapping(SpecModel):
    """Members of an LDAP group get a platform role in this namespace."""

    ldap_group: DistinguishedName = Field(
        description="DN of the LDAP group, e.g. cn=ml_leads,ou=groups,dc=hospital,dc=com."
    )
    platform_role: PlatformRole = Field(
        description="Platform role granted to the group's members (a namespaced Role)."
    )


class RequiredApproval(SpecModel):
    """Approvals needed from one platform role before a promotion."""

    platform_role: PlatformRole = Field(description="Role the approvers must hold.")
    count: int = Field(ge=1, le=10, description="Distinct approvers of that role needed.")
    when_data_classification: list[DataClassification] | None = Field(
        default=None,
        min_length=1,
        max_length=5,
        description="Apply this rule only to models with one of these data classifications; "
        "always if omitted.",
    )


class ProductionPromotion(SpecModel):
    """Rules for moving a ModelDeployment to stage production."""

    required_approvals: list[RequiredApproval] = Field(
        min_length=1,
        max_length=16,
        description="All applicable rules must be satisfied; a reject from a required role "
        "blocks until it is withdrawn.",
    )
    forbid_self_approval: bool = Field(
        default=True,
        description="Approvals by the requester or the model owner never count.",
    )
    approval_ttl: ApprovalTTL = Field(
        default="168h",
        alias="approvalTTL",
        description="How long an approval stays valid after it was created (Go duration).",
    )


class PromotionPolicy(SpecModel):
    """Promotion gates, per target stage."""

    production: ProductionPromotion = Field(description="Gate for stage production.")


class RateLimit(SpecModel):
    """Local token-bucket rate limit in front of each model server."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "self.burst >= self.requestsPerSecond",
                "burst must be >= requestsPerSecond",
                field_path=".burst",
                reason="FieldValueInvalid",
            )
        )
    )

    requests_per_second: int = Field(ge=1, le=100000, description="Sustained requests/second.")
    burst: int = Field(ge=1, le=1000000, description="Bucket size; at least requestsPerSecond.")

    @field_validator("burst")
    @classmethod
    def _burst_covers_rate(cls, burst: int, info: ValidationInfo) -> int:
        rps = info.data.get("requests_per_second")
        if rps is not None and burst < rps:
            raise PydanticCustomError("rate_limit", "burst must be >= requestsPerSecond")
        return burst


class NetworkPolicy(SpecModel):
    """Mesh settings applied to every model server of the namespace."""

    mtls: MTLSMode = Field(default=MTLSMode.STRICT, description="STRICT or PERMISSIVE.")
    allowed_principals: list[
        Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^\S+$")]
    ] = Field(
        default_factory=list,
        max_length=64,
        description="Istio principals (SPIFFE ids without spiffe://) allowed to call the "
        "models, e.g. cluster.local/ns/radiology-ml/sa/frontend.",
    )
    rate_limit: RateLimit | None = Field(default=None, description="No rate limit if omitted.")


class VaultConfig(SpecModel):
    """Vault (or OpenBao) used for model secrets, transit keys and certificates."""

    address: Annotated[str, StringConstraints(max_length=256, pattern=VAULT_ADDRESS_PATTERN)] = (
        Field(description="Vault API address, e.g. https://vault.hospital.com:8200.")
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None, description="CA bundle (PEM) for Vault's certificate; system CAs if omitted."
    )
    kubernetes_auth_mount: VaultMount = Field(
        default="kubernetes", description="Mount of the Kubernetes auth method."
    )
    ldap_auth_mount: VaultMount | None = Field(
        default=None,
        description="Mount of the LDAP auth method; if set, people's Vault access follows "
        "roleMappings.",
    )
    transit_mount: VaultMount = Field(
        default="transit",
        description="Mount of the transit engine holding the per-model keys of pii/phi models.",
    )
    require_audit_device: bool = Field(
        default=True,
        description="Refuse promotion to production while Vault has no enabled audit device.",
    )
    allowed_secret_paths: list[VaultPathGlob] = Field(
        default_factory=list,
        max_length=64,
        description="Vault paths (globs) models may read, e.g. secret/data/ml-models/*. "
        "No secrets allowed if empty.",
    )


class ImagePolicy(SpecModel):
    """Which container images model servers may run."""

    allowed_registries: list[
        Annotated[
            str, StringConstraints(min_length=2, max_length=253, pattern=REGISTRY_PREFIX_PATTERN)
        ]
    ] = Field(
        default_factory=list,
        max_length=32,
        description="Image prefixes ending in '/', e.g. registry.hospital.com/ml/. "
        "Any registry if empty.",
    )
    require_digest: bool = Field(
        default=True, description="Images must be pinned by digest (@sha256:...)."
    )

    def violations(self, image: str) -> list[str]:
        """Why `image` is not allowed by this policy (empty if it is)."""
        problems = []
        if self.require_digest and image_digest(image) is None:
            problems.append(f"image {image!r} is not pinned by digest")
        full = normalize_image(image)
        if self.allowed_registries and not any(full.startswith(p) for p in self.allowed_registries):
            problems.append(
                f"image {image!r} is not from an allowed registry "
                f"({', '.join(self.allowed_registries)})"
            )
        return problems


class MLSecurityPolicySpec(SpecModel):
    """Security policy of the namespace's ML platform."""

    enforcement: Enforcement = Field(
        default=Enforcement.ENFORCE,
        description="enforce: block violations. audit: decide, log and report, never block.",
    )
    ldap: LDAPConfig = Field(description="LDAP directory whose groups grant platform roles.")
    role_mappings: list[RoleMapping] = Field(
        min_length=1, max_length=64, description="LDAP group to platform role mappings."
    )
    promotion: PromotionPolicy = Field(description="Approvals required for promotions.")
    network: NetworkPolicy = Field(
        default_factory=NetworkPolicy,
        description="Mesh settings (mTLS, allowed callers, rate limit).",
        json_schema_extra={"default": {}},
    )
    vault: VaultConfig | None = Field(
        default=None, description="Vault integration; models may not use secrets if omitted."
    )
    images: ImagePolicy = Field(
        default_factory=ImagePolicy,
        description="Container image rules.",
        json_schema_extra={"default": {}},
    )


class LDAPSyncStatus(StatusModel):
    """Result of the LDAP synchronisation; rewritten only when it changes."""

    last_change: datetime | None = Field(
        default=None,
        description="When a sync last changed the bindings or this status (or first succeeded). Syncs "
        "that find LDAP unchanged write nothing; their time is in the metric "
        "mlsec_ldap_last_success_timestamp_seconds and the compliance Report's ldap.sync result.",
    )
    users: int | None = Field(default=None, ge=0, description="Users with a platform role.")
    groups: int | None = Field(default=None, ge=0, description="Mapped groups found.")


class VaultPolicyStatus(StatusModel):
    """What the operator last saw of Vault."""

    last_check: datetime | None = Field(default=None, description="When Vault was last checked.")
    audit_device: bool | None = Field(
        default=None, description="Whether Vault had an enabled audit device."
    )


class MLSecurityPolicyStatus(StatusModel):
    """Observed state of the policy."""

    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation of the spec the status refers to."
    )
    ldap: LDAPSyncStatus | None = Field(default=None, description="Last LDAP synchronisation.")
    vault: VaultPolicyStatus | None = Field(default=None, description="Last Vault check.")
    role_members: dict[str, int] = Field(
        default_factory=dict,
        max_length=8,
        description="Number of users per platform role after the last sync.",
    )


class MLSecurityPolicy(CustomResource):
    """Security policy for the ML platform of one namespace (the oldest wins if several exist)."""

    kind: Literal["MLSecurityPolicy"] = "MLSecurityPolicy"
    spec: MLSecurityPolicySpec
    status: MLSecurityPolicyStatus = Field(default_factory=MLSecurityPolicyStatus)
