"""Process-wide clients the handlers share, created lazily on first use."""

from __future__ import annotations

import functools

from mlsec.audit import AuditLog
from mlsec.clients.kube import Kube
from mlsec.handlers.settings import CONFIG


@functools.cache
def kube() -> Kube:
    return Kube()


@functools.cache
def audit() -> AuditLog:
    return AuditLog(CONFIG.audit_file)
