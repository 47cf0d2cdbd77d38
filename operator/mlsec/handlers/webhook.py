"""Serving and registering the admission webhooks: TLS, failure policy, timeout, mlsec.io only.

kopf runs the webhook server we hand it (``settings.admission.server``: :class:`Server`, HTTP/2 and
HTTP/1.1 on one TLS port) and keeps the Validating- and MutatingWebhookConfiguration named
``mlsec.io`` pointing at it (``settings.admission.managed``).
kopf 1.45 registers every webhook with ``timeoutSeconds: 30`` and its failure policy fixed at
decoration time, so :func:`install_config_rewrite` wraps kopf's configuration builder to set ours:
a short timeout, the failure policy decided at start-up, and rules for the mlsec.io group only —
a failing or slow operator must never hold up anything outside our API group.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import kopf
from kopf._core.engines import admission as engine

from mlsec import GROUP
from mlsec.clients import discovery
from mlsec.clients.kube import Kube, KubeError
from mlsec.handlers import admission_dispatch as dispatch
from mlsec.handlers import metrics, webhook_http1, webhook_tls
from mlsec.handlers.settings import OperatorConfig

MANAGED = GROUP  # name of both webhook configurations
ADMISSION_API = "admissionregistration.k8s.io/v1"
FAIL, IGNORE, AUTO = "Fail", "Ignore", "auto"
log = logging.getLogger(__name__)

# The uid of the AdmissionReview being served (for the audit records of its decision).
REQUEST_UID: ContextVar[str | None] = ContextVar("mlsec_admission_uid", default=None)


def parse_service(text: str) -> tuple[str, str, int]:
    """``namespace/name[:port]`` → (namespace, name, port); port 443 by default."""
    ref, _, port = text.partition(":")
    namespace, _, name = ref.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--webhook-service must be namespace/name[:port], got {text!r}")
    try:
        number = int(port) if port else 443
    except ValueError:
        raise ValueError(f"--webhook-service port must be a number, got {port!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"--webhook-service port out of range: {number}")
    return namespace, name, number


def service_hosts(namespace: str, name: str) -> list[str]:
    return [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def client_config(config: Mapping[str, Any], service: tuple[str, str, int] | None) -> dict[str, Any]:
    """kopf's URL client config, or the same path behind a Service reference."""
    out = dict(config)
    if service is None:
        return out
    from urllib.parse import urlsplit

    path = urlsplit(str(out.pop("url", ""))).path.rstrip("/")
    namespace, name, port = service
    ref: dict[str, Any] = {"namespace": namespace, "name": name, "port": port}
    if path:
        ref["path"] = path
    out["service"] = ref
    return out


