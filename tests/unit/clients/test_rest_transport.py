"""The operator's own API transport: credentials as kubectl finds them, requests over mutual TLS."""

from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsec.clients import rest
from mlsec.clients.kube import Kube
from mlsec.local import pki


def write_kubeconfig(path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None,
                     namespace: str | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "k", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster or {"server": "https://127.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": context},
                     {"name": "other", "context": {"cluster": "k", "user": "nobody"}}],
    }))
    return path


def test_kubeconfig_token_ca_data_and_namespace(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()
    path = write_kubeconfig(tmp_path / "config", {"token": "s3cret"},
                            {"server": "https://api.example:6443/", "certificate-authority-data": ca},
                            namespace="ml")
    creds = rest.from_kubeconfig(str(path))
    assert creds.server == "https://api.example:6443"
    assert creds.token == "s3cret" and creds.ca_data == b"-----BEGIN CERTIFICATE-----"
    assert creds.namespace == "ml"
    assert "s3cret" not in repr(creds)  # logs and tracebacks never show the token


def test_kubeconfig_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = write_kubeconfig(tmp_path / "sub" / "config",
                            {"client-certificate": "tls.crt", "client-key": "tls.key", "tokenFile": "tok"},
                            {"server": "https://x:1", "certificate-authority": "ca.crt",
                             "insecure-skip-tls-verify": True})
    creds = rest.from_kubeconfig(str(path))
    assert creds.cert_path == str(tmp_path / "sub" / "tls.crt")
    assert creds.key_path == str(tmp_path / "sub" / "tls.key")
    assert creds.ca_path == str(tmp_path / "sub" / "ca.crt")
    assert creds.token_path == str(tmp_path / "sub" / "tok")
    assert creds.insecure


def test_kubeconfig_list_first_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_kubeconfig(tmp_path / "a", {"token": "first"})
    second = write_kubeconfig(tmp_path / "b", {"token": "second"})
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(tmp_path / "missing"), str(second)]))
    assert rest.from_kubeconfig().token == "first"


def test_kubeconfig_errors_name_what_is_missing(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", {"token": "t"})
    with pytest.raises(FileNotFoundError, match="no context 'nope'"):
        rest.from_kubeconfig(str(path), "nope")
    other = rest.from_kubeconfig(str(path), "other")  # a context whose user is not defined
    assert other.token is None and other.username is None


@pytest.mark.parametrize("user", [
    {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}},
    {"auth-provider": {"name": "oidc"}},
])
def test_exec_and_auth_provider_users_need_the_kubernetes_client(tmp_path: Path,
                                                                 user: dict[str, Any]) -> None:
    with pytest.raises(rest.NeedsKubernetesClient):
        rest.from_kubeconfig(str(write_kubeconfig(tmp_path / "config", user)))


def test_in_cluster_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "namespace").write_text("mlsec-system")
    (tmp_path / "ca.crt").write_text("ca")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = rest.in_cluster(tmp_path, env)
    assert creds is not None
    assert creds.server == "https://[fd00::1]:443"
    assert creds.token_path == str(tmp_path / "token") and creds.token is None
    assert creds.namespace == "mlsec-system" and creds.ca_path == str(tmp_path / "ca.crt")
    assert rest.in_cluster(tmp_path, {}) is None  # not in a pod
    assert rest.in_cluster(tmp_path / "absent", env) is None


