"""How the operator reaches the API server: credentials and one HTTP connection pool.

The ``kubernetes`` client package costs the operator process ~38 MiB of memory just to import
(its generated models), and kopf imports it whenever it is installed. Everything the operator
needs from it is "send this JSON to this path with these credentials", so the operator does that
here with urllib3 (already there for hvac's requests): in-cluster ServiceAccount credentials or a
kubeconfig with a token, a token file, client certificates or basic auth. Kubeconfig users that
authenticate through an ``exec`` plugin or an ``auth-provider`` (cloud CLIs) need the kubernetes
package's machinery: :func:`load` reports that, and the caller falls back to it.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0
"""A projected ServiceAccount token is rotated by the kubelet; re-read it this often."""


class KubeError(Exception):
    """An API error with the server's message (never the request body, which may hold secrets)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def error_from(status: int, reason: str, body: bytes | str | None) -> KubeError:
    """A :class:`KubeError` from a failed response: the Status object's message and reason."""
    message, why = reason, reason
    try:
        data = json.loads(body or b"{}")
        message = str(data.get("message") or message)
        why = str(data.get("reason") or why)
    except (ValueError, AttributeError):
        pass
    return KubeError(status, why, message)


class NeedsKubernetesClient(Exception):
    """The kubeconfig authenticates in a way only the kubernetes client package implements."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are. ``repr`` never shows secrets."""

    server: str
    ca_data: bytes | None = field(default=None, repr=False)
    ca_path: str | None = None
    insecure: bool = False
    token: str | None = field(default=None, repr=False)
    token_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cert_data: bytes | None = field(default=None, repr=False)
    key_data: bytes | None = field(default=None, repr=False)
    cert_path: str | None = None
    key_path: str | None = None
    tls_server_name: str | None = None
    namespace: str | None = None

    def read_token(self) -> str | None:
        """The bearer token: from ``token_path`` as it is now (rotated by the kubelet), else ``token``."""
        if self.token_path:
            return Path(self.token_path).read_text().strip() or None
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=self.ca_path, cadata=self.ca_data.decode() if self.ca_data else None)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_data or self.cert_path:
            _load_client_cert(ctx, self)
        return ctx


def _load_client_cert(ctx: ssl.SSLContext, creds: Credentials) -> None:
    """ssl loads certificates only from files: data goes through private temporary files that
    exist only while they are read."""
    with tempfile.TemporaryDirectory(prefix="mlsec-tls-") as tmp:
        cert, key = creds.cert_path, creds.key_path
        if creds.cert_data:
            cert = os.path.join(tmp, "tls.crt")
            Path(cert).write_bytes(creds.cert_data)
        if creds.key_data:
            key = os.path.join(tmp, "tls.key")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(creds.key_data)
        assert cert is not None
        ctx.load_cert_chain(cert, key)


