"""All the Kubernetes objects of one ModelDeployment, in the order they are applied.

The mesh policy goes first and the Deployment last, so that no model pod ever runs before its
mTLS, authorization and rate limit are in place. The operator prunes objects of
:data:`CHILD_KINDS` that carry the instance label and an owner reference to the ModelDeployment
but are no longer desired (e.g. the EnvoyFilter after the policy drops its rate limit).
"""

from __future__ import annotations

from collections.abc import Callable

from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.builders.istio import (
    authorization_policy,
    destination_rule,
    envoy_filter,
    peer_authentication,
)
from mlsec.builders.meta import Obj
from mlsec.builders.naming import (
    base_name,
    deployment_name,
    envoy_filter_name,
    service_account_name,
    service_name,
)
from mlsec.builders.workload import deployment, service, service_account

Builder = Callable[[ModelDeployment, MLSecurityPolicy], Obj | None]

# (apiVersion, kind) of every child this operator may create for a ModelDeployment, apply order.
CHILD_KINDS: list[tuple[str, str]] = [
    ("v1", "ServiceAccount"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
]

_BUILDERS: list[Builder] = [
    service_account,
    peer_authentication,
    authorization_policy,
    destination_rule,
    envoy_filter,
    service,
    deployment,
]


def desired_children(md: ModelDeployment, policy: MLSecurityPolicy) -> list[Obj]:
    """The desired children of ``md`` under ``policy``, in apply order (see CHILD_KINDS).

    Raises ValueError when ``md`` lacks a name, namespace or uid.
    """
    return [obj for build in _BUILDERS if (obj := build(md, policy)) is not None]


def child_names(md: ModelDeployment) -> dict[str, str]:
    """Name of each possible child by kind (for ModelDeployment status.children)."""
    return {
        "ServiceAccount": service_account_name(md),
        "PeerAuthentication": base_name(md),
        "AuthorizationPolicy": base_name(md),
        "DestinationRule": base_name(md),
        "EnvoyFilter": envoy_filter_name(md),
        "Service": service_name(md),
        "Deployment": deployment_name(md),
    }
