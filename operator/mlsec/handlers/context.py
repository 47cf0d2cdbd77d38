"""Process-wide clients the handlers share, created lazily on first use."""

from __future__ import annotations

import functools
import time
from typing import Any

from mlsec.audit import AuditLog
from mlsec.clients.kube import Kube
from mlsec.handlers.settings import CONFIG


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
