"""Inputs of the report builder tests: the samples as the operator's watch streams see them."""

from __future__ import annotations

import copy
import functools
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mlsec.builders.report import ObjectFacts

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "manifests" / "samples"
NS = "radiology-ml"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
POLICY_UID = "0b6c3c9e-8f1e-4a57-9a41-3c1f5f2b9d10"


@functools.cache
def _parsed(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((SAMPLES / name).read_text()))


def _sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(_parsed(name))


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def synced_status(last_sync: datetime = NOW, **extra: Any) -> dict[str, Any]:
    return {"conditions": [cond("Valid", "True", "Validated"),
                           cond("LDAPSynced", "True", "Synced",
                                "4 users hold a platform role, from 4 of 4 mapped LDAP groups")],
            "ldap": {"lastChange": last_sync.strftime("%Y-%m-%dT%H:%M:%SZ"), "users": 4, "groups": 4},
            **extra}


def policy(status: dict[str, Any] | None = None, **spec: Any) -> ObjectFacts:
    body = _sample("policy-hospital.yaml")
    body["spec"].update(copy.deepcopy(spec))
    return ObjectFacts(name="default", uid=POLICY_UID, spec=body["spec"],
                       status=synced_status() if status is None else status)


ROLLED_OUT_CHILDREN = {"ServiceAccount": "{n}", "PeerAuthentication": "{n}", "AuthorizationPolicy": "{n}",
                       "DestinationRule": "{n}", "EnvoyFilter": "{n}-ratelimit", "Service": "{n}",
                       "Deployment": "{n}"}


def rolled_out_status(name: str, *, vault: bool = False, production: bool = False) -> dict[str, Any]:
    conds = [cond("Ready", "True", "Reconciled", "all children are in place"),
             cond("PolicyCompliant", "True", "Compliant", "all policy rules are met"),
             cond("PromotionApproved", "True" if production else "False",
                  "Approved" if production else "ApprovalsMissing", "approved by carol")]
    out: dict[str, Any] = {"conditions": conds,
                           "children": {k: v.format(n=name) for k, v in ROLLED_OUT_CHILDREN.items()}}
    if vault:
        conds.append(cond("VaultReady", "True", "InSync", "role and policy in place"))
        out["vault"] = {"role": f"mlsec-{NS}-{name}", "policy": f"mlsec-{NS}-{name}"}
    return out


def model(name: str = "mri-classifier", *, image: str | None = None, stage: str = "staging",
          vault: bool = False, status: dict[str, Any] | None = None, **spec: Any) -> ObjectFacts:
    body = _sample("modeldeployment-mri-classifier.yaml")
    s = body["spec"]
    s["model"] = name
    s["stage"] = stage
    s["image"] = image or f"registry.hospital.com/ml/{name}@{digest(name)}"
    if not vault:
        s.pop("secrets", None)
        s.pop("tls", None)
    s.update(copy.deepcopy(spec))
    return ObjectFacts(name=name, uid=f"uid-{name}", spec=s,
                       status=rolled_out_status(name, vault=vault, production=stage == "production")
                       if status is None else status)


def results_of(report: dict[str, Any], subject: str | None = None) -> dict[str, dict[str, Any]]:
    """rule → result of one subject (a model name, or the policy's name)."""
    out = {}
    for r in report["results"]:
        if subject is None or r["resources"][0]["name"] == subject:
            out[r["rule"]] = r
    return out
