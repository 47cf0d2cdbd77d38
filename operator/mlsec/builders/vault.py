"""Vault Agent Injector annotations of the model's pods (hook; filled in by the Vault builder).

:func:`vault_annotations` is merged into the pod template's annotations by
:func:`mlsec.builders.workload.deployment`; it must stay pure and deterministic (its output feeds
the desired hash, and a change of it rolls the pods).
"""

from __future__ import annotations

from mlsec.api import MLSecurityPolicy, ModelDeployment


def vault_annotations(md: ModelDeployment, policy: MLSecurityPolicy) -> dict[str, str]:
    """Pod annotations asking the Vault Agent Injector for ``md``'s secrets; none yet."""
    return {}


def needs_service_account_token(md: ModelDeployment) -> bool:
    """Whether the pods need their ServiceAccount token: the Vault agent logs in with it."""
    return bool(md.spec.secrets) or md.spec.tls is not None
