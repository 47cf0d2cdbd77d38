"""The promotion ledger the operator writes for the API server's native gate (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest

from mlsec.api.ledger import unpack
from mlsec.clients.kube import Kube, KubeError
from mlsec.local import env as local

from . import resources as r
from .conftest import OperatorProcess, wait_authorized, wait_until

LEDGER = ("mlsec.io/v1alpha1", "PromotionLedger")


def _grant_approvals(kube: Kube, namespace: str, *users: str) -> None:
    rules = [{"apiGroups": ["mlsec.io"], "resources": ["modelapprovals"], "verbs": ["create", "get", "list"]}]
    subjects = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u} for u in users]
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "approvers", "namespace": namespace}, "rules": rules})
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "approvers", "namespace": namespace},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approvers"},
                 "subjects": subjects})
    wait_authorized(kube, namespace, rules, subjects)


def _approve(kube: Kube, namespace: str, md: dict[str, Any], name: str) -> None:
    kube.create({"apiVersion": r.API, "kind": "ModelApproval",
                 "metadata": {"name": name, "namespace": namespace},
                 "spec": {"modelDeployment": md["metadata"]["name"], "version": md["spec"]["version"],
                          "imageDigest": md["spec"]["image"].split("@", 1)[1], "decision": "approve"}})


def test_ledger_tracks_approvals_and_blocks_without_policy(
    operator: OperatorProcess, kube: Kube, kube_as: Any, namespace: str, localenv: local.LocalEnv,
) -> None:
    kube.create(r.policy(namespace))
    md = r.model(namespace)
    kube.create(md)
    def pending() -> str:
        body = kube.get(r.API, "ModelDeployment", namespace, "mri-classifier") or {}
        ledger = kube.get(*LEDGER, namespace, "promotion-ledger")
        return str((body.get("status") or {}).get("promotionPending") or "") if ledger else ""

    message = str(wait_until(pending, timeout=60, what="the ledger, and what is missing in the status"))
    assert "needs 1 approval from model_approver" in message
    ledger = kube.get(*LEDGER, namespace, "promotion-ledger")
    assert ledger["spec"]["releases"] == ""  # type: ignore[index]
    assert "pending" not in ledger["spec"]  # type: ignore[index]

    # carol and dave approve (their platform roles come from their authenticated groups here).
    _grant_approvals(kube, namespace, "carol", "dave")
    _approve(kube_as("carol"), namespace, md, "by-carol")
    _approve(kube_as("dave"), namespace, md, "by-dave")

    def released() -> list[dict[str, Any]]:
        spec = unpack((kube.get(*LEDGER, namespace, "promotion-ledger") or {}).get("spec") or {})
        return list(spec["releases"].get("mri-classifier") or [])

    (entry,) = wait_until(released, timeout=60, what="the approved release in the ledger")  # type: ignore[misc]
    assert entry["version"] == "3" and entry["approvers"] == ["carol", "dave"]
    assert entry["digest"] == md["spec"]["image"].split("@", 1)[1]

    # Without a policy the namespace's ledger refuses every promotion, approved or not.
    kube.delete(r.API, "MLSecurityPolicy", namespace, "default")

    def blocked() -> str:
        spec = (kube.get(*LEDGER, namespace, "promotion-ledger") or {}).get("spec") or {}
        return str(spec.get("blocked") or "")

    reason = str(wait_until(blocked, timeout=20, what="the ledger blocks promotions"))
    assert "no MLSecurityPolicy" in reason

    def refused() -> str:
        try:
            kube.patch(r.API, "ModelDeployment", namespace, "mri-classifier",
                       {"spec": {"stage": "production"}})
        except KubeError as exc:
            return exc.message
        pytest.fail("promotion allowed without a policy")

    assert "no MLSecurityPolicy" in str(wait_until(refused, timeout=10, what="the native gate refuses"))
