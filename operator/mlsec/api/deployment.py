"""ModelDeployment: one served model version, its stage and the Vault secrets it may read."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from mlsec.api.common import (
    DNS_SUBDOMAIN_PATTERN,
    Condition,
    CustomResource,
    DataClassification,
    Decision,
    DNSLabel,
    DNSSubdomain,
    PlatformRole,
    Quantity,
    SpecModel,
    Stage,
    StatusModel,
    UserName,
    cel,
    cel_rules,
    conditions_field,
)

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
PKI_ROLE_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
IMAGE_DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
# A Vault path read by a model: no leading slash, no empty, `.` or `..` segments, no globs.
_SEG = r"[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*"
VAULT_PATH_PATTERN = rf"^{_SEG}(/{_SEG})*$"

Version = Annotated[str, StringConstraints(max_length=63, pattern=VERSION_PATTERN)]
Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]
ImageDigest = Annotated[str, StringConstraints(max_length=71, pattern=IMAGE_DIGEST_PATTERN)]

# The requester of a release: stamped at admission (natively by mlsec-deployment-stamp, or by the
# webhook) with whoever last changed one of RELEASE_FIELDS; any other write keeps it.
REQUESTED_BY = "mlsec.io/requested-by"
RELEASE_FIELDS = ("stage", "version", "image", "owner", "dataClassification")

# Stage changes that are never legal, whatever the approvals: a model reaches production only
# from staging (or by re-deploying production with a new version, which the gate checks).
FORBIDDEN_TRANSITIONS = frozenset(
    {(Stage.DEVELOPMENT, Stage.PRODUCTION), (Stage.ARCHIVED, Stage.PRODUCTION)}
)


def stage_transition_error(old: Stage | str, new: Stage | str) -> str | None:
    """The CEL transition rule on spec.stage, for the webhook and the reconcile loop."""
    if (Stage(old), Stage(new)) in FORBIDDEN_TRANSITIONS:
        return f"cannot move from {old} to {new} directly; promote through staging"
    return None


# --- image references -------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"@(sha256:[a-f0-9]{64})$")


def image_digest(image: str) -> str | None:
    """The `sha256:<hex>` digest an image reference is pinned to, or None (tags don't count)."""
    m = _DIGEST_RE.search(image)
    return m.group(1) if m else None


def _split_registry(image: str) -> tuple[str | None, str]:
    name = image.split("@", 1)[0]
    first, sep, rest = name.partition("/")
    # Docker's rule: the first component is a registry if it looks like a host.
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, name


def image_registry(image: str) -> str:
    """Registry host[:port] of an image reference; docker.io for short names like `nginx`."""
    return _split_registry(image)[0] or "docker.io"


def normalize_image(image: str) -> str:
    """Fully qualified reference (registry/path[:tag][@digest]) for registry prefix matching."""
    registry, rest = _split_registry(image)
    if registry is None:
        rest = image if "/" in image.split("@", 1)[0] else f"library/{image}"
        return f"docker.io/{rest}"
    return image


# --- spec -------------------------------------------------------------------------------------


class VaultSecret(SpecModel):
    """A Vault secret rendered into the model's pod by the Vault Agent Injector."""

    name: DNSLabel = Field(
        description="File name under /vault/secrets/ in the model container; unique per model."
    )
    path: Annotated[str, StringConstraints(max_length=512, pattern=VAULT_PATH_PATTERN)] = Field(
        description="Vault path read, e.g. secret/data/ml-models/mri-classifier; must be allowed "
        "by the policy's vault.allowedSecretPaths. No leading slash, no '..'."
    )


class ResourceRequirements(SpecModel):
    """Compute resources of the model container (as in a Pod's resources)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Minimum resources, e.g. cpu: 500m."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Maximum resources, e.g. memory: 4Gi."
    )


class TLSSpec(SpecModel):
    """Serving certificate issued by Vault's PKI engine."""

    pki_role: Annotated[str, StringConstraints(max_length=128, pattern=PKI_ROLE_PATTERN)] = Field(
        description="PKI role to issue from (pki/issue/<role> must be allowed)."
    )
    common_name: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=DNS_SUBDOMAIN_PATTERN)
    ] = Field(description="Certificate common name, e.g. model-server.hospital.com.")


