"""Prometheus metrics of the operator (served on /metrics by ``mlsec run``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("mlsec_reconcile_total", "Reconciles by kind and result.", ["kind", "result"])
RECONCILE_ERRORS = Counter("mlsec_reconcile_errors_total", "Failed reconciles by kind.", ["kind"])
RECONCILE_SECONDS = Histogram(
    "mlsec_reconcile_duration_seconds", "Reconcile duration by kind.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WRITES = Counter("mlsec_api_writes_total", "Objects written to the API server, by kind.", ["kind"])
WEBHOOK_REQUESTS = Counter("mlsec_webhook_requests_total",
                           "Admission requests to our webhooks, by HTTP protocol (h2 or http/1.1).",
                           ["protocol"])
POLICIES_VALID = Gauge("mlsec_policies_valid", "1 when the namespace's MLSecurityPolicy is valid.",
                       ["namespace", "name"])


@contextmanager
def observe(kind: str) -> Iterator[None]:
    """Count and time one reconcile of ``kind``; an exception counts as an error."""
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(kind, "error").inc()
        RECONCILE_ERRORS.labels(kind).inc()
        raise
    else:
        RECONCILES.labels(kind, "success").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
