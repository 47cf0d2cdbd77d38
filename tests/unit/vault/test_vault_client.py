"""The Vault client's token lifecycle and errors, against a small fake Vault over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlsec.clients.vault import (
    KubernetesLogin,
    TokenFileLogin,
    Vault,
    VaultAuthError,
    VaultForbidden,
    VaultRequestError,
    VaultUnavailable,
    projected_token,
)

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlLXNlY3JldA"


@dataclass
class FakeVault:
    """Just enough of Vault: kubernetes login, token self-service, ACL policies."""

    ttl: int = 900
    renew_ttl: int = 900
    valid: set[str] = field(default_factory=set)
    policies: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    issued: int = 0
    fail_with: int | None = None  # answer every request with this status
    echo_jwt_in_error: bool = False

    def handle(self, method: str, path: str, token: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append(f"{method} {path}")
        if self.fail_with:
            return self.fail_with, {"errors": ["internal error"]}
        if path == "/v1/auth/kubernetes/login":
            if body.get("jwt") != JWT or body.get("role") != "mlsec-operator":
                detail = f"invalid jwt {body.get('jwt')}" if self.echo_jwt_in_error else "permission denied"
                return 403, {"errors": [f"1 error occurred:\n\t* {detail}\n\n"]}
            self.issued += 1
            tok = f"s.token{self.issued:020d}"
            self.valid.add(tok)
            return 200, {"auth": {"client_token": tok, "lease_duration": self.ttl, "renewable": True}}
        if token not in self.valid:
            return 403, {"errors": ["permission denied"]}
        if path == "/v1/auth/token/renew-self":
            return 200, {"auth": {"client_token": token, "lease_duration": self.renew_ttl,
                                  "renewable": True}}
        if path == "/v1/auth/token/lookup-self":
            return 200, {"data": {"ttl": 0, "renewable": False}}
        if path.startswith("/v1/sys/policies/acl/"):
            name = path.rsplit("/", 1)[1]
            if method == "GET":
                if name not in self.policies:
                    return 404, {"errors": []}
                return 200, {"data": {"name": name, "policy": self.policies[name]}}
            if method in ("PUT", "POST"):
                self.policies[name] = body["policy"]
                return 204, None
            self.policies.pop(name, None)
            return 204, None
        if path.startswith("/v1/auth/nope/"):
            return 400, {"errors": ['no handler for route "auth/nope/role/x"']}
        return 404, {"errors": []}


@pytest.fixture
def fake() -> Iterator[tuple[FakeVault, str]]:
    state = FakeVault()

    class Handler(BaseHTTPRequestHandler):
        def _do(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            status, payload = state.handle(self.command, self.path, self.headers.get("X-Vault-Token"), body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if payload is not None and status != 204:
                self.wfile.write(json.dumps(payload).encode())

        do_GET = do_POST = do_PUT = do_DELETE = _do

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def client(addr: str, jwt: str = JWT) -> Vault:
    return Vault(addr, KubernetesLogin("mlsec-operator", lambda: jwt), timeout=2)


def test_logs_in_once_and_reuses_the_token(fake: tuple[FakeVault, str]) -> None:
    state, addr = fake
    v = client(addr)
    assert v.read_policy("mlsec-a") is None
    v.write_policy("mlsec-a", "x")
    assert v.read_policy("mlsec-a") == "x"
    v.delete_policy("mlsec-a")
    assert state.calls.count("POST /v1/auth/kubernetes/login") == 1


def test_renews_near_expiry_and_logs_in_again_at_max_ttl(fake: tuple[FakeVault, str]) -> None:
    state, addr = fake
    state.ttl = 4  # within the 5 s margin: the token counts as expiring right away
    v = client(addr)
    v.login()
    state.renew_ttl = 900
    v.read_policy("a")
    assert "POST /v1/auth/token/renew-self" in state.calls
    assert state.issued == 1
    # renewed, then capped by the max TTL: too short to be worth it, log in instead
    state.ttl, state.renew_ttl = 4, 3
    v.login()
    state.calls.clear()
    v.read_policy("a")
    assert state.calls[:3] == ["POST /v1/auth/token/renew-self", "POST /v1/auth/kubernetes/login",
                               "GET /v1/sys/policies/acl/a"]


def test_logs_in_again_when_vault_forgot_the_token(fake: tuple[FakeVault, str]) -> None:
    state, addr = fake
    v = client(addr)
    v.read_policy("a")
    state.valid.clear()  # a restarted dev server, or a revoked token
    assert v.read_policy("a") is None
    assert state.issued == 2


def test_refused_login_is_an_auth_error_without_the_jwt(fake: tuple[FakeVault, str]) -> None:
    state, addr = fake
    state.echo_jwt_in_error = True
    wrong = "eyJ" + "x" * 40 + ".eyJ" + "y" * 40 + ".sig-" + "z" * 30
    v = client(addr, wrong)
    with pytest.raises(VaultAuthError) as err:
        v.read_policy("a")
    text = str(err.value) + repr(err.value.args)
    assert wrong not in text and "***" in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_forbidden_after_a_fresh_login_is_forbidden(fake: tuple[FakeVault, str]) -> None:
    state, addr = fake
    v = client(addr)

    allow = state.handle

    def deny(method: str, path: str, token: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        if "/login" in path:
            return allow(method, path, token, body)
        return 403, {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}

    state.handle = deny  # type: ignore[method-assign]
    with pytest.raises(VaultForbidden) as err:
        v.write_policy("other", "x")
    assert str(err.value) == "write sys/policies/acl/other: 403 permission denied"


def test_unreachable_and_5xx_are_unavailable(fake: tuple[FakeVault, str]) -> None:
    state, addr = fake
    with pytest.raises(VaultUnavailable) as err:
        client("http://127.0.0.1:9").read_policy("a")
    assert "cannot reach http://127.0.0.1:9" in str(err.value)
    v = client(addr)
    v.login()
    state.fail_with = 503
    with pytest.raises(VaultUnavailable) as err2:
        v.read_policy("a")
    assert err2.value.status == 503


def test_other_refusals_are_request_errors(fake: tuple[FakeVault, str]) -> None:
    _, addr = fake
    with pytest.raises(VaultRequestError) as err:
        client(addr).write_kubernetes_role("nope", "x", {})
    assert err.value.status == 400 and "no handler for route" in str(err.value)


def test_token_file_login(fake: tuple[FakeVault, str], tmp_path: Path) -> None:
    state, addr = fake
    state.valid.add("s.fromfile")
    path = tmp_path / "token"
    path.write_text("s.fromfile\n")
    v = Vault(addr, TokenFileLogin(path))
    v.write_policy("p", "x")
    assert v.read_policy("p") == "x"
    with pytest.raises(VaultAuthError):
        Vault(addr, TokenFileLogin(tmp_path / "missing")).read_policy("p")


def test_projected_token_is_read_at_every_login(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    read = projected_token(path)
    assert read() == "one"
    path.write_text("two")  # the kubelet rotated it
    assert read() == "two"


def test_timeout_is_unavailable(tmp_path: Path) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never answers
    try:
        started = time.monotonic()
        with pytest.raises(VaultUnavailable):
            Vault(f"http://127.0.0.1:{silent.getsockname()[1]}",
                  KubernetesLogin("r", lambda: JWT), timeout=0.5).read_policy("a")
        assert time.monotonic() - started < 5
    finally:
        silent.close()
