"""ServiceAccount, Deployment and Service: the exact security settings."""

from __future__ import annotations

from typing import Any

import pytest
from builders_cases import make_md, make_policy

from mlsec.builders.naming import labels
from mlsec.builders.vault import vault_annotations
from mlsec.builders.workload import deployment, service, service_account


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"])


@pytest.mark.parametrize(
    ("spec", "automount"),
    [
        ({"secrets": [], "tls": None}, False),
        ({"tls": None}, True),  # the sample's two Vault secrets
        ({"secrets": []}, True),  # the sample's tls
        ({}, True),
    ],
)
def test_service_account_token_only_for_vault(spec: dict[str, Any], automount: bool) -> None:
    md, policy = make_md(**spec), make_policy()
    assert service_account(md, policy)["automountServiceAccountToken"] is automount
    assert _pod(deployment(md, policy))["automountServiceAccountToken"] is automount


def test_deployment_security_settings() -> None:
    md = make_md()
    dep = deployment(md, make_policy())
    pod = _pod(dep)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["serviceAccountName"] == "mri-classifier"
    [container] = pod["containers"]
    assert container["name"] == "model-server"
    assert container["image"] == md.spec.image
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["env"] == [
        {"name": "MODEL_NAME", "value": "mri-classifier"},
        {"name": "MODEL_VERSION", "value": "3"},
    ]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert pod.keys() == {
        "serviceAccountName", "automountServiceAccountToken", "securityContext", "containers",
        "volumes",
    }


def test_deployment_selector_labels_and_annotations() -> None:
    md = make_md()
    dep = deployment(md, make_policy())
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/instance": "mri-classifier"}}
    template = dep["spec"]["template"]["metadata"]
    assert template["labels"] == {**labels(md), "sidecar.istio.io/inject": "true"}
    # Istio injection, plus whatever the Vault builder asks the injector for
    assert template["annotations"] == {
        "sidecar.istio.io/inject": "true", **vault_annotations(md, make_policy())
    }
    # The selector must select the pods it creates.
    assert dep["spec"]["selector"]["matchLabels"].items() <= template["labels"].items()
    assert dep["spec"].keys() == {"replicas", "selector", "template"}  # nothing defaulted


def test_resources_as_given_and_omitted_when_none() -> None:
    policy = make_policy()
    [c] = _pod(deployment(make_md(), policy))["containers"]
    assert c["resources"] == {
        "limits": {"cpu": "2", "memory": "4Gi"},
        "requests": {"cpu": "500m", "memory": "2Gi"},
    }
    [c] = _pod(deployment(make_md(resources=None), policy))["containers"]
    assert "resources" not in c
    [c] = _pod(deployment(make_md(resources={"limits": {"cpu": 1}}), policy))["containers"]
    assert c["resources"] == {"limits": {"cpu": "1"}}  # the API server stores quantities as text
    spelled = {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "1000m"}}
    [c] = _pod(deployment(make_md(resources=spelled), policy))["containers"]
    # ... in canonical form, so that the live object compares equal to what we built
    assert c["resources"] == {"limits": {"cpu": "1"}, "requests": {"cpu": "500m", "memory": "1Gi"}}
    [c] = _pod(deployment(make_md(resources={}), policy))["containers"]
    assert "resources" not in c


def test_port_follows_the_spec() -> None:
    md = make_md(port=9000)
    [c] = _pod(deployment(md, make_policy()))["containers"]
    assert c["ports"] == [{"name": "http", "containerPort": 9000}]
    # the Service targets the port by name, so it needs no change
    assert service(md, make_policy())["spec"]["ports"][0]["targetPort"] == "http"


def test_service() -> None:
    svc = service(make_md(), make_policy())
    assert svc["metadata"]["name"] == "mri-classifier"
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": {"app.kubernetes.io/instance": "mri-classifier"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    }
