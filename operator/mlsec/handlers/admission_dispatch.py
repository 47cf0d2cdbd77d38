"""Serving our AdmissionReviews without kopf's per-request pipeline.

kopf still registers the webhooks (its decorators build the configurations it keeps) and runs
the server (:class:`mlsec.handlers.webhook.Server`, on kopf's TLS set-up and certificate
reloads). What it did per request — find the resource, recall a memo, build bodies, a diff, a
per-object logger, a cause, a handler state, run the handlers through its executor, and compute
the JSON patch by deep-copying and diffing the whole object — cost ~0.35 ms of CPU, five times
the HTTP exchange itself, and with 100 requests queued on one event loop that was the p99
(``bench/webhook_latency.py``). Our handlers need none of it: each is called here with the
keyword arguments it names (and kopf's indexes, if it takes ``**``), and the
response is built the way kopf's ``build_response`` builds it.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """What a handler's ``resource`` argument needs to offer (kopf passes its Resource)."""

    kind: str
    plural: str


@dataclass(frozen=True)
class Route:
    fn: Callable[..., Awaitable[None]]
    operations: frozenset[str]
    subresource: str | None
    params: frozenset[str]  # the keyword arguments the handler names
    takes_indexes: bool  # it has ``**kwargs``: kopf's indexes are passed by name
    audited: bool  # its decisions are audit records already: denials are not logged again

    @classmethod
    def of(cls, fn: Callable[..., Awaitable[None]], operations: list[str],
           subresource: str | None = None, *, audited: bool = False,
           indexes: Iterable[str] = ()) -> Route:
        """``indexes``: index names the handler may name besides :data:`ARGUMENTS`; any other
        name is refused here, at registration, rather than passed as None at every request."""
        sig = inspect.signature(fn).parameters.values()
        params = frozenset(p.name for p in sig if p.kind is not p.VAR_KEYWORD)
        if unknown := params - ARGUMENTS - set(indexes):
            raise TypeError(f"admission handler {fn.__qualname__} names {', '.join(sorted(unknown))}: "
                            f"neither an admission argument nor an index")
        return cls(fn, frozenset(operations), subresource, params,
                   any(p.kind is p.VAR_KEYWORD for p in sig), audited)


ARGUMENTS = frozenset({"operation", "userinfo", "body", "old", "new", "spec", "meta", "namespace",
                       "name", "warnings", "patch", "dryrun", "subresource", "resource"})
"""The keyword arguments :func:`serve` gives a handler (kopf's names for them)."""


class BadReview(ValueError):
    """The AdmissionReview itself is malformed (HTTP 400, as kopf answers)."""


class BadRequest(Exception):
    """The request body cannot be an AdmissionReview (HTTP 400, either protocol)."""


class NotFound(Exception):
    """No webhook of ours at this path (HTTP 404, either protocol)."""


def _pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _pruned(value: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch as a new value: no None (deletions of nothing), no empty objects."""
    out = {}
    for k, v in value.items():
        if isinstance(v, Mapping):
            v = _pruned(v)
            if not v:
                continue
        if v is not None:
            out[k] = v
    return out


def json_patch(body: Mapping[str, Any], merge: Mapping[str, Any],
               path: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The JSON-patch ops that apply the merge patch ``merge`` to ``body`` (pure; no-ops left out).

    A missing parent is added whole, so every op applies to ``body`` as it is."""
    ops: list[dict[str, Any]] = []
    for key, value in merge.items():
        at = (*path, str(key))
        exists = key in body
        if value is None:
            if exists:
                ops.append({"op": "remove", "path": _pointer(at)})
        elif isinstance(value, Mapping):
            current = body.get(key) if exists else None
            if isinstance(current, Mapping):
                ops += json_patch(current, value, at)
            elif whole := _pruned(value):  # an empty object merged in changes nothing
                ops.append({"op": "replace" if exists else "add", "path": _pointer(at), "value": whole})
        elif not exists:
            ops.append({"op": "add", "path": _pointer(at), "value": value})
        elif body[key] != value:
            ops.append({"op": "replace", "path": _pointer(at), "value": value})
    return ops


async def serve(review: Mapping[str, Any], hook: str, route: Route,
                indexes: Mapping[str, Any]) -> dict[str, Any]:
    """The AdmissionReview response to ``review`` from the handler at ``route``."""
    req = review.get("request")
    if not isinstance(req, Mapping):
        raise BadReview("the AdmissionReview has no request")
    userinfo = req.get("userInfo")
    new, old = req.get("object"), req.get("oldObject")
    body = new if new is not None else old
    if userinfo is None:
        raise BadReview("User info is missing from the admission request.")
    if not isinstance(body, Mapping):
        raise BadReview("Either old or new object is missing from the admission request.")
    response: dict[str, Any] = {"uid": str(req.get("uid") or ""), "allowed": True}
    out = {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
           "kind": review.get("kind", "AdmissionReview"), "response": response}
    operation = req.get("operation")
    if operation not in route.operations or (req.get("subResource") or None) != route.subresource:
        return out  # not what this hook was registered for: kopf would run no handler either

    meta = body.get("metadata") or {}
    kind = req.get("kind") or {}
    resource = req.get("resource") or {}
    warnings: list[str] = []
    patch = kopf.Patch() if "patch" in route.params else None  # only a mutating handler names it
    available: dict[str, Any] = {
        "operation": operation, "userinfo": userinfo, "body": body, "old": old, "new": new,
        "spec": body.get("spec") or {}, "meta": meta,
        "namespace": meta.get("namespace") or req.get("namespace"),
        "name": meta.get("name") or req.get("name"),
        "warnings": warnings, "patch": patch, "dryrun": bool(req.get("dryRun")),
        "subresource": req.get("subResource"),
        "resource": Kind(str(kind.get("kind") or ""), str(resource.get("resource") or "")),
    }
    # As kopf does, an index overrides a keyword argument of the same name.
    kwargs = {name: indexes[name] if name in indexes else available.get(name) for name in route.params}
    if route.takes_indexes:
        kwargs.update(indexes)
    try:
        await route.fn(**kwargs)
    except kopf.AdmissionError as exc:
        response["allowed"] = False
        response["status"] = {"message": str(exc) or repr(exc), "code": exc.code or 500}
        log.log(logging.DEBUG if route.audited else logging.INFO, "%s: denied %s of %s %s/%s by %s: %s",
                hook, operation, kind.get("kind"), available["namespace"], available["name"],
                userinfo.get("username"), exc)
    except Exception:
        log.exception("admission webhook %s failed", hook)
        response["allowed"] = False
        response["status"] = {"message": f"the mlsec admission webhook {hook} failed; see the "
                                         "operator's log", "code": 500}
    if warnings:
        response["warnings"] = [str(w) for w in warnings]
    if response["allowed"] and patch is not None and (ops := json_patch(body, patch)):
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode("ascii")
        response["patchType"] = "JSONPatch"
    return out
