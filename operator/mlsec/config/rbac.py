"""The operator's own RBAC: least privilege, generated from the kinds it manages.

Kubernetes refuses to let anyone grant permissions they do not hold (RBAC escalation check), so
the operator holds every permission it puts into the platform Roles — the mlsec.io verbs and
read access to events — and nothing like ``*`` verbs, cluster-wide secret listing or
cluster-admin. Secrets: ``get`` only (the LDAP bind password and CA Secrets a policy names).
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "mlsec-system"
WEBHOOK_CONFIGURATION = "mlsec.io"  # mlsec.handlers.webhook.MANAGED: both configurations' name
NAME = "mlsec-operator"
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]

Obj = dict[str, Any]


def rules() -> list[Obj]:
    return [
        {"apiGroups": ["mlsec.io"],
         "resources": ["mlsecuritypolicies", "modeldeployments", "modelapprovals"],
         "verbs": [*READ, "create", "update", "patch", "delete"]},
        {"apiGroups": ["mlsec.io"],
         "resources": ["mlsecuritypolicies/status", "modeldeployments/status", "modelapprovals/status"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": ["mlsec.io"], "resources": ["promotionledgers"], "verbs": [*READ, *WRITE]},
        {"apiGroups": [""], "resources": ["serviceaccounts", "services"], "verbs": [*READ, *WRITE]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": [*READ, "create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": [*READ, "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*READ, *WRITE]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
         "verbs": [*READ, *WRITE]},
        {"apiGroups": ["security.istio.io"], "resources": ["peerauthentications", "authorizationpolicies"],
         "verbs": [*READ, *WRITE]},
        {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules", "envoyfilters"],
         "verbs": [*READ, *WRITE]},
        {"apiGroups": ["openreports.io"], "resources": ["reports"], "verbs": [*READ, *WRITE]},
        # Leader election between replicas and kopf's own peering.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": [*READ, *WRITE]},
        # The kopf admission webhook creates its two configurations (a create carries no name
        # RBAC could check) and then patches only those: never another product's webhooks.
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
         "verbs": ["create"]},
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
         "verbs": ["get", "update", "patch"], "resourceNames": [WEBHOOK_CONFIGURATION]},
        # Detect which admission APIs the cluster serves, and the CRDs kopf watches.
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": READ},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
    ]


def own_namespace_rules(name: str = NAME) -> list[Obj]:
    """Rules in the operator's namespace: it may mint tokens for its own ServiceAccount only (its
    Vault login outside a pod), never for anyone else's."""
    return [{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"],
             "resourceNames": [name]}]


def manifests(namespace: str = NAMESPACE, name: str = NAME) -> list[Obj]:
    labels = {"app.kubernetes.io/name": "mlsec-operator", "app.kubernetes.io/part-of": "mlsec-operator"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name, "labels": labels}, "rules": rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": namespace, "labels": labels},
         "rules": own_namespace_rules(name)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": namespace, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]