def in_cluster(sa_dir: Path = SA_DIR, environ: dict[str, str] | None = None) -> Credentials | None:
    """The pod's ServiceAccount, as the kubelet mounts it; None outside a pod."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = sa_dir / "token"
    if not host or not port or not token.exists():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ns = sa_dir / "namespace"
    ca = sa_dir / "ca.crt"
    return Credentials(server=f"https://{host}:{port}", token_path=str(token),
                       ca_path=str(ca) if ca.exists() else None,
                       namespace=ns.read_text().strip() if ns.exists() else None)


def _data(section: dict[str, Any], key: str, base: Path) -> tuple[bytes | None, str | None]:
    """A kubeconfig ``key-data`` (base64) or ``key`` (a path relative to the file)."""
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"]), None
    if section.get(key):
        return None, str((base / os.path.expanduser(section[key])).resolve())
    return None, None


def _merged(paths: Sequence[str]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Kubeconfig files merged as kubectl does: for each name, the first file that has it wins;
    remembers which file each cluster and user came from (relative paths are relative to it)."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    origin: dict[str, Path] = {}
    for p in paths:
        path = Path(os.path.expanduser(p))
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text()) or {}
        merged["current-context"] = merged["current-context"] or config.get("current-context")
        for kind, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in config.get(kind) or []:
                if entry.get("name") not in merged[kind]:
                    merged[kind][entry["name"]] = entry.get(inner) or {}
                    origin[f"{kind}/{entry['name']}"] = path.parent
    return merged, origin


def from_kubeconfig(path: str | None = None, context: str | None = None) -> Credentials:
    """Credentials of ``context`` (default: the current one) in ``path`` (default: ``$KUBECONFIG``,
    else ``~/.kube/config``). Raises :class:`NeedsKubernetesClient` for exec/auth-provider users."""
    paths = [path] if path else [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    paths = paths or ["~/.kube/config"]
    config, origin = _merged(paths)
    name = context or config["current-context"]
    if not name or name not in config["contexts"]:
        raise FileNotFoundError(f"kubeconfig {os.pathsep.join(paths)}: no context {name!r}")
    ctx = config["contexts"][name]
    cluster = config["clusters"].get(ctx.get("cluster"))
    if cluster is None:
        raise ValueError(f"kubeconfig context {name!r}: no cluster {ctx.get('cluster')!r}")
    user = config["users"].get(ctx.get("user"), {})
    if user.get("exec") or user.get("auth-provider"):
        raise NeedsKubernetesClient(f"kubeconfig user {ctx.get('user')!r} authenticates through "
                                    "an exec plugin or auth-provider")
    cbase = origin.get(f"clusters/{ctx.get('cluster')}", Path.cwd())
    ubase = origin.get(f"users/{ctx.get('user')}", Path.cwd())
    ca_data, ca_path = _data(cluster, "certificate-authority", cbase)
    cert_data, cert_path = _data(user, "client-certificate", ubase)
    key_data, key_path = _data(user, "client-key", ubase)
    token_file = user.get("tokenFile")
    return Credentials(
        server=str(cluster["server"]).rstrip("/"), ca_data=ca_data, ca_path=ca_path,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        token=user.get("token"), token_path=str(ubase / token_file) if token_file else None,
        username=user.get("username"), password=user.get("password"),
        cert_data=cert_data, cert_path=cert_path, key_data=key_data, key_path=key_path,
        namespace=ctx.get("namespace"))


def load(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """In a pod its ServiceAccount, else the kubeconfig (as kubectl and kopf find them)."""
    if not kubeconfig and not context:
        creds = in_cluster()
        if creds is not None:
            return creds
    return from_kubeconfig(kubeconfig, context)


class Transport(Protocol):
    """One request to the API server: JSON in, JSON out, :class:`KubeError` on an error status."""

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, Any]] = (),
                body: Any = None, content_type: str | None = None,
                timeout: tuple[float, float] = (5, 30)) -> Any: ...

    def stream(self, path: str, query: Sequence[tuple[str, Any]], read_timeout: float) -> Any:
        """A GET whose body is read as it arrives (a watch): the urllib3 response, to be
        released by the caller; :class:`KubeError` on an error status."""
        ...


class HttpTransport:
    """A thread-safe urllib3 pool to one API server."""

    def __init__(self, creds: Credentials, *, pool_size: int = 32, user_agent: str = "mlsec") -> None:
        self.creds = creds
        self.user_agent = user_agent
        self._token = creds.token
        self._token_read = 0.0
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        if creds.tls_server_name:
            kwargs["server_hostname"] = creds.tls_server_name
        if creds.insecure:
            kwargs["assert_hostname"] = False
        # Connection errors are retried (nothing was sent); a read error is not: a write may have
        # been applied.
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, ssl_context=creds.ssl_context(),
            retries=urllib3.Retry(total=3, connect=3, read=0, redirect=0, status=0,
                                  backoff_factor=0.2),
            cert_reqs=ssl.CERT_NONE if creds.insecure else ssl.CERT_REQUIRED, **kwargs)

    def _bearer(self) -> str | None:
        if self.creds.token_path is None:
            return self._token
        with self._lock:
            now = time.monotonic()
            if self._token is None or now - self._token_read > TOKEN_REREAD_SECONDS:
                self._token = self.creds.read_token()
                self._token_read = now
            return self._token

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": self.user_agent}
        if content_type:
            h["Content-Type"] = content_type
        token = self._bearer()
        if token:
            h["Authorization"] = f"Bearer {token}"
        elif self.creds.username is not None:
            h.update(urllib3.make_headers(basic_auth=f"{self.creds.username}:{self.creds.password or ''}"))
        return h

    def url(self, path: str, query: Sequence[tuple[str, Any]] = ()) -> str:
        url = self.creds.server + path
        if query:
            url += "?" + urlencode([(k, _query_value(v)) for k, v in query])
        return url

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, Any]] = (),
                body: Any = None, content_type: str | None = None,
                timeout: tuple[float, float] = (5, 30)) -> Any:
        url = self.url(path, query)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        resp = self.pool.request(method, url, body=data, headers=self.headers(content_type),
                                 timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                                 preload_content=True)
        if resp.status >= 400:
            raise error_from(resp.status, resp.reason or "", resp.data)
        return json.loads(resp.data) if resp.data else None

    def stream(self, path: str, query: Sequence[tuple[str, Any]], read_timeout: float) -> Any:
        resp = self.pool.request("GET", self.url(path, query), headers=self.headers(),
                                 preload_content=False, retries=False,
                                 timeout=urllib3.Timeout(connect=5, read=read_timeout))
        if resp.status >= 400:
            try:
                raise error_from(resp.status, resp.reason or "", resp.read())
            finally:
                resp.release_conn()
        return resp


def _query_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


class ApiClientTransport:
    """The same requests through a ``kubernetes.client.ApiClient`` (tests, tools, and kubeconfigs
    with exec plugins); the package is imported only here, when one is actually used."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, Any]] = (),
                body: Any = None, content_type: str | None = None,
                timeout: tuple[float, float] = (5, 30)) -> Any:
        from kubernetes.client.rest import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return self.api.call_api(
                path, method, query_params=list(query), header_params=headers, body=body,
                auth_settings=["BearerToken"], response_type="object",
                _return_http_data_only=True, _preload_content=True, _request_timeout=timeout)
        except ApiException as exc:
            raise error_from(int(exc.status or 0), str(exc.reason or ""), exc.body) from None

    def stream(self, path: str, query: Sequence[tuple[str, Any]], read_timeout: float) -> Any:
        from kubernetes.client.rest import ApiException

        try:
            return self.api.call_api(
                path, "GET", query_params=list(query), header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
                _request_timeout=(5, read_timeout))
        except ApiException as exc:
            raise error_from(int(exc.status or 0), str(exc.reason or ""), exc.body) from None


def keep_kubernetes_package_out() -> bool:
    """Make ``import kubernetes`` fail in this process when our own credentials suffice: kopf
    imports the package whenever it is installed (for its optional login through it and for
    adopting its model objects, neither used here), which costs ~38 MiB. Call before importing
    kopf; returns whether the package is now kept out."""
    if "kubernetes" in sys.modules:
        return sys.modules["kubernetes"] is None
    try:
        load()
    except NeedsKubernetesClient:
        return False
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return False  # no usable credentials: kopf's login reports that in its own words
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # documented: import raises
    return True
