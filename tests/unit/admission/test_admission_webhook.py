"""Serving and registration of the webhooks: certificates, kopf's configuration, failure policy."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509
from kopf._cogs.structs import references
from kopf._core.engines import admission as engine
from kopf._core.intents import causes

from mlsec.clients.kube import KubeError
from mlsec.handlers import admission, webhook, webhook_tls
from mlsec.handlers.settings import OperatorConfig, WebhookSettings

OPERATOR = "system:serviceaccount:mlsec-system:mlsec-operator"


# --- certificates ------------------------------------------------------------------------------


def _handshake(cert: webhook_tls.ServingCert, server_name: str) -> None:
    """A TLS handshake in memory: the API server's side verifies with the caBundle only."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert.certfile, cert.keyfile)
    client_ctx = ssl.create_default_context(cadata=cert.cadata.decode())
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == 2:
            return
    raise AssertionError("handshake did not complete")


def test_generated_certificate_serves_the_given_names(tmp_path: Path) -> None:
    cert = webhook_tls.generate(["127.0.0.1", "localhost", "mlsec-webhook.mlsec-system.svc"], tmp_path)
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    loaded = x509.load_pem_x509_certificate(cert.certfile.read_bytes())
    sans = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "mlsec-webhook.mlsec-system.svc"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for name in ("127.0.0.1", "localhost", "mlsec-webhook.mlsec-system.svc"):
        _handshake(cert, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, "elsewhere.example.com")


def test_a_generated_key_in_a_temporary_directory_goes_with_the_process() -> None:
    script = ("from mlsec.handlers import webhook_tls; "
              "print(webhook_tls.generate(['localhost']).keyfile.parent)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    directory = Path(out.stdout.strip())
    assert directory.name.startswith("mlsec-webhook-") and not directory.exists()


def test_provided_certificate_directory(tmp_path: Path) -> None:
    made = webhook_tls.generate(["localhost"], tmp_path)
    assert webhook_tls.from_dir(tmp_path) == made
    (tmp_path / "ca.crt").unlink()  # self-signed layout: the certificate is its own bundle
    assert webhook_tls.from_dir(tmp_path).cadata == made.certfile.read_bytes()
    (tmp_path / "tls.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no tls\.key"):
        webhook_tls.from_dir(tmp_path)


def test_split_hosts() -> None:
    hosts = ["a.svc", "10.0.0.1", "a.svc", "", "[::1]"]
    assert webhook_tls.split_hosts(hosts) == (("a.svc",), ("10.0.0.1", "::1"))
    with pytest.raises(ValueError, match="at least one"):
        webhook_tls.generate([""])


def test_server_for_a_service_names_the_service(tmp_path: Path) -> None:
    cfg = OperatorConfig(webhook_port=9443, bind_address="0.0.0.0",
                         webhook=WebhookSettings(service="mlsec-system/mlsec-webhook"))
    server = webhook.make_server(cfg)
    assert server.host == "mlsec-webhook.mlsec-system.svc"
    assert server.service == ("mlsec-system", "mlsec-webhook", 443)
    loaded = x509.load_pem_x509_certificate(Path(str(server.certfile)).read_bytes())
    sans = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mlsec-webhook.mlsec-system.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    local = webhook.make_server(OperatorConfig(webhook_port=9443, bind_address="127.0.0.1"))
    assert local.host == "127.0.0.1" and local.service is None and local.cadata
    _, context = local._build_ssl()
    assert context is not None and context.num_tickets == 0  # no client of ours resumes sessions


# --- registration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("mlsec-system/webhook", ("mlsec-system", "webhook", 443)),
    ("ns/name:8443", ("ns", "name", 8443)),
])
def test_parse_service(text: str, expected: tuple[str, str, int]) -> None:
    assert webhook.parse_service(text) == expected


@pytest.mark.parametrize("text", ["name", "ns/", "/name", "ns/a/b", "ns/name:http", "ns/name:70000"])
def test_parse_service_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        webhook.parse_service(text)


