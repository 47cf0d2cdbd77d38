"""The chart's hand-written templates: the hardened operator pod, HA, flags, TLS, services, schema."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from chart_cases import Obj, of_kind, one, render
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mlsec.cli import build_parser
from mlsec.local.manifests import HelmError


def _pod(docs: list[Obj]) -> Obj:
    spec: Obj = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def _container(docs: list[Obj]) -> Obj:
    containers = _pod(docs)["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    c: Obj = containers[0]
    return c


def test_defaults_ha_and_hardened() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod(docs)
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    c = _container(docs)
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8081, "metrics": 8080, "webhook": 9443}
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "readinessProbe" in c
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp"}


def test_hard_anti_affinity_and_single_replica() -> None:
    pod = _pod(render({"podAntiAffinity": "hard", "replicaCount": 3}))
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    single = render({"replicaCount": 1})
    assert of_kind(single, "PodDisruptionBudget") == [], "a PDB of minAvailable 1 on 1 replica blocks drains"
    with pytest.raises(HelmError, match="leaderElection"):
        render({"operator.leaderElection": False})
    assert "--no-leader-election" in _container(
        render({"replicaCount": 1, "operator.leaderElection": False}))["args"]


FULL = {
    "operator.watchNamespaces": ["radiology-ml", "cardio-ml"],
    "operator.auditFile": "/var/log/mlsec/audit.jsonl",
    "operator.verbose": True,
    "vault.addr": "https://vault.hospital.com:8200",
    "vault.addrAliases": ["https://vault.vault.svc:8200"],
    "vault.caSecret.name": "vault-ca",
}


@pytest.mark.parametrize("values", [{}, FULL, {"metrics.enabled": False, "webhook.enabled": False},
                                    {**FULL, "vault.auth": "token", "vault.tokenSecret.name": "vault-token"}],
                         ids=["defaults", "full", "minimal", "vault-token"])
def test_every_flag_is_one_mlsec_run_accepts(values: dict[str, object]) -> None:
    """The chart passes only flags that `mlsec run` has (argparse exits on an unknown one)."""
    c = _container(render(values))
    args = build_parser().parse_args(["run", *c["args"]])
    assert args.func.__name__ == "_run"
    assert args.health_port == 8081
    if values is FULL:
        assert args.namespace == ["radiology-ml", "cardio-ml"]
        assert args.vault_addr == "https://vault.hospital.com:8200"
        assert args.vault_ca_file == "/etc/mlsec/vault-ca/ca.crt"
        assert args.vault_jwt_file == "/var/run/secrets/vault/token"
        assert args.audit_file == "/var/log/mlsec/audit.jsonl"
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["audit"] == "/var/log/mlsec"
        assert mounts["vault-token"] == "/var/run/secrets/vault"
        volumes = {v["name"]: v for v in _pod(render(values))["volumes"]}
        token = volumes["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]
        assert token["audience"] == "vault" and token["path"] == "token"


def test_metrics_off_and_service_monitor() -> None:
    off = render({"metrics.enabled": False})
    assert "--metrics-port=0" in _container(off)["args"]
    assert not any(s["metadata"]["name"].endswith("-metrics") for s in of_kind(off, "Service"))
    both = {"metrics.serviceMonitor.enabled": True, "metrics.enabled": False}
    assert of_kind(render(both), "ServiceMonitor") == []
    sm = one(render({"metrics.serviceMonitor.enabled": True,
                     "metrics.serviceMonitor.labels": {"release": "prom"}}), "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    metrics_svc = next(s for s in of_kind(render(), "Service") if s["metadata"]["name"].endswith("-metrics"))
    labels = metrics_svc["metadata"]["labels"]
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"


def test_self_generated_webhook_certificate() -> None:
    docs = render(namespace="ops")
    secret = one(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert "mlsec-operator-webhook.ops.svc" in names
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    service = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-webhook"))
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    c = _container(docs)
    args = build_parser().parse_args(["run", *c["args"]])
    assert args.webhook_port == 9443
    assert args.webhook_service == f"ops/{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert args.webhook_cert_dir == mounts["webhook-tls"]
    assert args.webhook_failure_policy == "auto"
    volumes = {v["name"]: v for v in _pod(docs)["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}  # what --webhook-cert-dir reads


def test_cert_manager_certificate() -> None:
    docs = render({"webhook.certManager.enabled": True}, namespace="ops")
    assert of_kind(docs, "Secret") == []
    certs = {c["metadata"]["name"]: c for c in of_kind(docs, "Certificate")}
    serving = certs["mlsec-operator-webhook"]
    assert serving["spec"]["secretName"] == "mlsec-operator-webhook-tls"
    assert "mlsec-operator-webhook.ops.svc" in serving["spec"]["dnsNames"]
    assert serving["spec"]["issuerRef"]["name"] == "mlsec-operator-ca"
    assert certs["mlsec-operator-ca"]["spec"]["isCA"] is True
    assert {i["metadata"]["name"] for i in of_kind(docs, "Issuer")} == {"mlsec-operator-selfsigned",
                                                                      "mlsec-operator-ca"}
    own = render({"webhook.certManager.enabled": True,
                  "webhook.certManager.issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}})
    assert of_kind(own, "Issuer") == []
    assert one(own, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


def test_webhook_off() -> None:
    docs = render({"webhook.enabled": False})
    assert of_kind(docs, "Secret") == [] and of_kind(docs, "Certificate") == []
    assert not any(s["metadata"]["name"].endswith("-webhook") for s in of_kind(docs, "Service"))
    c = _container(docs)
    assert "--webhook-port=0" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_image_by_digest() -> None:
    digest = "sha256:" + "a" * 64
    assert _container(render({"image.digest": digest, "image.repository": "registry.hospital.com/mlsec"}))[
        "image"] == f"registry.hospital.com/mlsec@{digest}"
    assert _container(render())["image"] == "mlsec-operator:0.1.0"


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 0}, "replicaCount"),
    ({"unknownKey": 1}, "unknownKey"),
    ({"image.digest": "latest"}, "digest"),
    ({"podAntiAffinity": "sometimes"}, "podAntiAffinity"),
    ({"vault.auth": "userpass"}, "auth"),
    ({"webhook.certManager.issuerRef": {"kind": "Vault", "name": "x"}}, "kind"),
])
def test_schema_rejects(values: dict[str, object], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(values)


def test_requires_a_supported_kubernetes() -> None:
    with pytest.raises(HelmError, match="kubeVersion"):
        render(kube_version="1.29.0")
