"""The model server itself: ServiceAccount, Deployment and Service.

Only fields we decide are set, never ones the API server would default (imagePullPolicy, protocol,
strategy, terminationMessagePath, ...): after a server-side apply, the live object then holds
exactly our values on the fields we own, and drift on them is visible. The one exception is the
Service's ``type: ClusterIP`` (also the default): owning it means an apply reverts anyone turning
the model into a NodePort or LoadBalancer.
"""

from __future__ import annotations

from mlsec.api import MLSecurityPolicy, ModelDeployment, ResourceRequirements
from mlsec.builders.meta import Obj, finish, object_meta
from mlsec.builders.naming import (
    deployment_name,
    labels,
    selector_labels,
    service_account_name,
    service_name,
)
from mlsec.builders.quantity import canonical_quantity
from mlsec.builders.vault import needs_service_account_token, vault_annotations

CONTAINER_NAME = "model-server"
PORT_NAME = "http"  # Istio picks the protocol from the port name prefix
SERVICE_PORT = 80
NONROOT_ID = 65532  # the distroless "nonroot" user and group
ISTIO_INJECT = "sidecar.istio.io/inject"
TMP_VOLUME = "tmp"


def service_account(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj:
    """The model's own identity (Istio principal, Vault role binding).

    Its token is mounted only when the Vault agent needs it to log in (secrets or tls listed).
    """
    return finish(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(md, service_account_name(md)),
            "automountServiceAccountToken": needs_service_account_token(md),
        }
    )


def _resources(res: ResourceRequirements | None) -> Obj | None:
    """requests/limits as the API server stores them (canonical quantities); None if empty."""
    if res is None:
        return None
    out: Obj = {}
    for field, values in (("limits", res.limits), ("requests", res.requests)):
        if values:
            out[field] = {k: canonical_quantity(v) for k, v in sorted(values.items())}
    return out or None


def _container(md: ModelDeployment) -> Obj:
    container: Obj = {
        "name": CONTAINER_NAME,
        "image": md.spec.image,
        "ports": [{"name": PORT_NAME, "containerPort": md.spec.port}],
        "env": [
            {"name": "MODEL_NAME", "value": md.spec.model},
            {"name": "MODEL_VERSION", "value": md.spec.version},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        # The root filesystem is read-only: /tmp is the one writable place.
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    resources = _resources(md.spec.resources)
    if resources is not None:
        container["resources"] = resources
    return container


def deployment(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj:
    """The model server pods: non-root, read-only root FS, no privileges, RuntimeDefault seccomp.

    Pod annotations: Istio sidecar injection and the Vault agent's (see
    :func:`mlsec.builders.vault.vault_annotations`).
    """
    pod_labels = labels(md)
    # The label is what current Istio reads (the annotation of the same name is deprecated but
    # still honoured); both say the same thing.
    pod_labels[ISTIO_INJECT] = "true"
    pod_annotations = {ISTIO_INJECT: "true", **vault_annotations(md, policy)}
    return finish(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta(md, deployment_name(md), versioned=True),
            "spec": {
                "replicas": md.spec.replicas,
                "selector": {"matchLabels": selector_labels(md)},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": dict(sorted(pod_annotations.items())),
                    },
                    "spec": {
                        "serviceAccountName": service_account_name(md),
                        "automountServiceAccountToken": needs_service_account_token(md),
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": NONROOT_ID,
                            "runAsGroup": NONROOT_ID,
                            "fsGroup": NONROOT_ID,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [_container(md)],
                        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
                    },
                },
            },
        }
    )


def service(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj:
    """ClusterIP Service, port 80 named ``http`` (Istio protocol selection) to the container port."""
    return finish(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(md, service_name(md)),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(md),
                "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME}],
            },
        }
    )
