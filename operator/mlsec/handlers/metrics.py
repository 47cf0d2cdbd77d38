"""Prometheus metrics of the operator (served on /metrics by ``mlsec run``)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class NamespaceCounts(Collector):
    """A gauge labelled (namespace, rule, result) served from counts kept here, one small dict per
    namespace: a prometheus_client Gauge keeps an object with its own lock per series (~800 bytes),
    and the compliance results are ~65 series a namespace (50 KiB; 2.5 MiB at 50 namespaces)."""

    def __init__(self, name: str, documentation: str, results: Sequence[str]) -> None:
        self.name, self.documentation = name, documentation
        self.results = tuple(results)
        self._lock = threading.Lock()
        self._by_namespace: dict[str, dict[str, tuple[int, ...]]] = {}

    def set(self, namespace: str, counts: Mapping[tuple[str, str], int]) -> None:
        """The namespace's counts by (rule, result): every result of each rule named, zeros
        included; rules no longer named disappear."""
        rules = {rule for rule, _ in counts}
        table = {sys.intern(rule): tuple(int(counts.get((rule, r), 0)) for r in self.results)
                 for rule in sorted(rules)}
        with self._lock:
            if table:
                self._by_namespace[sys.intern(namespace)] = table
            else:
                self._by_namespace.pop(namespace, None)

    def remove(self, namespace: str) -> None:
        with self._lock:
            self._by_namespace.pop(namespace, None)

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        with self._lock:
            rows = [(ns, rule, values) for ns, table in self._by_namespace.items()
                    for rule, values in table.items()]
        for namespace, rule, values in rows:
            for result, value in zip(self.results, values, strict=True):
                family.add_metric([namespace, rule, result], value)
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=["namespace", "rule", "result"])
