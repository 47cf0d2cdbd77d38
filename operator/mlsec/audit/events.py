"""Audit record vocabulary: the schema of seed 004's audit log, as small frozen dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class EventType(StrEnum):
    PROMOTION_ALLOWED = "PROMOTION_ALLOWED"
    PROMOTION_DENIED = "PROMOTION_DENIED"
    PROMOTION_WARNED = "PROMOTION_WARNED"  # audit enforcement: would have been denied
    APPROVAL_RECORDED = "APPROVAL_RECORDED"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    RBAC_SYNCED = "RBAC_SYNCED"
    LDAP_SYNC_FAILED = "LDAP_SYNC_FAILED"
    VAULT_ROLE_WRITTEN = "VAULT_ROLE_WRITTEN"
    VAULT_ROLE_REMOVED = "VAULT_ROLE_REMOVED"
    VAULT_KEY_RETAINED = "VAULT_KEY_RETAINED"
    POLICY_VALID = "POLICY_VALID"
    POLICY_INVALID = "POLICY_INVALID"
    RECONCILED = "RECONCILED"
    ROLLOUT_BLOCKED = "ROLLOUT_BLOCKED"


ResultStatus = Literal["SUCCESS", "FAILURE", "DENIED", "WARNING"]


@dataclass(frozen=True)
class Actor:
    user_id: str | None = None
    groups: tuple[str, ...] = ()
    service_account: str | None = None


@dataclass(frozen=True)
class Resource:
    type: str | None = None  # e.g. "ModelDeployment", "ModelApproval", "VaultRole"
    name: str | None = None
    namespace: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Action:
    type: str | None = None  # e.g. "CREATE", "UPDATE", "PROMOTE", "DELETE", "SYNC"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    status: ResultStatus = "SUCCESS"
    reason: str | None = None


@dataclass(frozen=True)
class Context:
    request_id: str | None = None  # admission request uid or kopf handler id
    policy: str | None = None  # "namespace/name" of the MLSecurityPolicy applied
