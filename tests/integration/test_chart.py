"""The Helm chart against the real API server: lint, server-side dry-run of what it renders (default
and non-default values), the operator's effective permissions after its RBAC is applied, and the
e2e scenarios with the operator as a local process."""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsec.local import env as local
from mlsec.local import manifests, procs
from tests.integration.conftest import OperatorProcess, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm/mlsec-operator"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

# The CRDs of the optional integrations, as stand-ins (any spec accepted): the local environment has
# neither cert-manager nor the Prometheus operator. Our own objects are checked by their real schemas.
STUB_CRDS = [("cert-manager.io", "Certificate", "certificates"), ("cert-manager.io", "Issuer", "issuers"),
             ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors")]

NON_DEFAULT: dict[str, Any] = {
    "replicaCount": 3,
    "podAntiAffinity": "hard",
    "webhook.certManager.enabled": True,
    "metrics.enabled": False,
    "reports.installCRDs": True,
    "operator.watchNamespaces": ["radiology-ml"],
    "operator.auditFile": "/var/log/mlsec/audit.jsonl",
    "vault.addr": "https://vault.hospital.com:8200",
    "vault.caSecret.name": "vault-ca",
    "image.digest": "sha256:" + "0" * 64,
}
MONITORED: dict[str, Any] = {"metrics.serviceMonitor.enabled": True,
                             "webhook.certManager.enabled": True,
                             "webhook.certManager.issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}}


def _stub_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}", "labels": {"mlsec.io/test-stub": "true"}},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest.fixture(scope="module")
def stub_crds(localenv: local.LocalEnv) -> Iterator[None]:
    created = []
    for group, kind, plural in STUB_CRDS:
        name = f"{plural}.{group}"
        if localenv.kubectl("get", "crd", name, check=False).returncode != 0:
            localenv.kubectl("create", "-f", "-", input=yaml.safe_dump(_stub_crd(group, kind, plural)))
            created.append(name)
    if created:
        localenv.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{n}" for n in created])
    yield
    for name in created:
        localenv.kubectl("delete", "crd", name, "--wait=false", check=False)


def _server_version(localenv: local.LocalEnv) -> str:
    info = yaml.safe_load(localenv.kubectl("version", "-o", "json").stdout)
    return str(info["serverVersion"]["gitVersion"]).lstrip("v").split("-")[0]


def _render(localenv: local.LocalEnv, namespace: str, release: str,
            values: dict[str, Any] | None = None) -> str:
    return manifests.template(CHART, release=release, namespace=namespace,
                              kube_version=_server_version(localenv), values=values,
                              helm=localenv.bin("helm"))


def _release() -> str:
    return f"rt{uuid.uuid4().hex[:6]}"


def test_helm_lint_is_clean(localenv: local.LocalEnv) -> None:
    for values in ([], ["--set", "webhook.certManager.enabled=true,metrics.serviceMonitor.enabled=true"]):
        proc = subprocess.run([str(localenv.bin("helm")), "lint", "--strict", str(CHART), *values],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", [{}, NON_DEFAULT, MONITORED], ids=["defaults", "non-default", "monitored"])
def test_rendered_chart_passes_server_side_dry_run(localenv: local.LocalEnv, namespace: str,
                                                  stub_crds: None, values: dict[str, Any]) -> None:
    """Every object the chart renders is accepted by the API server (schemas, CEL, defaulting,
    admission), and its pod passes Pod Security `restricted` without a warning."""
    localenv.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                     "pod-security.kubernetes.io/warn=restricted")
    text = _render(localenv, namespace, _release(), values)
    kinds = {d["kind"] for d in yaml.safe_load_all(text) if d}
    assert {"Deployment", "ClusterRole", "CustomResourceDefinition", "ValidatingAdmissionPolicy"} <= kinds
    proc = localenv.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                            "--field-manager=mlsec-chart-test", "-f", "-", input=text, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    objects = len([line for line in proc.stdout.splitlines() if "(server dry run)" in line])
    assert objects == len([d for d in yaml.safe_load_all(text) if d]), proc.stdout


def test_install_yaml_passes_server_side_dry_run(localenv: local.LocalEnv, stub_crds: None) -> None:
    """manifests/install.yaml as a GitOps tool or `kubectl apply --server-side` would apply it."""
    localenv.kubectl("create", "namespace", "mlsec-system", check=False)
    text = (REPO / "manifests/install.yaml").read_text()
    proc = localenv.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                            "--field-manager=mlsec-chart-test", "-f", "-", input=text, check=False)
    assert proc.returncode == 0, proc.stderr
    objects = len([line for line in proc.stdout.splitlines() if "(server dry run)" in line])
    assert objects == len([d for d in yaml.safe_load_all(text) if d]), proc.stdout


