"""Scenarios: what a platform team does first, checked end to end on a real cluster.

Each scenario works in a fresh namespace with the repository's samples (manifests/samples/).
The Vault parts of the samples are left out: the e2e clusters have no Vault.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from e2e_cluster import REPO, Cluster

SAMPLES = REPO / "manifests/samples"

# status.children kind → the resource kubectl gets it by.
RESOURCES = {
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments.apps",
    "Service": "services",
    "PeerAuthentication": "peerauthentications.security.istio.io",
    "AuthorizationPolicy": "authorizationpolicies.security.istio.io",
    "DestinationRule": "destinationrules.networking.istio.io",
    "EnvoyFilter": "envoyfilters.networking.istio.io",
}


def sample(name: str, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load((Path(SAMPLES) / name).read_text()))
    doc["metadata"]["namespace"] = namespace
    return doc


def eventually(what: str, probe: Callable[[], Any], timeout: float = 60, interval: float = 0.5,
               why: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    detail = why() if why else repr(last)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {detail}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def test_policy_and_model_get_their_children(cluster: Cluster, scenario_namespace: str) -> None:
    """Apply the hospital policy and the mri-classifier at staging → the operator creates the
    hardened Deployment, its ServiceAccount and Service and the Istio objects, all owned by the
    ModelDeployment, and reports it Ready and compliant."""
    ns = scenario_namespace
    policy = sample("policy-hospital.yaml", ns)
    policy["spec"].pop("vault", None)
    model = sample("modeldeployment-mri-classifier.yaml", ns)
    model["spec"].pop("secrets", None)
    model["spec"].pop("tls", None)
    cluster.apply(policy)
    # As a GitOps tool would: retry while the namespace's admission state (the promotion ledger the
    # operator writes for the new policy) is not there yet.
    eventually("the API server to accept the ModelDeployment", lambda: cluster.try_apply(model),
               timeout=30, why=lambda: cluster.last_error)

    def ready() -> dict[str, Any] | None:
        obj = cluster.get("modeldeployments.mlsec.io", "mri-classifier", ns)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    md = eventually("ModelDeployment Ready", ready, timeout=90)
    assert condition(md, "PolicyCompliant")["status"] == "True", condition(md, "PolicyCompliant")
    children = md["status"]["children"]
    assert set(children) == set(RESOURCES), children
    uid = md["metadata"]["uid"]
    for kind, name in children.items():
        child = eventually(f"{kind} {name}", lambda k=kind, n=name: cluster.get(RESOURCES[k], n, ns),
                           timeout=30)
        owners = child["metadata"].get("ownerReferences") or []
        assert any(o["uid"] == uid and o.get("controller") for o in owners), f"{kind} {name}: {owners}"

    pod = cluster.get("deployments.apps", children["Deployment"], ns)["spec"]["template"]["spec"]  # type: ignore[index]
    container = pod["containers"][0]
    assert container["image"] == model["spec"]["image"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mtls = cluster.get(RESOURCES["PeerAuthentication"], children["PeerAuthentication"], ns)
    assert mtls["spec"]["mtls"]["mode"] == "STRICT"  # type: ignore[index]
