"""The children are valid against the real Istio CRD schemas and Kubernetes OpenAPI schemas."""

from __future__ import annotations

from typing import Any

import pytest
from builders_cases import DIGEST, make_md, make_policy
from builders_schema import (
    istio_crd_file,
    kubernetes_openapi_dir,
    validate,
)

from mlsec.builders.children import desired_children

needs_istio = pytest.mark.skipif(istio_crd_file() is None, reason="Istio CRDs not cached")
needs_k8s = pytest.mark.skipif(
    kubernetes_openapi_dir() is None, reason="Kubernetes OpenAPI documents not cached"
)

VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "sample": ({}, {}),
    "no-principals-no-ratelimit-permissive": ({}, {"network": {"mtls": "PERMISSIVE"}}),
    "no-vault-no-resources": (
        {"secrets": [], "tls": None, "resources": None, "replicas": 0, "port": 65535},
        {},
    ),
    "odd-name": ({"image": f"ghcr.io/x/y@{DIGEST}", "version": "1.0-rc_"}, {}),
}


def _children(name: str) -> list[dict[str, Any]]:
    md_change, policy_change = VARIANTS[name]
    md = make_md(name="mri.classifier.v2" if name == "odd-name" else None, **md_change)
    return desired_children(md, make_policy(**policy_change))


def _case_ids() -> list[tuple[str, int]]:
    return [(v, i) for v in VARIANTS for i in range(len(_children(v)))]


@pytest.mark.parametrize(("variant", "index"), _case_ids())
def test_child_is_valid(variant: str, index: int) -> None:
    obj = _children(variant)[index]
    if "istio.io" in obj["apiVersion"] and istio_crd_file() is None:
        pytest.skip("Istio CRDs not cached")
    if kubernetes_openapi_dir() is None:
        pytest.skip("Kubernetes OpenAPI documents not cached")
    assert validate(obj) == []


@needs_istio
@needs_k8s
@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda o: o["spec"]["mtls"].update(mode="BOGUS"), "not in"),
        (lambda o: o["spec"].update(bogus=1), "unknown field"),
        (lambda o: o["spec"]["selector"]["matchLabels"].update(x="a*"), "wildcard"),
    ],
)
def test_the_check_catches_errors(mutate: Any, error: str) -> None:
    pa = desired_children(make_md(), make_policy())[1]
    assert pa["kind"] == "PeerAuthentication"
    mutate(pa)
    assert any(error in e for e in validate(pa))


@needs_k8s
def test_the_kubernetes_check_catches_errors() -> None:
    dep = desired_children(make_md(), make_policy())[-1]
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    del dep["spec"]["selector"]
    errors = validate(dep)
    assert any("readOnlyRootFS: unknown field" in e for e in errors)
    assert any("missing required selector" in e for e in errors)
