"""The one place that talks to the Kubernetes API (besides kopf's own watches).

Server-side apply with our field manager, get/list/delete, and status merge patches — addressed
by apiVersion and kind through a small static table of the kinds this operator touches, so no
discovery round-trips are needed. Requests go through :mod:`mlsec.clients.rest` (urllib3), not the
``kubernetes`` package, which the operator process never imports unless a kubeconfig needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlsec.clients.rest import (
    ApiClientTransport,
    HttpTransport,
    KubeError,
    NeedsKubernetesClient,
    Transport,
    load,
)

__all__ = ["FIELD_MANAGER", "Kube", "KubeError", "Resource", "resource_of", "transport_for"]

FIELD_MANAGER = "mlsec-operator"
USER_AGENT = "mlsec-operator/0.1.0"
POOL_SIZE = 32
LIST_PAGE = 500  # objects per page of a paginated read


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


_KNOWN = [
    Resource("v1", "ServiceAccount", "serviceaccounts"),
    Resource("v1", "Service", "services"),
    Resource("v1", "ConfigMap", "configmaps"),
    Resource("v1", "Secret", "secrets"),
    Resource("v1", "Event", "events"),
    Resource("v1", "Namespace", "namespaces", namespaced=False),
    Resource("apps/v1", "Deployment", "deployments"),
    Resource("rbac.authorization.k8s.io/v1", "Role", "roles"),
    Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    Resource("coordination.k8s.io/v1", "Lease", "leases"),
    Resource("security.istio.io/v1", "PeerAuthentication", "peerauthentications"),
    Resource("security.istio.io/v1", "AuthorizationPolicy", "authorizationpolicies"),
    Resource("networking.istio.io/v1", "DestinationRule", "destinationrules"),
    Resource("networking.istio.io/v1alpha3", "EnvoyFilter", "envoyfilters"),
    Resource("mlsec.io/v1alpha1", "MLSecurityPolicy", "mlsecuritypolicies"),
    Resource("mlsec.io/v1alpha1", "ModelDeployment", "modeldeployments"),
    Resource("mlsec.io/v1alpha1", "ModelApproval", "modelapprovals"),
    Resource("mlsec.io/v1alpha1", "PromotionLedger", "promotionledgers"),
    Resource("openreports.io/v1alpha1", "Report", "reports"),
]
RESOURCES: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in _KNOWN}


def resource_of(api_version: str, kind: str) -> Resource:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        raise KeyError(f"unknown kind {api_version}/{kind}: add it to mlsec.clients.kube") from None


_load_lock = threading.Lock()


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` (tests and tools that use the kubernetes package)."""
    import kubernetes

    with _load_lock:
        if kubeconfig or context:
            return kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return kubernetes.client.ApiClient()


def widen_pool(api_client: Any, size: int = POOL_SIZE) -> None:
    """Keep ``size`` connections alive (the kubernetes client's default is a few per CPU)."""
    from kubernetes.client.rest import RESTClientObject

    api_client.configuration.connection_pool_maxsize = size
    api_client.rest_client = RESTClientObject(api_client.configuration)


def transport_for(kubeconfig: str | None = None, context: str | None = None,
                  user_agent: str = USER_AGENT, pool_size: int = POOL_SIZE) -> Transport:
    """In-cluster or kubeconfig credentials over our own pool; through the kubernetes package
    only for a kubeconfig user that authenticates with an exec plugin or auth-provider."""
    try:
        return HttpTransport(load(kubeconfig, context), pool_size=pool_size, user_agent=user_agent)
    except NeedsKubernetesClient:
        api_client = load_api_client(kubeconfig, context)
        api_client.user_agent = user_agent
        widen_pool(api_client, pool_size)
        return ApiClientTransport(api_client)