def _can_i_list(localenv: local.LocalEnv, user: str, namespace: str) -> list[tuple[str, list[str]]]:
    """`kubectl auth can-i --list` as (resource, verbs) rows (resource rows only)."""
    out = localenv.kubectl("auth", "can-i", "--list", "--as", user, "-n", namespace).stdout
    rows = []
    for line in out.splitlines()[1:]:
        if not line or line[0].isspace():
            continue  # non-resource URLs (the cluster's discovery roles)
        resource = line.split()[0]
        verbs = re.findall(r"\[([^\]]*)\]\s*$", line)
        rows.append((resource, verbs[0].split() if verbs else []))
    return rows


@pytest.fixture
def installed_rbac(localenv: local.LocalEnv, namespace: str) -> Iterator[str]:
    """The chart's ServiceAccount and RBAC, applied for real (a unique release); the user name."""
    release = _release()
    rendered = yaml.safe_load_all(_render(localenv, namespace, release))
    docs = [d for d in rendered if d and d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in docs} == RBAC_KINDS
    localenv.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    yield f"system:serviceaccount:{namespace}:{sa}"
    for d in docs:
        if d["kind"].startswith("Cluster"):
            localenv.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], check=False)


def test_operator_permissions_have_no_wildcard_and_no_secret_listing(
        localenv: local.LocalEnv, namespace: str, installed_rbac: str, crds_installed: None) -> None:
    user = installed_rbac
    assert user.endswith(":mlsec-operator")
    for ns in (namespace, "default"):
        rows = _can_i_list(localenv, user, ns)
        everything = ["get", "list", "watch", "create", "update", "patch", "delete"]
        assert ("modeldeployments.mlsec.io", everything) in rows
        for resource, verbs in rows:
            assert "*" not in verbs, f"{resource}: {verbs}"
            assert not resource.startswith("*"), resource
        secrets = [verbs for resource, verbs in rows if resource == "secrets"]
        assert all(set(v) <= {"get"} for v in secrets), secrets

    def can(*args: str) -> bool:
        proc = localenv.kubectl("auth", "can-i", *args, "--as", user, check=False)
        return proc.stdout.strip() == "yes"

    assert not can("list", "secrets", "--all-namespaces")
    assert not can("watch", "secrets", "--all-namespaces")
    assert not can("list", "secrets", "-n", namespace)
    assert not can("*", "*", "--all-namespaces")
    assert not can("create", "clusterroles")
    assert not can("create", "clusterrolebindings")
    assert not can("create", "serviceaccounts/default", "--subresource=token", "-n", namespace)
    assert can("create", "serviceaccounts/mlsec-operator", "--subresource=token", "-n", namespace)
    # kubectl resolves the CRD's resource through discovery, which lags a fresh CRD a little.
    wait_until(lambda: can("create", "modeldeployments.mlsec.io", "-n", "default"), timeout=20,
               what="can-i create modeldeployments")
    assert can("create", "leases.coordination.k8s.io", "-n", namespace)
    # Webhook configurations: its own two only (a create carries no name to check).
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        assert can("create", kind)
        assert can("patch", f"{kind}/mlsec.io")
        assert not can("patch", f"{kind}/someone-elses-webhooks")
        assert not can("delete", f"{kind}/mlsec.io")
        assert not can("list", kind)


