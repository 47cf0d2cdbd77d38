"""Types shared by the three kinds: base models, constrained strings, conditions, helpers.

Every string type here carries a maxLength and every list a maxItems: the API server estimates the
cost of CEL rules from those bounds and refuses a CRD whose rules could cost too much.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from mlsec import API_VERSION

# A JSON Schema fragment (pydantic's own JsonDict is not exported).
JsonDict = dict[str, Any]

# --- base models ------------------------------------------------------------------------------


class SpecModel(BaseModel):
    """Base of every spec part: camelCase in YAML, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
    )


class StatusModel(BaseModel):
    """Base of status parts: unknown fields (from a newer operator) are ignored, not rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
    )


def cel(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> JsonDict:
    """One `x-kubernetes-validations` entry (a CEL rule evaluated by the API server)."""
    entry: JsonDict = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def cel_rules(*entries: JsonDict) -> JsonDict:
    """`json_schema_extra` carrying CEL rules; crdgen copies it into the CRD unchanged."""
    return {"x-kubernetes-validations": list(entries)}


# --- constrained strings ----------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 4514-ish: attr=value pairs separated by commas; escaped commas are not supported.
DN_PATTERN = r"^([A-Za-z][A-Za-z0-9_-]*=[^,]+)(,[A-Za-z][A-Za-z0-9_-]*=[^,]+)*$"
# Go/CEL duration syntax (time.ParseDuration without µs): 5m, 168h, 1h30m, 1.5h.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

DNSLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
DNSSubdomain = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
]
DistinguishedName = Annotated[
    str, StringConstraints(min_length=3, max_length=512, pattern=DN_PATTERN)
]
Duration = Annotated[str, StringConstraints(min_length=2, max_length=32, pattern=DURATION_PATTERN)]
# A Kubernetes user name as authenticated by the API server (LDAP uid here); free-form by design,
# except control characters (the promotion ledger separates its fields with tabs and newlines).
USER_NAME_PATTERN = r"^[^\x00-\x1F\x7F]+$"
UserName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=USER_NAME_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=253)]


def _quantity(value: object) -> int | str:
    # One validator instead of a union, so errors name the field (no union-member suffixes).
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 64 and re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise ValueError("must be a quantity such as 4, 500m or 2Gi")


# Kubernetes resource.Quantity: an integer or a string like "500m" / "2Gi". The schema is the one
# the Kubernetes API itself publishes (anyOf integer|string under x-kubernetes-int-or-string).
Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

_DURATION_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("5m", "1h30m", "1.5h") into a timedelta; ValueError if invalid."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 168h")
    seconds = sum(float(n) * _DURATION_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def duration_between(low: str, high: str) -> Callable[[str], str]:
    """A pydantic after-validator keeping a duration within [low, high] (mirrors the CEL rule)."""
    lo, hi = parse_duration(low), parse_duration(high)

    def check(value: str) -> str:
        if not lo <= parse_duration(value) <= hi:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


def cel_duration_between(low: str, high: str) -> JsonDict:
    """The CEL twin of duration_between (CEL's duration() takes the same syntax).

    The API server still runs CEL after a pattern mismatch, so the rule skips values the pattern
    already rejected instead of adding a confusing conversion error.
    """
    return cel_rules(
        cel(
            f"!self.matches(r'{DURATION_PATTERN}') || "
            f"(duration(self) >= duration('{low}') && duration(self) <= duration('{high}'))",
            f"must be between {low} and {high}",
        )
    )


# --- shared vocabulary ------------------------------------------------------------------------


class PlatformRole(StrEnum):
    """A fixed platform role; each becomes a namespaced Role (see DESIGN.md)."""

    MODEL_DEVELOPER = "model_developer"
    MODEL_DEPLOYER = "model_deployer"
    MODEL_APPROVER = "model_approver"
    COMPLIANCE_REVIEWER = "compliance_reviewer"
    AUDITOR = "auditor"


class DataClassification(StrEnum):
    """Sensitivity of the data a model was trained on or serves."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    PII = "pii"
    PHI = "phi"


class Stage(StrEnum):
    """Lifecycle stage of a model deployment."""

    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class Decision(StrEnum):
    """What an approver decided."""

    APPROVE = "approve"
    REJECT = "reject"


# --- shared objects ---------------------------------------------------------------------------


class SecretKeyRef(SpecModel):
    """A key of a Secret in the same namespace as the referring object."""

    name: DNSSubdomain = Field(description="Name of the Secret, in the same namespace.")
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    ] = Field(description="Key within the Secret's data.")


class ConditionStatus(StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """An observation of one aspect of the object's state (the shape of metav1.Condition)."""

    type: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ] = Field(description="Type of the condition in CamelCase, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ] = Field(description="Machine-readable reason for the last transition, in CamelCase.")
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        default="", description="Human-readable details of the last transition."
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation of the object when the condition was set.",
    )


def conditions_field() -> Any:
    """The `conditions` list of a status: a list-map keyed by type, as kubectl and SSA expect."""
    return Field(
        default_factory=list,
        max_length=16,
        description="Current state of the object, one entry per condition type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


# --- resource envelope ------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="ignore"
    )

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class CustomResource(BaseModel):
    """Envelope of a whole object (e.g. a kopf body); subclasses add typed spec and status."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="ignore"
    )

    api_version: str = API_VERSION
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


# --- error reporting --------------------------------------------------------------------------


def validation_messages(exc: ValidationError, root: str | None = "spec") -> list[str]:
    """Turn a pydantic error into `spec.ldap.url: message` lines, naming each field by its path."""
    lines = []
    for err in exc.errors():
        path = root or ""
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        lines.append(f"{path}: {msg}" if path else msg)
    return lines
