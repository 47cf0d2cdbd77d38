"""Vault (or OpenBao) as the operator uses it: hvac behind a small, typed interface.

Authentication: the operator logs in with its own ServiceAccount through the Kubernetes auth
method. In a cluster the JWT is a projected ServiceAccount token (audience ``vault``) re-read at
every login, since the kubelet rotates it; for a local run it is asked from the API server with a
TokenRequest. A Vault token read from a file (mounted from a Secret) is an explicit alternative.
The token is renewed before it expires and replaced by a fresh login when it cannot be renewed
(max TTL reached) or Vault no longer knows it (a restarted dev server, a revoked token).

Errors are typed and carry the operation, the Vault path and Vault's own error text, scrubbed of
the token and JWT in use: nothing secret ever reaches a log, event, status or exception.
Redirects are not followed: requests would resend the X-Vault-Token header to wherever a
redirect points.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests

from mlsec.clients.kube import Kube, KubeError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_AUDIENCE = "vault"
_MAX_DETAIL = 300
_ERROR_LIST = re.compile(r"\d+ errors? occurred: (\* )?")
# hvac raises one class per status (hvac.exceptions.VaultError.from_status) without the code.
_STATUS = {
    hvac.exceptions.InvalidRequest: 400, hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403, hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.RateLimitExceeded: 429, hvac.exceptions.InternalServerError: 500,
    hvac.exceptions.VaultNotInitialized: 501, hvac.exceptions.BadGateway: 502,
    hvac.exceptions.VaultDown: 503,
}


class VaultError(Exception):
    """A failed Vault call, described without secrets."""

    def __init__(self, op: str, path: str, status: int | None, detail: str) -> None:
        self.op, self.path, self.status, self.detail = op, path, status, detail
        code = f"{status} " if status else ""
        super().__init__(f"{op} {path}: {code}{detail}".rstrip())


class VaultUnavailable(VaultError):
    """Vault cannot be reached, times out, is sealed or answers 5xx: try again later."""


class VaultAuthError(VaultError):
    """The operator could not log in (or get a JWT to log in with)."""


class VaultForbidden(VaultError):
    """Logged in, but the operator's policy does not allow the operation."""


class VaultRequestError(VaultError):
    """Vault refused the request itself (4xx other than 403/404), e.g. an unknown auth mount."""


# --- credentials --------------------------------------------------------------------------------


@dataclass
class Lease:
    """A Vault token and its lifetime as Vault reported it."""

    token: str = field(repr=False)
    ttl: int  # seconds; 0: does not expire
    renewable: bool
    obtained: float = field(default_factory=time.monotonic)

    @property
    def expires(self) -> float | None:
        return self.obtained + self.ttl if self.ttl > 0 else None


class Login(Protocol):
    """How the operator gets a Vault token."""

    description: str

    def login(self, client: hvac.Client) -> Lease: ...

    def secrets(self) -> list[str]:
        """Values to scrub from error texts (the JWT last used, ...)."""
        ...


def projected_token(path: str | Path) -> Callable[[], str]:
    """A ServiceAccount token projected into the pod (re-read each time: the kubelet rotates it)."""
    return lambda: Path(path).read_text().strip()


def token_request(kube: Kube | Any, namespace: str, name: str,
                  audience: str = DEFAULT_AUDIENCE, seconds: int = 600) -> Callable[[], str]:
    """A fresh short-lived token of ServiceAccount ``namespace/name`` for ``audience`` (TokenRequest).
    ``kube``: a :class:`Kube`, or a ``kubernetes.client.ApiClient`` to send it through."""
    client = kube if isinstance(kube, Kube) else Kube(kube)
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"

    def fetch() -> str:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": seconds}}
        try:
            resp = client.request("POST", path, body=body)
        except KubeError as exc:
            # The API server's reason only: the response body never holds a token on failure,
            # but keep the message short and generic anyway.
            raise VaultAuthError("token request", f"serviceaccounts/{namespace}/{name}",
                                 exc.status, exc.reason or "failed") from None
        except (OSError, ValueError) as exc:
            raise VaultAuthError("token request", f"serviceaccounts/{namespace}/{name}", None,
                                 type(exc).__name__) from None
        return str(resp["status"]["token"])

    return fetch


class KubernetesLogin:
    """Log in through a Kubernetes auth mount with a ServiceAccount JWT."""

    def __init__(self, role: str, jwt: Callable[[], str], mount: str = "kubernetes") -> None:
        self.role, self.mount, self._jwt = role, mount, jwt
        self._last_jwt = ""
        self.description = f"kubernetes auth (auth/{mount}, role {role})"

    def login(self, client: hvac.Client) -> Lease:
        self._last_jwt = self._jwt()
        resp = client.auth.kubernetes.login(self.role, self._last_jwt, use_token=False,
                                            mount_point=self.mount)
        auth = resp["auth"]
        return Lease(str(auth["client_token"]), int(auth.get("lease_duration") or 0),
                     bool(auth.get("renewable")))

    def secrets(self) -> list[str]:
        return [self._last_jwt] if self._last_jwt else []


