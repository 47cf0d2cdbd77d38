"""Who am I, and what does the cluster serve: the two questions the webhook asks at start-up."""

from __future__ import annotations

from typing import Any

from mlsec.clients.kube import Kube, KubeError


def _call(kube: Kube, method: str, path: str, body: Any = None) -> Any:
    return kube.request(method, path, body=body, timeout=(5, 15))


def whoami(kube: Kube) -> tuple[str, list[str]]:
    """(username, groups) of the client's own identity, as the API server authenticates it
    (SelfSubjectReview, allowed to every authenticated user)."""
    review = _call(kube, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                   {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    info = (review.get("status") or {}).get("userInfo") or {}
    return str(info.get("username") or ""), [str(g) for g in info.get("groups") or []]


def serves(kube: Kube, group_version: str, plural: str) -> bool:
    """Does the API server serve ``plural`` in ``group_version`` (discovery; no RBAC needed)?"""
    path = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    try:
        listing = _call(kube, "GET", path)
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.get("name") == plural for r in listing.get("resources") or [])
