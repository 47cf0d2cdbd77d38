"""PromotionLedger: what the operator found approved in a namespace, for the API server to enforce.

One object per namespace, named ``promotion-ledger``, written only by the operator's
ServiceAccount (RBAC, plus the ValidatingAdmissionPolicy ``mlsec-ledger-guard``: not even a cluster
admin may write it). It is the params object of the native promotion gate and image rules
(``mlsec.api.admission``): the API server compares each production request against it, and shows
its ``pending`` text when it refuses one. The operator recomputes it when approvals, policies or
LDAP memberships change, and removes releases whose approvals expired.

Every map, list and string is bounded: the API server estimates the cost of the admission
policies' CEL expressions from these bounds.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from mlsec.api.common import (
    CustomResource,
    DataClassification,
    DNSSubdomain,
    SpecModel,
    UserName,
)
from mlsec.api.deployment import ImageDigest, Version
from mlsec.api.policy import Enforcement, ImagePolicy

LEDGER_NAME = "promotion-ledger"
MAX_MODELS = 1024  # ModelDeployments per namespace with an approved release / a pending message
MAX_RELEASES = 16  # approved (version, digest) pairs kept per ModelDeployment
MAX_APPROVERS = 32  # people whose approvals counted for one release
MAX_MESSAGE = 512  # a denial message, not a report: the webhook and `kubectl mlsec status` explain

# RFC 3339 in UTC as the operator writes it, or "" (no expiry known).
VALID_UNTIL_PATTERN = r"^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"

Message = Annotated[str, StringConstraints(max_length=MAX_MESSAGE)]


class LedgerRelease(SpecModel):
    """One release of a ModelDeployment that satisfied the promotion rules."""

    version: Version = Field(description="Model version approved (spec.version).")
    digest: ImageDigest = Field(
        description="Image digest approved (sha256:<64 hex>); the image must end in @<digest>."
    )
    owner: UserName = Field(description="spec.owner the approvals were evaluated against.")
    data_classification: DataClassification = Field(
        description="spec.dataClassification the approvals were evaluated against."
    )
    approvers: list[UserName] = Field(
        default_factory=list,
        max_length=MAX_APPROVERS,
        description="People whose approvals counted; none of them may promote this release.",
        json_schema_extra={"default": []},
    )
    valid_until: Annotated[
        str, StringConstraints(max_length=32, pattern=VALID_UNTIL_PATTERN)
    ] = Field(
        default="",
        description="When the first counted approval expires (RFC 3339, UTC); the operator "
        "removes the release then. Empty if unknown.",
    )


class PromotionLedgerSpec(SpecModel):
    """The verdicts the admission policies read; the operator writes all of it."""

    policy: DNSSubdomain = Field(description="Name of the MLSecurityPolicy in force.")
    enforcement: Enforcement = Field(
        default=Enforcement.ENFORCE,
        description="Copied from the policy. audit: the native policies warn, never deny.",
    )
    images: ImagePolicy = Field(
        default_factory=ImagePolicy,
        description="Copied from the policy: the image rules the API server enforces natively.",
        json_schema_extra={"default": {}},
    )
    blocked: Message = Field(
        default="",
        description="Namespace-wide reason to refuse every promotion (e.g. Vault has no audit "
        "device); empty if none.",
    )
    # Keys are ModelDeployment names (typed str: a constrained key type would need
    # patternProperties, which CRD schemas do not allow).
    releases: dict[
        str,
        Annotated[list[LedgerRelease], Field(max_length=MAX_RELEASES)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_MODELS,
        description="Approved releases by ModelDeployment name.",
        json_schema_extra={"default": {}},
    )
    pending: dict[str, Message] = Field(
        default_factory=dict,
        max_length=MAX_MODELS,
        description="By ModelDeployment name: why its current spec is not approved (what is "
        "still missing), shown when a promotion is refused.",
        json_schema_extra={"default": {}},
    )


class PromotionLedger(CustomResource):
    """Approved releases of the namespace's models; written only by the operator (no status)."""

    kind: Literal["PromotionLedger"] = "PromotionLedger"
    spec: PromotionLedgerSpec