class TokenFileLogin:
    """Use a Vault token read from a file (e.g. a mounted Secret); re-read at each 'login'."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"token from {self.path}"
        self._token = ""

    def login(self, client: hvac.Client) -> Lease:
        try:
            self._token = self.path.read_text().strip()
        except OSError as exc:
            raise VaultAuthError("read token file", str(self.path), None, exc.strerror or "error") from None
        client.token = self._token
        data = client.auth.token.lookup_self()["data"]
        return Lease(self._token, int(data.get("ttl") or 0), bool(data.get("renewable")))

    def secrets(self) -> list[str]:
        return [self._token] if self._token else []


# --- the client ---------------------------------------------------------------------------------


class Vault:
    """The operations the operator needs, each one call with typed errors.

    Thread-safe: kopf runs sync handlers in a thread pool; the token is managed under a lock.
    """

    def __init__(self, address: str, login: Login, *, ca_file: str | None = None,
                 timeout: float = 5.0) -> None:
        self.address = address.rstrip("/")
        self._login = login
        # verify: the CA bundle when given, else the system CAs — never off.
        self._client = hvac.Client(url=self.address, verify=ca_file or True, timeout=timeout,
                                   allow_redirects=False)
        self._lock = threading.RLock()
        self._lease: Lease | None = None

    # --- token lifecycle ----------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """Vault's error text on one line, without any token or JWT we hold."""
        secrets = [*self._login.secrets(), self._lease.token if self._lease else ""]
        for s in secrets:
            if s:
                text = text.replace(s, "***")
        # Vault wraps errors as "1 error occurred:\n\t* permission denied".
        text = _ERROR_LIST.sub("", " ".join(text.split()))
        return text[:_MAX_DETAIL]

    def _error(self, op: str, path: str, exc: Exception) -> VaultError:
        """Map hvac/requests exceptions to ours (never chaining the original: its text may hold
        a URL with query parameters or a response body)."""
        if isinstance(exc, VaultError):
            return exc
        if isinstance(exc, requests.exceptions.RequestException):
            return VaultUnavailable(op, path, None, f"cannot reach {self.address}: "
                                    f"{type(exc).__name__}")
        if isinstance(exc, hvac.exceptions.VaultError):
            status = _STATUS.get(type(exc))
            errors = exc.errors if isinstance(exc.errors, list) else [str(exc.errors or "")]
            detail = self._scrub("; ".join(str(e) for e in errors if e) or type(exc).__name__)
            unexpected = isinstance(exc, hvac.exceptions.UnexpectedError)  # e.g. a proxy's 504
            if unexpected or (status is not None and (status >= 500 or status == 429)):
                return VaultUnavailable(op, path, status, detail)
            if isinstance(exc, hvac.exceptions.Forbidden):
                return VaultForbidden(op, path, status or 403, detail)
            return VaultRequestError(op, path, status, detail)
        return VaultError(op, path, None, type(exc).__name__)

    def _log_in(self) -> None:
        try:
            lease = self._login.login(self._client)
        except VaultError:
            raise
        except Exception as exc:
            err = self._error("login", self._login.description, exc)
            if isinstance(err, VaultUnavailable):
                raise err from None
            # Refused, or no JWT to log in with (e.g. no Kubernetes credentials): an auth problem.
            raise VaultAuthError("login", self._login.description, err.status, err.detail) from None
        self._lease = lease
        self._client.token = lease.token
        log.info("logged in to Vault at %s with %s (token ttl %ss)", self.address,
                 self._login.description, lease.ttl)

    def _fresh(self) -> None:
        """Make sure a usable token is set: log in, renew when close to expiry, or log in again."""
        with self._lock:
            lease = self._lease
            if lease is None:
                self._log_in()
                return
            expires = lease.expires
            if expires is None:
                return
            margin = max(5.0, min(60.0, lease.ttl / 3))
            if time.monotonic() < expires - margin:
                return
            if lease.renewable:
                try:
                    auth = self._client.auth.token.renew_self()["auth"]
                    ttl = int(auth.get("lease_duration") or 0)
                    # A renewal capped by the max TTL leaves too little time: log in instead.
                    if ttl > 2 * margin:
                        self._lease = Lease(lease.token, ttl, bool(auth.get("renewable")))
                        return
                except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
                    log.info("renewing the Vault token failed (%s); logging in again",
                             type(exc).__name__)
            self._log_in()

    def _call(self, op: str, path: str, fn: Callable[[hvac.Client], T]) -> T:
        """Run one request; a 403 may mean Vault forgot our token, so log in again once."""
        for attempt in (1, 2):
            try:
                self._fresh()
                return fn(self._client)
            except hvac.exceptions.Forbidden as exc:
                if attempt == 2:
                    raise self._error(op, path, exc) from None
                with self._lock:
                    self._lease = None
            except Exception as exc:
                raise self._error(op, path, exc) from None
        raise AssertionError("unreachable")

    def login(self) -> None:
        """Log in now (start-up check); raises VaultAuthError or VaultUnavailable."""
        with self._lock:
            self._lease = None
            self._fresh()

    # --- ACL policies ----------------------------------------------------------------------
    def read_policy(self, name: str) -> str | None:
        path = f"sys/policies/acl/{name}"

        def read(c: hvac.Client) -> str | None:
            try:
                return str(c.sys.read_acl_policy(name)["data"]["policy"])
            except hvac.exceptions.InvalidPath:
                return None

        return self._call("read", path, read)

    def write_policy(self, name: str, text: str) -> None:
        self._call("write", f"sys/policies/acl/{name}",
                   lambda c: c.sys.create_or_update_acl_policy(name, text))

    def delete_policy(self, name: str) -> None:
        """Delete a policy; deleting one that does not exist succeeds (Vault answers 204)."""
        self._call("delete", f"sys/policies/acl/{name}", lambda c: c.sys.delete_acl_policy(name))

    # --- Kubernetes auth roles ---------------------------------------------------------------
    def read_kubernetes_role(self, mount: str, name: str) -> dict[str, Any] | None:
        path = f"auth/{mount}/role/{name}"

        def read(c: hvac.Client) -> dict[str, Any] | None:
            try:
                return dict(c.adapter.get(f"/v1/{path}")["data"])
            except hvac.exceptions.InvalidPath:
                return None

        return self._call("read", path, read)

    def write_kubernetes_role(self, mount: str, name: str, fields: dict[str, Any]) -> None:
        path = f"auth/{mount}/role/{name}"
        self._call("write", path, lambda c: c.adapter.post(f"/v1/{path}", json=fields))

    def delete_kubernetes_role(self, mount: str, name: str) -> None:
        path = f"auth/{mount}/role/{name}"
        self._call("delete", path, lambda c: c.adapter.delete(f"/v1/{path}"))

    # --- transit and audit -------------------------------------------------------------------
    def ensure_transit_key(self, mount: str, name: str, key_type: str = "aes256-gcm96") -> bool:
        """Create the key unless it exists; True if created. Keys are never deleted here."""
        path = f"{mount}/keys/{name}"

        def ensure(c: hvac.Client) -> bool:
            try:
                c.adapter.get(f"/v1/{path}")
                return False
            except hvac.exceptions.InvalidPath:
                c.adapter.post(f"/v1/{path}", json={"type": key_type})
                return True

        return self._call("create", path, ensure)

    def list_audit_devices(self) -> dict[str, dict[str, Any]]:
        """Enabled audit devices by path (needs ``read`` and ``sudo`` on sys/audit)."""
        return self._call("list", "sys/audit",
                          lambda c: dict(c.sys.list_enabled_audit_devices()["data"]))

    # --- people: ACL policy listing and LDAP auth group entries (issue 12) ---------------------
    def list_policies(self) -> list[str]:
        """Names of all ACL policies (needs ``list`` on sys/policies/acl)."""

        def run(c: hvac.Client) -> list[str]:
            try:
                return [str(k) for k in c.adapter.list("/v1/sys/policies/acl")["data"]["keys"]]
            except hvac.exceptions.InvalidPath:
                return []

        return self._call("list", "sys/policies/acl", run)

    def list_ldap_groups(self, mount: str) -> list[str]:
        """Group entries of an LDAP auth mount ([] when it has none)."""
        path = f"auth/{mount}/groups"

        def run(c: hvac.Client) -> list[str]:
            try:
                resp = c.adapter.list(f"/v1/{path}")
            except hvac.exceptions.InvalidPath:
                return []
            return [str(k) for k in ((resp or {}).get("data") or {}).get("keys") or []]

        return self._call("list", path, run)

    def read_ldap_group(self, mount: str, name: str) -> list[str] | None:
        """The policies of one group entry; None when there is no entry."""
        path = f"auth/{mount}/groups/{name}"

        def run(c: hvac.Client) -> list[str] | None:
            try:
                resp = c.adapter.get(f"/v1/{path}")
            except hvac.exceptions.InvalidPath:
                return None
            policies = ((resp or {}).get("data") or {}).get("policies") or []
            if isinstance(policies, str):
                policies = policies.split(",")
            return [str(p).strip() for p in policies if str(p).strip()]

        return self._call("read", path, run)

    def write_ldap_group(self, mount: str, name: str, policies: list[str]) -> None:
        path = f"auth/{mount}/groups/{name}"
        self._call("write", path, lambda c: c.adapter.post(f"/v1/{path}", json={"policies": policies}))
