"""Shared test data: the samples, and a table of invalid objects with the field each must name.

Kept apart from the tests so that the same table can be replayed against a real API server.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "manifests" / "samples"
CRDS = REPO / "crds"
DELETE = object()


def load_sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return doc


POLICY = "policy-hospital.yaml"
DEPLOYMENT = "modeldeployment-mri-classifier.yaml"
APPROVAL = "modelapproval-example.yaml"


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of `doc` with `path` (dotted, `[i]` for list items) set to value (or deleted)."""
    doc = copy.deepcopy(doc)
    parts: list[str | int] = []
    for piece in path.split("."):
        name, _, rest = piece.partition("[")
        parts.append(name)
        if rest:
            parts += [int(i) for i in rest.rstrip("]").split("][")]
    node: Any = doc
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return doc


class Invalid(NamedTuple):
    sample: str
    path: str  # path to change, relative to the object root
    value: Any
    field: str  # field the error must name
    why: str


HEX = "0" * 64
INVALID = [
    # MLSecurityPolicy
    Invalid(POLICY, "spec.enforcement", "block", "spec.enforcement", "not an enum value"),
    Invalid(POLICY, "spec.ldap.url", "ldap://ldap.hospital.com:389", "spec.ldap.url", "no TLS"),
    Invalid(POLICY, "spec.ldap.url", "http://ldap.hospital.com", "spec.ldap.url", "scheme"),
    Invalid(POLICY, "spec.ldap.bindDN", "admin", "spec.ldap.bindDN", "not a DN"),
    Invalid(
        POLICY,
        "spec.ldap.bindPasswordSecretRef",
        DELETE,
        "spec.ldap.bindPasswordSecretRef",
        "required",
    ),
    Invalid(POLICY, "spec.ldap.bindPassword", "s3cret", "spec.ldap.bindPassword", "no literal"),
    Invalid(POLICY, "spec.ldap.syncInterval", "5 minutes", "spec.ldap.syncInterval", "syntax"),
    Invalid(POLICY, "spec.ldap.syncInterval", "1s", "spec.ldap.syncInterval", "too often"),
    Invalid(POLICY, "spec.ldap.caSecretRef.name", "Bad_Name", "spec.ldap.caSecretRef.name", "DNS"),
    Invalid(
        POLICY,
        "spec.roleMappings[0].platformRole",
        "admin",
        "spec.roleMappings[0].platformRole",
        "unknown role",
    ),
    Invalid(
        POLICY,
        "spec.roleMappings[1].ldapGroup",
        "ml_engineers",
        "spec.roleMappings[1].ldapGroup",
        "not a DN",
    ),
    Invalid(POLICY, "spec.roleMappings", [], "spec.roleMappings", "at least one"),
    Invalid(
        POLICY,
        "spec.promotion.production.requiredApprovals[0].count",
        0,
        "spec.promotion.production.requiredApprovals[0].count",
        "at least 1",
    ),
    Invalid(
        POLICY,
        "spec.promotion.production.requiredApprovals[1].whenDataClassification",
        ["secret"],
        "spec.promotion.production.requiredApprovals[1].whenDataClassification[0]",
        "unknown classification",
    ),
    Invalid(
        POLICY,
        "spec.promotion.production.approvalTTL",
        "7d",
        "spec.promotion.production.approvalTTL",
        "Go durations have no days",
    ),
    Invalid(POLICY, "spec.network.mtls", "DISABLE", "spec.network.mtls", "not an enum value"),
    Invalid(
        POLICY,
        "spec.network.rateLimit",
        {"requestsPerSecond": 100, "burst": 50},
        "spec.network.rateLimit.burst",
        "burst < rate",
    ),
    Invalid(
        POLICY,
        "spec.network.rateLimit.requestsPerSecond",
        0,
        "spec.network.rateLimit.requestsPerSecond",
        "at least 1",
    ),
    Invalid(POLICY, "spec.vault.address", "vault.hospital.com:8200", "spec.vault.address", "URL"),
    Invalid(
        POLICY,
        "spec.vault.allowedSecretPaths[0]",
        "/secret/data/x",
        "spec.vault.allowedSecretPaths[0]",
        "leading slash",
    ),
    Invalid(
        POLICY,
        "spec.vault.allowedSecretPaths[1]",
        "secret/../sys/*",
        "spec.vault.allowedSecretPaths[1]",
        "traversal",
    ),
    Invalid(
        POLICY,
        "spec.images.allowedRegistries[0]",
        "registry.hospital.com",
        "spec.images.allowedRegistries[0]",
        "prefix must end with /",
    ),
    # ModelDeployment
    Invalid(DEPLOYMENT, "spec.model", "MRI_Classifier", "spec.model", "not a DNS label"),
    Invalid(DEPLOYMENT, "spec.model", "m" * 64, "spec.model", "longer than 63"),
    Invalid(DEPLOYMENT, "spec.version", "-3", "spec.version", "leading dash"),
    Invalid(DEPLOYMENT, "spec.stage", "prod", "spec.stage", "not an enum value"),
    Invalid(DEPLOYMENT, "spec.dataClassification", "secret", "spec.dataClassification", "enum"),
    Invalid(DEPLOYMENT, "spec.owner", "", "spec.owner", "empty"),
    Invalid(DEPLOYMENT, "spec.replicas", 101, "spec.replicas", "at most 100"),
    Invalid(DEPLOYMENT, "spec.port", 0, "spec.port", "at least 1"),
    Invalid(DEPLOYMENT, "spec.image", "registry.hospital.com/ml/a b", "spec.image", "space"),
    Invalid(
        DEPLOYMENT,
        "spec.secrets[0].path",
        "/secret/data/x",
        "spec.secrets[0].path",
        "leading slash",
    ),
    Invalid(
        DEPLOYMENT,
        "spec.secrets[1].path",
        "database/../sys/raw",
        "spec.secrets[1].path",
        "traversal",
    ),
    Invalid(DEPLOYMENT, "spec.secrets[1].name", "hyperparams", "spec.secrets", "duplicate name"),
    Invalid(
        DEPLOYMENT,
        "spec.secrets",
        [{"name": f"s{i}", "path": f"secret/data/s{i}"} for i in range(33)],
        "spec.secrets",
        "more than 32",
    ),
    Invalid(
        DEPLOYMENT,
        "spec.resources.requests.cpu",
        "lots",
        "spec.resources.requests.cpu",
        "not a quantity",
    ),
    Invalid(DEPLOYMENT, "spec.tls.commonName", "Model Server", "spec.tls.commonName", "hostname"),
    Invalid(DEPLOYMENT, "spec.tls.issuer", "pki", "spec.tls.issuer", "unknown field"),
    # ModelApproval
    Invalid(APPROVAL, "spec.imageDigest", "sha256:abc", "spec.imageDigest", "short digest"),
    Invalid(APPROVAL, "spec.imageDigest", "sha512:" + HEX, "spec.imageDigest", "sha256 only"),
    Invalid(APPROVAL, "spec.decision", "maybe", "spec.decision", "not an enum value"),
    Invalid(APPROVAL, "spec.stage", "staging", "spec.stage", "only production"),
    Invalid(APPROVAL, "spec.comment", "x" * 1025, "spec.comment", "longer than 1024"),
    Invalid(APPROVAL, "spec.modelDeployment", "MRI", "spec.modelDeployment", "object name"),
    Invalid(APPROVAL, "spec.approver", "mallory", "spec.approver", "unknown field"),
]