WEBHOOK_CONFIGS = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
# Flags the test sets itself: free loopback ports (OperatorProcess adds metrics/health/bind address).
LOCAL_FLAGS = ("--metrics-port", "--health-port", "--bind-address", "--webhook-port", "--webhook-cert-dir",
               "--lease-namespace")


def test_operator_runs_with_the_chart_args_and_certificate(localenv: local.LocalEnv, namespace: str,
                                                          crds_installed: None, tmp_path: Path) -> None:
    """`mlsec run` with the Deployment's arguments and the chart's self-generated certificate (the
    Secret's files, as mounted): it becomes healthy, serves TLS valid for the webhook Service's
    name, and registers the webhooks by Service reference with the chart's CA as caBundle."""
    release = _release()
    docs = [d for d in yaml.safe_load_all(_render(localenv, namespace, release)) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    secret = next(d for d in docs if d["kind"] == "Secret")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webhook"))
    certs = tmp_path / "webhook-tls"
    certs.mkdir()
    for key, value in secret["data"].items():
        (certs / key).write_bytes(base64.b64decode(value))
    chart_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    kept = [a for a in chart_args if not a.startswith(LOCAL_FLAGS)]
    port = procs.free_port()
    # The shared Lease: while the session's operator leads, this one only serves webhooks.
    op = OperatorProcess(localenv, tmp_path, *kept, f"--webhook-port={port}", f"--webhook-cert-dir={certs}",
                         "--lease-namespace=mlsec-system")
    try:
        op.start()
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        host = f"{service['metadata']['name']}.{namespace}.svc"

        def handshake() -> str | None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                        ctx.wrap_socket(raw, server_hostname=host) as tls:
                    return tls.version()
            except ConnectionRefusedError:
                return None  # the webhook server starts after /healthz (readiness waits for it)

        assert wait_until(handshake, timeout=30, what="webhook TLS") in ("TLSv1.2", "TLSv1.3")

        def registered() -> list[dict[str, Any]] | None:
            hooks = []
            for kind in WEBHOOK_CONFIGS:
                got = localenv.kubectl("get", kind, "mlsec.io", "-o", "yaml", check=False)
                if got.returncode != 0:
                    return None
                hooks += (yaml.safe_load(got.stdout) or {}).get("webhooks") or []
            ours = [h for h in hooks
                    if (h["clientConfig"].get("service") or {}).get("namespace") == namespace]
            return ours if ours and len(ours) == len(hooks) else None

        hooks = wait_until(registered, timeout=30, what="webhooks registered by Service")
        for hook in hooks:  # type: ignore[attr-defined]  # wait_until returns object
            ref = hook["clientConfig"]["service"]
            svc_port = service["spec"]["ports"][0]["port"]
            assert (ref["name"], ref["port"]) == (service["metadata"]["name"], svc_port)
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == (certs / "ca.crt").read_bytes()
            assert hook["timeoutSeconds"] == 5
            assert all(r["apiGroups"] == ["mlsec.io"] for r in hook["rules"])
    finally:
        op.stop()
        for kind in WEBHOOK_CONFIGS:  # registrations outlive the process
            localenv.kubectl("delete", kind, "mlsec.io", "--ignore-not-found")


def test_e2e_scenarios_on_the_local_environment(localenv: local.LocalEnv, tmp_path: Path) -> None:
    """The e2e/ scenarios, target local: the chart applied server-side except its Deployment, the
    operator as a local process with the chart's ServiceAccount."""
    env = {**os.environ, "MLSEC_LOCAL_DIR": str(localenv.dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--target", "local",
         "--operator-namespace", "mlsec-system", str(REPO / "e2e")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b[1-9]\d* passed\b", proc.stdout), proc.stdout[-2000:]