def test_client_config_for_a_service() -> None:
    url = {"url": "https://mlsec-webhook.mlsec-system.svc:9443", "caBundle": "Q0E="}
    assert webhook.client_config(url, None) == url
    assert webhook.client_config(url, ("mlsec-system", "mlsec-webhook", 443)) == {
        "caBundle": "Q0E=", "service": {"namespace": "mlsec-system", "name": "mlsec-webhook", "port": 443}}


def _hook(groups: list[str], **kw: Any) -> dict[str, Any]:
    return {"name": "x.mlsec.io", "failurePolicy": "Fail", "timeoutSeconds": 30,
            "rules": [{"apiGroups": groups, "resources": ["things"]}], **kw}


def test_adjust_webhooks() -> None:
    hooks = [_hook(["mlsec.io"]), _hook(["apps"]), _hook([""])]
    out = webhook.adjust_webhooks(hooks, failure_policy="Ignore", timeout=5, exempt=OPERATOR)
    assert len(out) == 1  # nothing outside mlsec.io is ever registered
    assert out[0]["failurePolicy"] == "Ignore" and out[0]["timeoutSeconds"] == 5
    assert out[0]["matchConditions"] == [{
        "name": "not-the-operator", "expression": f'request.userInfo.username != "{OPERATOR}"'}]
    assert webhook.adjust_webhooks(hooks, failure_policy="Fail", timeout=99)[0]["timeoutSeconds"] == 30
    assert "matchConditions" not in webhook.adjust_webhooks(hooks, failure_policy="Fail", timeout=5)[0]


def test_the_gate_webhook_is_called_for_production_writes_only() -> None:
    hooks = [_hook(["mlsec.io"], name="deployment-gate.mlsec.io"),
             _hook(["mlsec.io"], name="deployment-stamp.x")]
    gate, stamp = webhook.adjust_webhooks(hooks, failure_policy="Fail", timeout=5, exempt=OPERATOR)
    production = {"name": "production", "expression": "object.spec.stage == 'production'"}
    assert gate["matchConditions"][-1] == production
    assert [c["name"] for c in stamp["matchConditions"]] == ["not-the-operator"]


def test_the_requester_stamp_webhook_is_left_to_the_api_server_where_it_stamps_natively() -> None:
    hooks = [_hook(["mlsec.io"], name="deployment-stamp.mlsec.io"),
             _hook(["mlsec.io"], name="approval-stamp.mlsec.io"),
             _hook(["mlsec.io"], name="deployment-gate.mlsec.io")]
    native = webhook.adjust_webhooks(hooks, failure_policy="Ignore", timeout=5, native_requester=True)
    assert [h["name"] for h in native] == ["approval-stamp.mlsec.io", "deployment-gate.mlsec.io"]
    kept = webhook.adjust_webhooks(hooks, failure_policy="Ignore", timeout=5)
    assert [h["name"] for h in kept] == [h["name"] for h in hooks]


def test_native_requester_only_where_the_webhooks_are_the_second_layer() -> None:
    def boom() -> bool:
        raise KubeError(503, "ServiceUnavailable", "discovery failed")

    assert webhook.native_requester("Ignore", lambda: True) is True
    assert webhook.native_requester("Ignore", lambda: False) is False  # explicit Ignore, old cluster
    assert webhook.native_requester("Ignore", boom) is False  # cannot tell: keep the webhook
    assert webhook.native_requester("Fail", lambda: True) is False  # the webhooks enforce


def test_decide_failure_policy() -> None:
    def boom() -> bool:
        raise KubeError(503, "ServiceUnavailable", "discovery failed")

    assert webhook.decide_failure_policy("auto", lambda: True) == "Ignore"
    assert webhook.decide_failure_policy("auto", lambda: False) == "Fail"
    assert webhook.decide_failure_policy("auto", boom) == "Fail"  # cannot tell: fail closed
    assert webhook.decide_failure_policy("Fail", lambda: True) == "Fail"
    assert webhook.decide_failure_policy("Ignore", lambda: False) == "Ignore"
    with pytest.raises(ValueError):
        webhook.decide_failure_policy("sometimes", lambda: True)