# --- requests over mutual TLS, against a real HTTPS server -------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        if self.path.startswith("/missing"):
            status, data = 404, {"kind": "Status", "reason": "NotFound", "message": 'x "y" not found'}
        else:
            status, data = 200, {
                "method": self.command, "path": self.path,
                "auth": self.headers.get("Authorization"), "agent": self.headers.get("User-Agent"),
                "type": self.headers.get("Content-Type"), "body": json.loads(body) if body else None,
                "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None}
        out = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[tuple[str, pki.KeyPair, pki.KeyPair]]:
    ca = pki.make_ca()
    serving = pki.issue(ca, "localhost", dns_names=("localhost",), ips=("127.0.0.1",))
    client = pki.issue(ca, "alice", client=True)
    serving.write(tmp_path / "s.crt", tmp_path / "s.key")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca, client
    finally:
        server.shutdown()
        server.server_close()


def test_requests_with_client_certificate_data(tls_server: tuple[str, pki.KeyPair, pki.KeyPair]) -> None:
    url, ca, client = tls_server
    creds = rest.Credentials(server=url, ca_data=ca.cert_pem, cert_data=client.cert_pem,
                             key_data=client.key_pem, token="t0k")
    kube = Kube(transport=rest.HttpTransport(creds, user_agent="mlsec-test"), field_manager="fm")
    got = kube.request("PATCH", "/apis/x", query=[("force", True), ("fieldManager", "fm")],
                       body={"a": 1}, content_type="application/apply-patch+yaml")
    assert got == {"method": "PATCH", "path": "/apis/x?force=true&fieldManager=fm", "auth": "Bearer t0k",
                   "agent": "mlsec-test", "type": "application/apply-patch+yaml", "body": {"a": 1},
                   "client": "alice"}
    # 404 on get is None, other errors carry the Status message and reason
    assert kube.get("v1", "ConfigMap", "ns", "x")["path"] == "/api/v1/namespaces/ns/configmaps/x"
    with pytest.raises(rest.KubeError) as err:
        kube.request("GET", "/missing")
    assert (err.value.status, err.value.reason, err.value.message) == (404, "NotFound", 'x "y" not found')


def test_untrusted_server_is_refused(tls_server: tuple[str, pki.KeyPair, pki.KeyPair]) -> None:
    url, _, client = tls_server
    other_ca = pki.make_ca("someone-else")
    transport = rest.HttpTransport(rest.Credentials(server=url, ca_data=other_ca.cert_pem,
                                                    cert_data=client.cert_pem, key_data=client.key_pem))
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        transport.request("GET", "/x")


def test_token_file_is_re_read(tls_server: tuple[str, pki.KeyPair, pki.KeyPair], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca, client = tls_server
    token = tmp_path / "token"
    token.write_text("one\n")
    transport = rest.HttpTransport(rest.Credentials(server=url, ca_data=ca.cert_pem, token_path=str(token),
                                                    cert_data=client.cert_pem, key_data=client.key_pem))
    assert transport.request("GET", "/a")["auth"] == "Bearer one"
    token.write_text("two\n")  # the kubelet rotated it
    monkeypatch.setattr(rest, "TOKEN_REREAD_SECONDS", 0.0)
    assert transport.request("GET", "/a")["auth"] == "Bearer two"


def _operator_imports(kubeconfig: Path, module: str = "kubernetes") -> str:
    code = ("import sys, importlib; from mlsec.clients import rest; "
            "kept = rest.keep_kubernetes_package_out(); import mlsec.handlers.main as main; "
            "[importlib.import_module(m) for m in main.HANDLER_MODULES]; "
            f"print(kept, sys.modules.get({module!r}) is not None)")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(Path(rest.__file__).parents[2])}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_operator_process_runs_without_the_kubernetes_package(tmp_path: Path) -> None:
    assert _operator_imports(write_kubeconfig(tmp_path / "config", {"token": "t"})) == "True False"
    # a cloud kubeconfig (exec plugin) still works, through the kubernetes client
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "true"}}
    assert _operator_imports(write_kubeconfig(tmp_path / "cloud", exec_user)) == "False True"


def test_cryptography_is_imported_only_to_generate_a_webhook_certificate(tmp_path: Path) -> None:
    """7.5 MiB of the operator's footprint (issue 9's memory goal)."""
    assert _operator_imports(write_kubeconfig(tmp_path / "config", {"token": "t"}), "cryptography") == \
        "True False"
