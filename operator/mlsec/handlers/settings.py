"""Operator settings: plain dataclasses, one docstring per field, applied at kopf start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import kopf

FINALIZER = "mlsec.io/finalizer"
ANNOTATION_PREFIX = "mlsec.io"


@dataclass
class VaultSettings:
    addr: str | None = None
    """The one Vault (or OpenBao) the operator writes to ($VAULT_ADDR). A policy's vault.address
    must name it: the operator never sends its credentials to an address a namespace chose."""
    addr_aliases: list[str] = field(default_factory=list)
    """Other addresses of that same Vault which policies may name (e.g. the external name the
    pods use while the operator talks to the in-cluster Service)."""
    auth: str = "kubernetes"
    """kubernetes: log in with the operator's ServiceAccount; token: use token_file (explicit only)."""
    auth_mount: str = "kubernetes"
    """Kubernetes auth mount the operator logs in through."""
    role: str = "mlsec-operator"
    """Vault role of the operator's ServiceAccount."""
    jwt_file: str = "/var/run/secrets/vault/token"
    """Projected ServiceAccount token with audience vault (in a cluster; re-read at every login)."""
    service_account: str = "mlsec-system/mlsec-operator"
    """namespace/name asked for a token by TokenRequest when jwt_file does not exist (local runs)."""
    audience: str = "vault"
    """Audience of the ServiceAccount token (the role's audience)."""
    token_file: str | None = None
    """File holding a Vault token (e.g. a mounted Secret), used with auth=token."""
    ca_file: str | None = None
    """CA bundle (PEM) to verify Vault's certificate ($VAULT_CACERT); system CAs if unset."""
    timeout: float = 5.0
    """Seconds per Vault request."""
    resync_seconds: float = 300.0
    """How often each model's Vault role and policy are compared with Vault (0: only on events)."""


@dataclass
class WebhookSettings:
    host: str | None = None
    """Name or IP the API server reaches the webhook at (URL host and certificate SAN); default:
    the bind address (127.0.0.1 for 0.0.0.0)."""
    service: str | None = None
    """namespace/name[:port] of the Service in front of the replicas: the webhook configuration
    then names the Service (port default 443) instead of a URL."""
    cert_dir: str | None = None
    """Directory with tls.crt, tls.key and ca.crt to serve (a mounted Secret, re-read on change);
    unset: a CA and serving certificate are generated at start-up (one replica only)."""
    failure_policy: str = "auto"
    """Fail | Ignore | auto: Ignore when the cluster serves MutatingAdmissionPolicy (the native
    policies hold the gate, so an operator outage never blocks writes), else Fail."""
    timeout_seconds: int = 5
    """timeoutSeconds of every webhook (kopf would register 30, the maximum)."""
    operator_identity: str | None = None
    """User name whose status writes are allowed; unset: asked from the API server at start-up."""


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)
    """Namespaces to watch; empty: the whole cluster."""
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0: off)."""
    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0: off)."""
    webhook_port: int = 0
    """Port of the admission webhook server (0: no webhook)."""
    audit_file: str | None = None
    """Append the hash-chained audit log to this file as well as stdout."""
    leader_election: bool = True
    """Elect one reconciling replica over a Lease (all replicas serve webhooks)."""
    lease_namespace: str = "mlsec-system"
    """Namespace of the leader Lease (the operator's own; $POD_NAMESPACE in a pod)."""
    bind_address: str = "0.0.0.0"
    """Address the metrics, health and webhook servers listen on."""
    vault: VaultSettings = field(default_factory=VaultSettings)
    """How the operator reaches and logs in to Vault (flags --vault-*)."""
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    """How the admission webhook is served and registered (flags --webhook-*)."""


CONFIG = OperatorConfig()

def apply_kopf_settings(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations under our prefix, never in status (our status is typed).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # A watch stream that goes silent is dropped and re-established (kopf's zombie-stream issue):
    # the server ends each watch within 5 minutes, the client gives up 1 minute after that.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 360
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    # Only warnings become Kubernetes Events (plus the events we post on purpose): a busy
    # operator must not flood etcd with "handler succeeded" events.
    settings.posting.level = logging.WARNING
    # No limit on kopf's per-object workers: at start-up each worker indexes its object and then
    # waits until every index is complete before running handlers, so a limit below the number of
    # objects of one kind deadlocks the restart (measured: 50 workers, 1,000 models, nothing
    # resumed in 5 minutes). A short idle timeout lets the workers of quiet objects go.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 0.5
    settings.execution.max_workers = 8