def test_kopf_builds_our_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper around kopf 1.45's configuration builder, with our real handlers."""
    monkeypatch.setattr(engine, "build_webhooks", engine.build_webhooks)  # restored afterwards
    registry = kopf.OperatorRegistry()
    admission.register(registry)
    resources = [references.Resource("mlsec.io", "v1alpha1", plural, namespaced=True,
                                     subresources=frozenset({"status"}))
                 for plural in ("modeldeployments", "modelapprovals", "mlsecuritypolicies")]
    resources.append(references.Resource("apps", "v1", "deployments", namespaced=True))
    webhook.install_config_rewrite("Ignore", 4, OPERATOR)
    handlers = registry._webhooks.get_all_handlers()
    validating = engine.build_webhooks([h for h in handlers if h.reason == causes.WebhookType.VALIDATING],
                                       resources=resources, name_suffix="mlsec.io",
                                       client_config={"url": "https://127.0.0.1:9443"})
    mutating = engine.build_webhooks([h for h in handlers if h.reason == causes.WebhookType.MUTATING],
                                     resources=resources, name_suffix="mlsec.io",
                                     client_config={"url": "https://127.0.0.1:9443"})
    assert sorted(h["name"] for h in mutating) == ["approval-stamp.mlsec.io", "deployment-stamp.mlsec.io"]
    assert sorted(h["name"] for h in validating) == [
        "approval-check.mlsec.io", "deployment-gate.mlsec.io", "status-guard-mlsecuritypolicies.mlsec.io",
        "status-guard-modelapprovals.mlsec.io", "status-guard-modeldeployments.mlsec.io"]
    by_name = {h["name"]: h for h in validating + mutating}
    for hook in by_name.values():
        assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 4
        assert hook["matchConditions"][0]["expression"] == f'request.userInfo.username != "{OPERATOR}"'
        assert {g for rule in hook["rules"] for g in rule["apiGroups"]} == {"mlsec.io"}
        assert hook["clientConfig"]["url"] == f"https://127.0.0.1:9443/{hook['name'].removesuffix('.mlsec.io')}"
    assert by_name["status-guard-modeldeployments.mlsec.io"]["rules"][0]["resources"] == \
        ["modeldeployments/status"]
    assert by_name["deployment-gate.mlsec.io"]["sideEffects"] == "NoneOnDryRun"
    assert by_name["approval-stamp.mlsec.io"]["rules"][0]["operations"] == ["CREATE"]
    # Persistent: a stopping replica leaves the registrations (kopf keeps only these on exit).
    assert all(h.persistent for h in handlers)


def test_no_webhooks_without_a_port() -> None:
    """Imported by every `mlsec run`: without --webhook-port nothing is registered (kopf would
    refuse admission handlers without a server)."""
    registry = kopf.get_default_registry()
    ours = ("approval-", "deployment-", "status-guard-")
    assert not [h for h in registry._webhooks.get_all_handlers() if h.id.startswith(ours)]


def test_the_operator_may_patch_exactly_the_configurations_kopf_manages() -> None:
    from mlsec.config import rbac

    assert rbac.WEBHOOK_CONFIGURATION == webhook.MANAGED
    named = [r for r in rbac.rules() if r.get("resourceNames") == [webhook.MANAGED]]
    assert {v for r in named for v in r["verbs"]} == {"get", "update", "patch"}
    unnamed = [r for r in rbac.rules() if "validatingwebhookconfigurations" in r["resources"]
               and "resourceNames" not in r]
    assert [r["verbs"] for r in unnamed] == [["create"]]
