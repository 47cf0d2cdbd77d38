"""The model's mesh policy: mTLS (both ends), who may call it, and a local rate limit.

API versions are the ones Istio 1.31 stores (security.istio.io/v1, networking.istio.io/v1;
EnvoyFilter only exists as networking.istio.io/v1alpha3). All four select the model's pods by the
instance label alone, like the Deployment's selector.
"""

from __future__ import annotations

from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.builders.meta import Obj, finish, object_meta
from mlsec.builders.naming import (
    base_name,
    envoy_filter_name,
    selector_labels,
    service_host,
)

RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
RATE_LIMIT_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
RATE_LIMIT_HEADER = "x-local-rate-limit"


def peer_authentication(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj:
    """Server side mTLS of the model's sidecar: policy.network.mtls (STRICT by default)."""
    return finish(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": object_meta(md, base_name(md)),
            "spec": {
                "selector": {"matchLabels": selector_labels(md)},
                "mtls": {"mode": str(policy.spec.network.mtls)},
            },
        }
    )


def destination_rule(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj:
    """Client side: callers of the model's Service use Istio mutual TLS."""
    return finish(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": object_meta(md, base_name(md)),
            "spec": {
                "host": service_host(md),
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            },
        }
    )


def authorization_policy(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj:
    """ALLOW exactly policy.network.allowedPrincipals, to the model's port; deny everyone else.

    Istio denies a request to a workload that has ALLOW policies when none of their rules matches.
    With no allowed principals the policy therefore has no rules at all: an ALLOW policy without
    rules matches nothing, so it denies every request (Istio's "allow-nothing" policy). Omitting
    the policy instead would allow everyone, which is not what an empty allow list means.

    ``ports`` is the workload's port (the container port, where the sidecar enforces), not the
    Service's port 80. Principals only match mTLS traffic, so plaintext callers accepted under
    PERMISSIVE mTLS are still denied.
    """
    principals = list(policy.spec.network.allowed_principals)
    spec: Obj = {"selector": {"matchLabels": selector_labels(md)}, "action": "ALLOW"}
    if principals:
        spec["rules"] = [
            {
                "from": [{"source": {"principals": principals}}],
                "to": [{"operation": {"ports": [str(md.spec.port)]}}],
            }
        ]
    return finish(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": object_meta(md, base_name(md)),
            "spec": spec,
        }
    )


def envoy_filter(md: ModelDeployment, policy: MLSecurityPolicy) -> Obj | None:
    """Local token-bucket rate limit in the model's inbound sidecar (seed 004); None if no limit.

    The bucket holds ``burst`` tokens and gets ``requestsPerSecond`` back every second. Requests
    over the limit get 429 with the ``x-local-rate-limit: true`` header. ``patch.value`` is
    free-form in the CRD (Envoy's own config), so nothing but Envoy checks it: keep it exact.
    """
    limit = policy.spec.network.rate_limit
    if limit is None:
        return None
    percent_100 = {"numerator": 100, "denominator": "HUNDRED"}
    return finish(
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": object_meta(md, envoy_filter_name(md)),
            "spec": {
                "workloadSelector": {"labels": selector_labels(md)},
                "configPatches": [
                    {
                        "applyTo": "HTTP_FILTER",
                        "match": {
                            "context": "SIDECAR_INBOUND",
                            "listener": {
                                "filterChain": {
                                    "filter": {
                                        "name": "envoy.filters.network.http_connection_manager"
                                    }
                                }
                            },
                        },
                        "patch": {
                            "operation": "INSERT_BEFORE",
                            "value": {
                                "name": RATE_LIMIT_FILTER,
                                "typed_config": {
                                    "@type": RATE_LIMIT_TYPE,
                                    "stat_prefix": "http_local_rate_limiter",
                                    "token_bucket": {
                                        "max_tokens": limit.burst,
                                        "tokens_per_fill": limit.requests_per_second,
                                        "fill_interval": "1s",
                                    },
                                    "filter_enabled": {
                                        "runtime_key": "local_rate_limit_enabled",
                                        "default_value": percent_100,
                                    },
                                    "filter_enforced": {
                                        "runtime_key": "local_rate_limit_enforced",
                                        "default_value": dict(percent_100),
                                    },
                                    "response_headers_to_add": [
                                        {
                                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                            "header": {"key": RATE_LIMIT_HEADER, "value": "true"},
                                        }
                                    ],
                                },
                            },
                        },
                    }
                ],
            },
        }
    )