class Kube:
    """Generic, dict-based access to the kinds in :data:`RESOURCES`."""

    def __init__(self, api_client: Any = None, field_manager: str = FIELD_MANAGER, *,
                 transport: Transport | None = None) -> None:
        """``transport`` (default: :func:`transport_for` the environment's credentials), or a
        ``kubernetes.client.ApiClient`` to send the requests through (tests, tools)."""
        if transport is None:
            # Handlers write from several threads at once (kopf's workers, a reconcile's
            # children): the pool keeps that many connections alive; our writes are recognisable
            # in the API server's audit log by the user agent.
            transport = ApiClientTransport(api_client) if api_client is not None else transport_for()
        self.transport = transport
        self.api = api_client
        self.field_manager = field_manager

    def request(self, method: str, path: str, *, query: list[tuple[str, Any]] | None = None,
                body: Any = None, content_type: str | None = None,
                timeout: tuple[float, float] = (5, 30)) -> Any:
        """One request by path (kinds outside :data:`RESOURCES`, subresources, reviews)."""
        return self.transport.request(method, path, query=query or [], body=body,
                                      content_type=content_type, timeout=timeout)

    # --- reads ----------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", resource_of(api_version, kind).path(namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        data = self.request("GET", resource_of(api_version, kind).path(namespace), query=query)
        return list(data.get("items", []))

    def iter_list(self, api_version: str, kind: str, namespace: str | None = None,
                  label_selector: str | None = None, *,
                  page_size: int = LIST_PAGE) -> Iterator[dict[str, Any]]:
        """Every object, a page at a time: only one page of bodies is alive at once. A plain
        LIST of 5,000 models is ~50 MiB parsed at once, a peak the allocator keeps. An expired
        continue token (410) raises: callers retry the whole read."""
        path = resource_of(api_version, kind).path(namespace)
        cont: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("limit", page_size)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if cont:
                query.append(("continue", cont))
            data = self.request("GET", path, query=query)
            cont = (data.get("metadata") or {}).get("continue")
            items = data.get("items") or []
            del data
            yield from items
            if not cont:
                return

    # --- writes ---------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply ``obj`` (a complete desired state) with our field manager."""
        meta = obj["metadata"]
        res = resource_of(obj["apiVersion"], obj["kind"])
        query: list[tuple[str, Any]] = [("fieldManager", self.field_manager), ("force", force)]
        if dry_run:
            query.append(("dryRun", "All"))
        return dict(self.request("PATCH", res.path(meta.get("namespace"), meta["name"]), query=query,
                               body=obj, content_type="application/apply-patch+yaml"))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        res = resource_of(obj["apiVersion"], obj["kind"])
        query = [("fieldManager", self.field_manager)]
        return dict(self.request("POST", res.path(obj["metadata"].get("namespace")), query=query, body=obj))

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT: conditional on metadata.resourceVersion when the caller sets it."""
        res = resource_of(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        return dict(self.request("PUT", res.path(meta.get("namespace"), meta["name"]),
                               query=[("fieldManager", self.field_manager)], body=obj))

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any]) -> dict[str, Any]:
        res = resource_of(api_version, kind)
        return dict(self.request("PATCH", res.path(namespace, name) + "/status",
                               query=[("fieldManager", self.field_manager)],
                               body={"status": status}, content_type="application/merge-patch+json"))

    def apply_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any], *, manager: str | None = None) -> dict[str, Any]:
        """Server-side apply of part of ``status`` under ``manager`` (default: our field manager).

        Conditions are a list-map keyed by type, so each part of the operator applies only the
        conditions it owns under its own manager and never clobbers another's.
        """
        res = resource_of(api_version, kind)
        body = {"apiVersion": api_version, "kind": kind,
                "metadata": {"name": name, "namespace": namespace}, "status": status}
        query: list[tuple[str, Any]] = [("fieldManager", manager or self.field_manager), ("force", True)]
        return dict(self.request("PATCH", res.path(namespace, name) + "/status", query=query,
                               body=body, content_type="application/apply-patch+yaml"))

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              body: dict[str, Any]) -> dict[str, Any]:
        res = resource_of(api_version, kind)
        return dict(self.request("PATCH", res.path(namespace, name),
                               query=[("fieldManager", self.field_manager)],
                               body=body, content_type="application/merge-patch+json"))

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self.request("DELETE", resource_of(api_version, kind).path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True
