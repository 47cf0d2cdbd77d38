"""ModelApproval: one person's immutable decision on one exact release (model, version, digest)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from mlsec.api.common import (
    CustomResource,
    Decision,
    DNSSubdomain,
    PlatformRole,
    SpecModel,
    StatusModel,
    UserName,
    cel,
    cel_rules,
)
from mlsec.api.deployment import ImageDigest, Version

IMMUTABLE_MESSAGE = "spec is immutable: approvals cannot be edited, create a new one"
MAX_APPROVER_GROUPS = 128  # groups of the approver as authenticated (more are not recorded)

GroupName = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class ApprovalStage(StrEnum):
    """Stage an approval is for; only production is gated for now."""

    PRODUCTION = "production"


class ModelApprovalSpec(SpecModel):
    """The decision. Immutable: to change your mind, delete it or create a new one."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("self == oldSelf", IMMUTABLE_MESSAGE, reason="FieldValueForbidden")
        )
    )

    model_deployment: DNSSubdomain = Field(
        description="Name of the ModelDeployment in this namespace."
    )
    version: Version = Field(description="Exact model version approved.")
    image_digest: ImageDigest = Field(
        description="Exact image digest approved (sha256:<64 hex>); the approval counts only "
        "while the ModelDeployment's image is pinned to it."
    )
    stage: ApprovalStage = Field(
        default=ApprovalStage.PRODUCTION, description="Stage the release is approved for."
    )
    decision: Decision = Field(
        description="approve, or reject (a reject from a required role blocks the promotion)."
    )
    comment: Annotated[str, StringConstraints(max_length=1024)] = Field(
        default="", description="Free-text justification, kept in the audit log."
    )
    approved_by: UserName | None = Field(
        default=None,
        description="Set by admission to the authenticated user who created this object "
        "(request.userInfo.username). Any value a client writes is overwritten, and as part "
        "of the immutable spec it can never change afterwards.",
    )
    approver_groups: list[GroupName] | None = Field(
        default=None,
        max_length=MAX_APPROVER_GROUPS,
        description="Set by admission to the groups the API server authenticated the approver "
        "with (request.userInfo.groups, at most 128); any value a client writes is overwritten. "
        "Immutable with the spec.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )


class ModelApprovalStatus(StatusModel):
    """How the operator evaluated the approval."""

    approver: UserName | None = Field(
        default=None, description="Approver as verified by the operator."
    )
    platform_role: PlatformRole | None = Field(
        default=None, description="Platform role the approver holds (from LDAP membership)."
    )
    valid_until: datetime | None = Field(
        default=None, description="When the approval expires (creation + policy approvalTTL)."
    )
    counted: bool | None = Field(
        default=None, description="Whether it currently counts towards the promotion rules."
    )
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Why it counts or not, e.g. SelfApproval, Expired."
    )


class ModelApproval(CustomResource):
    """An approval or rejection of one exact model release for production."""

    kind: Literal["ModelApproval"] = "ModelApproval"
    spec: ModelApprovalSpec
    status: ModelApprovalStatus = Field(default_factory=ModelApprovalStatus)