class ModelDeploymentSpec(SpecModel):
    """Desired state of a served model."""

    model: DNSLabel = Field(description="Model name (DNS label), e.g. mri-classifier.")
    version: Version = Field(description='Model version, e.g. "3" or 1.4.0.')
    image: Image = Field(
        description="Container image of the model server. The policy decides which registries "
        "are allowed and whether a digest (@sha256:...) is required."
    )
    stage: Stage = Field(
        description="development | staging | production | archived. production requires the "
        "approvals of the namespace's MLSecurityPolicy, and is reachable only from staging "
        "(or production).",
        json_schema_extra=cel_rules(
            cel(
                "!(self == 'production' && (oldSelf == 'development' || oldSelf == 'archived'))",
                message_expression="'cannot move from ' + oldSelf + "
                "' to production directly; promote through staging'",
                reason="FieldValueForbidden",
            )
        ),
    )
    data_classification: DataClassification = Field(
        description="public | internal | confidential | pii | phi. pii and phi models get their "
        "own Vault transit key and may need extra approvals."
    )
    owner: UserName = Field(description="Kubernetes user name of the model owner.")
    replicas: int = Field(default=1, ge=0, le=100, description="Number of model server pods.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the model server serves on.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the model container."
    )
    secrets: list[VaultSecret] = Field(
        default_factory=list,
        max_length=32,
        description="Vault secrets delivered to the pod; the model's Vault role can read exactly "
        "these paths.",
        json_schema_extra=cel_rules(
            cel("self.all(s, self.exists_one(t, t.name == s.name))", "secret names must be unique")
        ),
    )
    tls: TLSSpec | None = Field(default=None, description="Serving certificate from Vault PKI.")

    @field_validator("secrets")
    @classmethod
    def _unique_secret_names(cls, secrets: list[VaultSecret]) -> list[VaultSecret]:
        seen: set[str] = set()
        for s in secrets:
            if s.name in seen:
                raise PydanticCustomError(
                    "duplicate", "secret names must be unique: {name}", {"name": s.name}
                )
            seen.add(s.name)
        return secrets


# --- status -----------------------------------------------------------------------------------


class DeploymentConditionType(StrEnum):
    READY = "Ready"
    POLICY_COMPLIANT = "PolicyCompliant"
    PROMOTION_APPROVED = "PromotionApproved"
    VAULT_READY = "VaultReady"


class ApprovalSummary(StatusModel):
    """One ModelApproval as the promotion gate saw it (the full history is in the audit log)."""

    name: DNSSubdomain = Field(description="Name of the ModelApproval.")
    approver: UserName | None = Field(default=None, description="Who approved or rejected.")
    platform_role: PlatformRole | None = Field(
        default=None, description="Role the approver held when evaluated."
    )
    decision: Decision = Field(description="approve or reject.")
    counted: bool = Field(default=False, description="Whether it counted towards the rules.")
    reason: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="Why it did or did not count."
    )


class VaultBindingStatus(StatusModel):
    """What the operator wrote to Vault for this model."""

    role: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Kubernetes auth role bound to the model's ServiceAccount."
    )
    policy: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Vault policy granting read on the listed secret paths."
    )
    transit_key: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Transit key of a pii/phi model (kept after deletion)."
    )


class ModelDeploymentStatus(StatusModel):
    """Observed state of the model deployment."""

    stage: Stage | None = Field(default=None, description="Stage currently rolled out.")
    conditions: list[Condition] = conditions_field()
    approvals: list[ApprovalSummary] = Field(
        default_factory=list,
        max_length=32,
        description="Approvals considered for the current version and image.",
    )
    missing_approvals: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list,
        max_length=16,
        description="What the promotion rules still require, e.g. 'compliance_reviewer: 1 more'.",
    )
    promotion_pending: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None,
        description="Why the current spec may not go to production yet (what is missing), as "
        "the API server's promotion gate shows it when it refuses a promotion; empty once approved.",
    )
    requested_by: UserName | None = Field(
        default=None, description="User who requested the current stage, version or image."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation of the spec the status refers to."
    )
    last_applied_version: Version | None = Field(
        default=None, description="Version of the rollout currently applied."
    )
    last_applied_image: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="Image of the rollout currently applied."
    )
    children: dict[str, Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Names of the objects created for this model, by kind.",
    )
    vault: VaultBindingStatus | None = Field(default=None, description="Vault objects written.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the rolled-out stage last changed."
    )


class ModelDeployment(CustomResource):
    """A model version served in this namespace, promoted through stages under the policy."""

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
