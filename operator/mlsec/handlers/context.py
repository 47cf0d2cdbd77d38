"""Process-wide clients the handlers share, created lazily on first use."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlsec.audit import AuditLog
from mlsec.builders.conditions import rfc3339
from mlsec.clients.kube import Kube
from mlsec.handlers.settings import CONFIG

log = logging.getLogger(__name__)


@functools.cache
def kube() -> Kube:
    return Kube()


@functools.cache
def audit() -> AuditLog:
    return AuditLog(CONFIG.audit_file)


def snapshot(index: Any, key: Any) -> list[Any]:
    """A copy of one key of a kopf index. Indexes are live views that kopf updates while handler
    threads read them; copying can race with an update, so it is retried."""
    for _ in range(20):
        try:
            return list(index.get(key, []))
        except RuntimeError:  # "changed size during iteration": kopf updated it meanwhile
            time.sleep(0.005)
    return list(index.get(key, []))


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event about ``body``, written now, from the calling thread.

    Not through kopf's event queue: kopf posts its queue one event at a time and retries each up
    to 9 times with back-off, so events for namespaces being deleted (refused) delay every later
    event by tens of seconds. Never raises: an event is a hint."""
    meta = body.get("metadata") or {}
    now = rfc3339(datetime.now(UTC))
    try:
        kube().create({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": "mlsec-event-", "namespace": meta.get("namespace")},
            "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                               "name": meta.get("name"), "namespace": meta.get("namespace"),
                               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "mlsec-operator"}, "reportingComponent": "mlsec-operator",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })
    except Exception as exc:  # a namespace being deleted, the API server briefly away
        log.debug("event %s for %s/%s not posted: %s", reason, meta.get("namespace"), meta.get("name"), exc)