class Server(kopf.WebhookServer):
    """kopf's webhook server (its TLS set-up, certificate reloads, client configs), serving our
    routes directly (:mod:`admission_dispatch`) over HTTP/2 (:mod:`webhook_h2`) and HTTP/1.1
    (:mod:`webhook_http1`), with the request uid for audit records and Service references."""

    def __init__(self, *, service: tuple[str, str, int] | None = None,
                 routes: Mapping[str, dispatch.Route] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.routes = routes if routes is not None else {}

    def _build_ssl(self) -> Any:
        cadata, context = super()._build_ssl()
        if context is not None:
            # No TLS 1.3 session tickets: the API server's webhook client keeps no session cache,
            # so the two tickets OpenSSL sends after every handshake were work for nothing.
            context.num_tickets = 0
            context.set_alpn_protocols(ALPN)
        return cadata, context

    async def _answer(self, fn: Any, webhook: str, raw: bytes | bytearray) -> bytes:
        """The JSON answer of our hook ``webhook`` to the request body ``raw`` (both protocols)."""
        try:
            review = json.loads(raw)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise dispatch.BadRequest(str(exc)) from None
        try:
            response = await fn(review, webhook=webhook)
        except engine.WebhookError as exc:
            raise dispatch.BadRequest(str(exc)) from None
        return json.dumps(response, separators=(",", ":")).encode()

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        # kopf hands its request function with its indexes bound (functools.partial).
        indexes = (getattr(fn, "keywords", None) or {}).get("indices")

        async def traced(request: Any, *, webhook: str | None = None, **kwargs: Any) -> Any:
            token = REQUEST_UID.set(str((request.get("request") or {}).get("uid") or "") or None)
            try:
                route = self.routes.get(webhook or "")
                if route is None or indexes is None:
                    return await fn(request, webhook=webhook, **kwargs)
                try:
                    return await dispatch.serve(request, webhook or "", route, indexes)
                except dispatch.BadReview as exc:  # kopf's server answers these with HTTP 400
                    raise engine.WebhookError(str(exc)) from None
            finally:
                REQUEST_UID.reset(token)

        async for config in self._listen(traced):
            yield client_config(config, self.service)

    def _hook(self, path: str) -> str | None:
        """Our webhook id at ``path`` (``<path prefix>/<id>[?query]``), if it is one of ours."""
        prefix = (self.path or "").rstrip("/") + "/"
        hook = path.split("?", 1)[0][len(prefix):] if path.startswith(prefix) else None
        return hook if hook in self.routes else None

    async def _listen(self, fn: Any) -> AsyncIterator[Any]:
        """kopf's serving loop (``WebhookServer.__call__``: serve, yield the client config, restart
        when the certificate files change), with one listening socket for both protocols and our
        hooks the only paths served (:mod:`webhook_h2`, :mod:`webhook_http1`)."""

        def answerer(count: Callable[[], None]) -> webhook_http1.Answer:
            async def answer(path: str, raw: bytes | bytearray) -> bytes:
                hook = self._hook(path)
                if hook is None:
                    raise dispatch.NotFound(path)
                count()
                return await self._answer(fn, hook, raw)
            return answer

        from mlsec.handlers import webhook_h2  # only operators serving webhooks load hpack

        answer_http1, answer_h2 = answerer(_COUNT_HTTP1), answerer(_COUNT_H2)
        loop = asyncio.get_running_loop()
        while True:
            cadata, context = self._build_ssl()
            connections: set[Any] = set()
            outbox = webhook_http1.Outbox()  # HTTP/1.1 answers of all connections, written together

            def protocol(connections: set[Any] = connections, outbox: webhook_http1.Outbox = outbox) -> Any:
                return webhook_h2.Negotiate(
                    lambda: webhook_http1.H1Protocol(answer_http1, connections=connections, outbox=outbox),
                    lambda: webhook_h2.H2Protocol(answer_h2, connections=connections))

            server = None
            try:
                port = self.port or self._allocate_free_port()
                server = await loop.create_server(protocol, self.addr or None, port, ssl=context,
                                                  reuse_port=True, reuse_address=True)
                schema = "http" if context is None else "https"
                host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
                url = self._build_url(schema, host, port, self.path or "")
                log.debug("accessing the webhooks at %s", url)
                config: dict[str, Any] = {"url": url}
                if cadata is not None:
                    config["caBundle"] = base64.b64encode(cadata).decode("ascii")
                yield config
                await self._WebhookServer__sleep_forever_or_until_ssl_files_change()  # type: ignore[attr-defined]
                log.debug("restarting the webhook server with the renewed certificate files")
            finally:
                if server is not None:
                    server.close()
                await asyncio.gather(*(c.shutdown(SHUTDOWN_SECONDS) for c in list(connections)))


ALPN = ["h2", "http/1.1"]  # HTTP/2 preferred: see mlsec.handlers.webhook_h2
_COUNT_HTTP1 = metrics.WEBHOOK_REQUESTS.labels("http/1.1").inc
_COUNT_H2 = metrics.WEBHOOK_REQUESTS.labels("h2").inc
SHUTDOWN_SECONDS = 5.0
"""How long a stopping server lets the requests in progress finish."""


GATE_HOOK = "deployment-gate"
# Left out where the API server stamps the requester itself (mlsec-deployment-stamp, a
# MutatingAdmissionPolicy): the webhook would write the same value, and every ModelDeployment
# write would wait for it.
REQUESTER_HOOK = "deployment-stamp"


def adjust_webhooks(webhooks: list[dict[str, Any]], *, failure_policy: str, timeout: int,
                    exempt: str | None = None, group: str = GROUP,
                    native_requester: bool = False) -> list[dict[str, Any]]:
    """Our registration conventions on top of what kopf builds (pure).

    ``exempt``: the operator's own user name. Its requests never call the webhooks (a CEL match
    condition, Kubernetes ≥ 1.28): the operator does not depend on itself, so a lone replica that
    is stopping, starting or restarting can always write its finalizers and status.
    ``native_requester``: the API server stamps the requester (see ``REQUESTER_HOOK``).
    """
    out = []
    for hook in webhooks:
        rules = [r for r in hook.get("rules") or [] if list(r.get("apiGroups") or []) == [group]]
        if not rules:  # never register anything outside our API group
            continue
        if native_requester and str(hook.get("name", "")).startswith(f"{REQUESTER_HOOK}."):
            continue
        adjusted = {**hook, "rules": rules, "failurePolicy": failure_policy,
                    "timeoutSeconds": max(1, min(30, int(timeout)))}
        conditions = []
        if exempt:
            conditions.append({
                "name": "not-the-operator",
                "expression": f"request.userInfo.username != {json.dumps(exempt)}",
            })
        if str(hook.get("name", "")).startswith(f"{GATE_HOOK}."):
            # The gate decides promotions only (stage rules are the CRD's): every other write of a
            # ModelDeployment skips the network hop.
            conditions.append({"name": "production", "expression": "object.spec.stage == 'production'"})
        if conditions:
            adjusted["matchConditions"] = conditions
        out.append(adjusted)
    return out


def install_config_rewrite(failure_policy: str, timeout: int, exempt: str | None = None,
                           native_requester: bool = False) -> None:
    """Wrap kopf's webhook-configuration builder (module global, looked up at each call)."""
    original: Callable[..., list[dict[str, Any]]] = getattr(
        engine.build_webhooks, "__wrapped__", engine.build_webhooks)

    @functools.wraps(original)
    def build_webhooks(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return adjust_webhooks(original(*args, **kwargs), failure_policy=failure_policy,
                               timeout=timeout, exempt=exempt, native_requester=native_requester)

    engine.build_webhooks = build_webhooks


def decide_failure_policy(setting: str, native_served: Callable[[], bool]) -> str:
    """Fail or Ignore; ``auto`` asks whether the cluster serves MutatingAdmissionPolicy."""
    if setting in (FAIL, IGNORE):
        return setting
    if setting != AUTO:
        raise ValueError(f"webhook failure policy must be Fail, Ignore or auto, not {setting!r}")
    try:
        served = native_served()
    except (KubeError, OSError) as exc:  # cannot tell: fail closed on our own group
        log.warning("cannot discover MutatingAdmissionPolicy support (%s): failurePolicy Fail", exc)
        return FAIL
    return IGNORE if served else FAIL


def native_requester(failure_policy: str, native_served: Callable[[], bool]) -> bool:
    """Whether the API server stamps the requester, so the stamp webhook is left out: only where
    the webhooks are the second layer (Ignore) and MutatingAdmissionPolicy is served. Under Fail
    the webhooks are the enforcement, the stamp included."""
    if failure_policy != IGNORE:
        return False
    try:
        return native_served()
    except (KubeError, OSError) as exc:  # cannot tell: keep the webhook
        log.warning("cannot discover MutatingAdmissionPolicy support (%s): the requester stamp "
                    "stays a webhook", exc)
        return False


def native_policies_served(kube: Kube) -> bool:
    return discovery.serves(kube, ADMISSION_API, "mutatingadmissionpolicies")


def operator_identity(cfg: OperatorConfig, kube: Kube) -> str:
    """The user name the operator's own requests carry (its status writes are the only allowed)."""
    if cfg.webhook.operator_identity:
        return cfg.webhook.operator_identity
    try:
        user, _ = discovery.whoami(kube)
        if user:
            return user
    except (KubeError, OSError) as exc:
        log.warning("SelfSubjectReview failed (%s); assuming the default ServiceAccount", exc)
    return f"system:serviceaccount:{cfg.lease_namespace}:mlsec-operator"


def make_server(cfg: OperatorConfig, routes: Mapping[str, dispatch.Route] | None = None) -> Server:
    """The TLS server for ``cfg``: provided certificate or a generated one for the right names."""
    w = cfg.webhook
    service = parse_service(w.service) if w.service else None
    host = w.host or (f"{service[1]}.{service[0]}.svc" if service else None) or \
        kopf.WebhookServer._get_accessible_addr(cfg.bind_address)
    if w.cert_dir:
        cert = webhook_tls.from_dir(Path(w.cert_dir))
    else:
        names = [host, *(service_hosts(service[0], service[1]) if service else []), "localhost"]
        if host in ("127.0.0.1", "localhost"):
            names.append("127.0.0.1")
        cert = webhook_tls.generate(names)
        if service is not None:
            log.warning("webhook certificate generated by this replica: with several replicas behind "
                        "%s/%s, provide one with --webhook-cert-dir", service[0], service[1])
    return Server(addr=cfg.bind_address, port=cfg.webhook_port, host=host, service=service, routes=routes,
                  certfile=str(cert.certfile), pkeyfile=str(cert.keyfile), cadata=cert.cadata)
