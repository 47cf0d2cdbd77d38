"""Who am I, and what does the cluster serve: the two questions the webhook asks at start-up."""

from __future__ import annotations

from typing import Any

from kubernetes.client.rest import ApiException

from mlsec.clients.kube import Kube, KubeError, _error


def _call(kube: Kube, method: str, path: str, body: Any = None) -> Any:
    try:
        return kube.api.call_api(
            path, method, header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body, auth_settings=["BearerToken"], response_type="object",
            _return_http_data_only=True, _preload_content=True, _request_timeout=(5, 15),
        )
    except ApiException as exc:
        raise _error(exc) from None


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
