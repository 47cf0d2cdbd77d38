"""Operator settings: plain dataclasses, one docstring per field, applied at kopf start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import kopf

FINALIZER = "mlsec.io/finalizer"
ANNOTATION_PREFIX = "mlsec.io"


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
    bind_address: str = "0.0.0.0"
    """Address the metrics, health and webhook servers listen on."""


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
    # Measured (STYLE.md): 50 workers with a short idle timeout keep memory low without stalling.
    settings.batching.worker_limit = 50
    settings.batching.idle_timeout = 0.5
    settings.execution.max_workers = 8
