"""`mlsec run` against the real API server: policy validation status, metrics, clean stop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from mlsec.local import env as local

from .conftest import REPO, OperatorProcess, wait_until

API = ("mlsec.io", "v1alpha1")
PLURAL = "mlsecuritypolicies"


def _sample_policy(namespace: str, name: str = "default") -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests/samples/policy-hospital.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    return dict(doc)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return None


def test_sample_policy_becomes_valid(operator: OperatorProcess, namespace: str,
                                     admin_client: kubernetes.client.ApiClient) -> None:
    api = kubernetes.client.CustomObjectsApi(admin_client)
    api.create_namespaced_custom_object(*API, namespace, "mlsecuritypolicies", _sample_policy(namespace))

    def valid() -> dict[str, Any] | None:
        obj = api.get_namespaced_custom_object(*API, namespace, "mlsecuritypolicies", "default")
        cond = _condition(obj, "Valid")
        return obj if cond and cond["status"] == "True" else None

    obj = wait_until(valid, what="Valid=True on the sample policy")
    assert isinstance(obj, dict)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert _condition(obj, "Active")["reason"] == "OnlyPolicy"  # type: ignore[index]
    # Counted when the handler returns (after the re-reconciles the policy change triggers).
    counted = 'mlsec_reconcile_total{kind="MLSecurityPolicy",result="success"}'
    wait_until(lambda: counted in operator.metrics(), timeout=15, what="the reconcile counted in /metrics")
    assert "POLICY_VALID" in operator.audit_file.read_text()


def test_second_policy_is_reported_superseded(operator: OperatorProcess, namespace: str,
                                              admin_client: kubernetes.client.ApiClient) -> None:
    api = kubernetes.client.CustomObjectsApi(admin_client)
    api.create_namespaced_custom_object(*API, namespace, PLURAL, _sample_policy(namespace, "first"))
    wait_until(lambda: _condition(api.get_namespaced_custom_object(
        *API, namespace, "mlsecuritypolicies", "first"), "Valid"), what="first policy handled")
    api.create_namespaced_custom_object(*API, namespace, PLURAL, _sample_policy(namespace, "second"))

    def superseded() -> bool:
        second = api.get_namespaced_custom_object(*API, namespace, "mlsecuritypolicies", "second")
        first = api.get_namespaced_custom_object(*API, namespace, "mlsecuritypolicies", "first")
        s, f = _condition(second, "Active"), _condition(first, "Active")
        return bool(s and f and s["status"] == "False" and f["reason"] == "OldestInNamespace")

    wait_until(superseded, what="second policy Active=False, first in force")
    second = api.get_namespaced_custom_object(*API, namespace, "mlsecuritypolicies", "second")
    assert "the oldest, first, is in force" in _condition(second, "Active")["message"]  # type: ignore[index]


def test_operator_stops_cleanly_on_sigterm(localenv: local.LocalEnv, crds_installed: None,
                                           tmp_path: Path) -> None:
    op = OperatorProcess(localenv, tmp_path).start()
    assert "mlsec_reconcile" in op.metrics()
    code = op.stop(signal.SIGTERM, timeout=30)
    assert code == 0, op.log()[-4000:]
    assert "Operator is stopping" in op.log() or "stopping" in op.log().lower()


@pytest.mark.parametrize("path", sorted((REPO / "manifests/samples").glob("*.yaml")), ids=lambda p: p.name)
def test_samples_are_accepted_by_the_api_server(localenv: local.LocalEnv, crds_installed: None,
                                                namespace: str, path: Path) -> None:
    proc = localenv.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-",
                            input=_retarget(path.read_text(), namespace))
    assert "serverside-applied" in proc.stdout


def _retarget(text: str, namespace: str) -> str:
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(docs)
