"""PeerAuthentication, DestinationRule, AuthorizationPolicy and the rate limit EnvoyFilter."""

from __future__ import annotations

import pytest
from builders_cases import make_md, make_policy

from mlsec.builders.istio import (
    authorization_policy,
    destination_rule,
    envoy_filter,
    peer_authentication,
)

SELECTOR = {"app.kubernetes.io/instance": "mri-classifier"}


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_peer_authentication(mode: str) -> None:
    pa = peer_authentication(make_md(), make_policy(network={"mtls": mode}))
    assert pa["apiVersion"] == "security.istio.io/v1"
    assert pa["spec"] == {"selector": {"matchLabels": SELECTOR}, "mtls": {"mode": mode}}


def test_peer_authentication_is_strict_by_default() -> None:
    pa = peer_authentication(make_md(), make_policy(network={}))
    assert pa["spec"]["mtls"] == {"mode": "STRICT"}


def test_destination_rule() -> None:
    dr = destination_rule(make_md(), make_policy())
    assert dr["apiVersion"] == "networking.istio.io/v1"
    assert dr["spec"] == {
        "host": "mri-classifier.radiology-ml.svc.cluster.local",
        "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
    }


def test_authorization_policy_allows_exactly_the_principals_on_the_model_port() -> None:
    principals = ["cluster.local/ns/radiology-ml/sa/frontend", "cluster.local/ns/ops/sa/probe"]
    ap = authorization_policy(make_md(port=9000), make_policy(network={"allowedPrincipals": principals}))
    assert ap["apiVersion"] == "security.istio.io/v1"
    assert ap["spec"] == {
        "selector": {"matchLabels": SELECTOR},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": principals}}],
                "to": [{"operation": {"ports": ["9000"]}}],
            }
        ],
    }


def test_no_principals_is_allow_nothing() -> None:
    # ALLOW with no rules matches nothing, and a workload with an ALLOW policy accepts only what
    # some ALLOW rule matches: everything is denied. Dropping the policy would allow everyone.
    ap = authorization_policy(make_md(), make_policy(network={"allowedPrincipals": []}))
    assert ap["spec"] == {"selector": {"matchLabels": SELECTOR}, "action": "ALLOW"}


def test_envoy_filter_as_in_seed_004() -> None:
    ef = envoy_filter(
        make_md(), make_policy(network={"rateLimit": {"requestsPerSecond": 50, "burst": 75}})
    )
    assert ef is not None
    assert ef["apiVersion"] == "networking.istio.io/v1alpha3"
    assert ef["metadata"]["name"] == "mri-classifier-ratelimit"
    assert ef["spec"]["workloadSelector"] == {"labels": SELECTOR}
    [patch] = ef["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"] == {
        "context": "SIDECAR_INBOUND",
        "listener": {
            "filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}
        },
    }
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    value = patch["patch"]["value"]
    assert value["name"] == "envoy.filters.http.local_ratelimit"
    assert value["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "http_local_rate_limiter",
        "token_bucket": {"max_tokens": 75, "tokens_per_fill": 50, "fill_interval": "1s"},
        "filter_enabled": {
            "runtime_key": "local_rate_limit_enabled",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
        "filter_enforced": {
            "runtime_key": "local_rate_limit_enforced",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
        "response_headers_to_add": [
            {
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {"key": "x-local-rate-limit", "value": "true"},
            }
        ],
    }


def test_no_rate_limit_no_envoy_filter() -> None:
    assert envoy_filter(make_md(), make_policy(network={"mtls": "STRICT"})) is None
