"""PromotionLedger: what the operator found approved in a namespace, for the API server to enforce.

One object per namespace, named ``promotion-ledger``, written only by the operator's
ServiceAccount (RBAC, plus the ValidatingAdmissionPolicy ``mlsec-ledger-guard``: not even a cluster
admin may write it). It is the params object of the native promotion gate and image rules
(``mlsec.api.admission``): the API server compares each production request against it. The
operator recomputes it when approvals, policies or LDAP memberships change, and removes releases
whose approvals expired.

It is kept small on purpose. Measured on kube-apiserver 1.37 (100 concurrent creates): the API
server converts the whole params object on every admission request, so its CPU cost grows with
the object — 1,000 releases as lists of objects cost +140 ms per create, 1,000 pending messages
as a map +50 ms, the same as packed strings still +25 ms (it grows with bytes too). So
``releases`` is one packed string (a line per approved release, tab-separated:
:func:`pack_releases`), and the "what is missing" text of unapproved models is not here but in
each ModelDeployment's ``status.promotionPending``, which the gate reads from ``oldObject``
(status is written only by the operator too). The policies find a release with ``indexOf`` on a
key that ends in a tab; no field may contain a tab or a newline, so a key matches exactly one
whole entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

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
MAX_PACKED = 786_432  # bytes of each packed field; the whole object stays under etcd's 1.5 MiB
FIELD_SEP = "\t"
LINE_SEP = "\n"

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
    releases: Annotated[str, StringConstraints(max_length=MAX_PACKED)] = Field(
        default="",
        description="Approved releases, one line each: model, version, image digest, owner, "
        "dataClassification, then the approvers who counted (none of them may promote it), "
        "every field followed by a tab. Packed into one string because the API server's cost "
        "per admission request grows with the number of entries of its params object.",
    )


def _clean(field: str) -> str:
    if FIELD_SEP in field or LINE_SEP in field or not field:
        raise ValueError(f"ledger field {field!r} is empty or holds a tab or newline")
    return field


def pack_releases(releases: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """``{model: [{version, digest, owner, dataClassification, approvers}]}`` as the ledger's
    ``releases`` string: LINE_SEP + fields, each followed by FIELD_SEP, for every release, then a
    final LINE_SEP. Raises ValueError on a field that would break the format."""
    lines = []
    for name in sorted(releases):
        for r in releases[name]:
            fields = [name, r["version"], r["digest"], r["owner"], r["dataClassification"],
                      *(r.get("approvers") or ())]
            lines.append("".join(_clean(str(f)) + FIELD_SEP for f in fields))
    return "".join(LINE_SEP + line for line in lines) + (LINE_SEP if lines else "")


def unpack_releases(text: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for line in filter(None, text.split(LINE_SEP)):
        name, version, digest, owner, data_classification, *approvers = line.split(FIELD_SEP)[:-1]
        out.setdefault(name, []).append({
            "version": version, "digest": digest, "owner": owner,
            "dataClassification": data_classification, "approvers": approvers,
        })
    return out


def pack(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger spec as the operator computes it (``releases`` as a map; ``pending`` messages,
    which go to each ModelDeployment's ``status.promotionPending`` instead) → the
    PromotionLedger's spec."""
    out = {k: v for k, v in spec.items() if k != "pending"}
    return {**out, "releases": pack_releases(spec.get("releases") or {})}


def unpack(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack` (without the releases' validUntil, which is not stored)."""
    return {**spec, "releases": unpack_releases(str(spec.get("releases") or ""))}


class PromotionLedger(CustomResource):
    """Approved releases of the namespace's models; written only by the operator (no status)."""

    kind: Literal["PromotionLedger"] = "PromotionLedger"
    spec: PromotionLedgerSpec
