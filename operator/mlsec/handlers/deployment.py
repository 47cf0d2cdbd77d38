"""ModelDeployment reconcile: read, build, apply what differs, report — level-based.

Triggers: the ModelDeployment's own events and a change of its namespace's policy or approvals
(queued by :mod:`mlsec.handlers.models`), and any watch event of a child that someone other than
the operator wrote or deleted (the children are watched outside kopf, :mod:`mlsec.clients.watch`:
kopf would keep state for each of them). Every trigger
runs the same :func:`reconcile`, which compares each desired child with the live one and writes
only those that differ, so an idle operator writes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicy, ModelDeployment, validation_messages
from mlsec.api.deployment import REQUESTED_BY
from mlsec.audit.events import Action, Context, EventType, Resource, Result
from mlsec.builders import compliance
from mlsec.builders.children import CHILD_KINDS, child_names, desired_children
from mlsec.builders.conditions import Cond
from mlsec.builders.drift import in_sync, touched_by_others
from mlsec.builders.naming import LABEL_MANAGED_BY, MANAGED_BY
from mlsec.clients.kube import FIELD_MANAGER, KubeError, resource_of, transport_for
from mlsec.clients.rest import Transport
from mlsec.clients.watch import ListWatch
from mlsec.gate import Decision
from mlsec.handlers import allocator, context, leader, observed, policy, promotion, settings
from mlsec.handlers import vault as vault_step
from mlsec.handlers.metrics import WRITES, observe
from mlsec.handlers.status import write_status

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
API = f"{GROUP}/{VERSION}"
CHILD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"  # what every child carries
log = logging.getLogger(__name__)


# --- the policy in force ----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parse_policy(namespace: str, name: str, generation: int, spec_json: str) -> MLSecurityPolicy | str:
    """Validated policy, or the reason it is invalid (cached per generation)."""
    try:
        return MLSecurityPolicy.model_validate(
            {"metadata": {"name": name, "namespace": namespace}, "spec": json.loads(spec_json)})
    except ValidationError as exc:
        return "; ".join(validation_messages(exc))


# (namespace, name, uid, generation) → (the index's spec object, its parse): no JSON per admission.
_parsed: dict[tuple[str, str, str, int], tuple[Any, MLSecurityPolicy | str]] = {}


def policy_in_force(namespace: str, indexes: dict[str, Any]) -> tuple[MLSecurityPolicy | None, str]:
    """(policy, "") or (None, why not) — from kopf's policy index, no API call."""
    entry = policy.active_policy(indexes["policies_by_namespace"], namespace)
    if entry is None:
        return None, f"no MLSecurityPolicy in namespace {namespace}: nothing is rolled out (fail closed)"
    _, name, generation, spec, uid = entry
    key = (namespace, name, uid, generation)
    cached = _parsed.get(key)
    if cached is not None and cached[0] is spec:  # the very entry kopf indexed: parsed already
        parsed = cached[1]
    else:
        parsed = _parse_policy(namespace, name, generation, json.dumps(spec, sort_keys=True))
        if len(_parsed) > 1024:
            _parsed.clear()
        _parsed[key] = (spec, parsed)
    if isinstance(parsed, str):
        return None, f"MLSecurityPolicy {name} is invalid: {parsed}"
    return parsed, ""


# --- one reconcile at a time per object -------------------------------------------------------

# Striped: a lock per model was an object and an entry kept for every model ever seen (1 MiB at
# 5,000, never freed). Two models on one stripe only wait for each other; a reconcile never
# holds two models' locks.
_stripes = tuple(threading.Lock() for _ in range(64))


@contextmanager
def _locked(namespace: str, name: str) -> Iterator[None]:
    with _stripes[hash((namespace, name)) % len(_stripes)]:
        yield


@dataclass
class Outcome:
    rolled_out: bool
    retry: str | None = None  # a transient reason to try again later (e.g. Vault unavailable)
    written: list[str] = field(default_factory=list)


def reconcile(namespace: str, name: str, indexes: dict[str, Any], *, created: bool = False) -> Outcome:
    """``created``: the trigger is the model's creation, so none of its children can exist yet
    (they belong to its uid): write them without reading them first."""
    with _locked(namespace, name), observe(KIND):
        return _reconcile(namespace, name, indexes, created)


def _reconcile(namespace: str, name: str, indexes: dict[str, Any], created: bool = False) -> Outcome:
    kube = context.kube()
    # Re-read under the lock: another trigger may have changed the object meanwhile.
    body = kube.get(API, KIND, namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return Outcome(rolled_out=False)
    try:
        md = ModelDeployment.model_validate(body)
    except ValidationError as exc:
        msg = "; ".join(validation_messages(exc))
        write_status(KIND, body, [Cond("Ready", False, "InvalidSpec", msg),
                                  Cond("PolicyCompliant", False, "InvalidSpec", msg)], _rollout_fields(body))
        return Outcome(rolled_out=False)

    pol, why = policy_in_force(namespace, indexes)
    if pol is None:
        reason = "NoPolicy" if why.startswith("no ") else "PolicyInvalid"
        if write_status(KIND, body, [Cond("Ready", False, reason, why),
                                     Cond("PolicyCompliant", False, reason, why)], _rollout_fields(body)):
            context.post_event(body, "Warning", reason, why)
        return Outcome(rolled_out=False)

    enforce = pol.spec.enforcement == "enforce"
    problems = compliance.violations(md, pol)
    conds: list[Cond] = []
    if problems:
        text = "; ".join(str(p) for p in problems)
        conds.append(Cond("PolicyCompliant", False, "PolicyViolation", text))
        if enforce:
            conds.append(Cond("Ready", False, "RolloutBlocked",
                              f"not rolled out, the previous rollout stays: {text}"))
            if write_status(KIND, body, conds, _rollout_fields(body)):
                context.post_event(body, "Warning", "RolloutBlocked", text)
                _audit(md, pol, EventType.ROLLOUT_BLOCKED, "DENIED", text)
            return Outcome(rolled_out=False)
    else:
        conds.append(Cond("PolicyCompliant", True, "Compliant", "all policy rules are met"))

    # The promotion gate, third layer: whatever admission let through, production runs only
    # approved releases; otherwise the previous rollout stays.
    stage = md.spec.stage.value
    requester = (body["metadata"].get("annotations") or {}).get(REQUESTED_BY) or \
        (body.get("status") or {}).get("requestedBy")
    promotion.refresh(namespace, indexes, only=name)
    decision = promotion.decide(namespace, name, dict(body["spec"]), requester, pol, indexes)
    conds.append(promotion.decision_condition(decision, stage))
    gate_fields = _gate_fields(decision, requester)
    status = body.get("status") or {}
    if stage == "production" and not decision.allowed:
        message = decision.message()
        if enforce:
            conds.append(Cond("Ready", False, "PromotionBlocked",
                              f"production rollout held back, the previous rollout stays: {message}"))
            if write_status(KIND, body, conds, {**_rollout_fields(body), **gate_fields}):
                context.post_event(body, "Warning", "PromotionBlocked", message)
                promotion.audit_promotion(namespace, name, md.spec.version, False, message, requester, pol)
            return Outcome(rolled_out=False)
        conds.append(Cond("PolicyCompliant", False, "PromotionNotApproved",
                          f"audit mode: in production without approvals: {message}"))
    elif stage == "production" and (status.get("stage") != "production"
                                    or status.get("lastAppliedVersion") != md.spec.version
                                    or status.get("lastAppliedImage") != md.spec.image):
        promotion.audit_promotion(namespace, name, md.spec.version, True, decision.message(),
                                  requester, pol)

    # Vault before the pod: in enforce mode no pod may start without its Vault role and policy.
    vault_fields: dict[str, Any] = {}
    if vault_step.needed(md):
        outcome = vault_step.ensure(md, pol)
        conds.append(Cond("VaultReady", outcome.ok, outcome.reason, outcome.message))
        vault_step.report_repair(body, outcome, after_failure=True)
        if outcome.ok:
            vault_fields = {"vault": {k: v for k, v in (("role", outcome.role),
                                                         ("policy", outcome.policy_name),
                                                         ("transitKey", outcome.transit_key)) if v}}
        elif enforce:
            conds.append(Cond("Ready", False, "VaultNotReady",
                              f"not rolled out until Vault is ready: {outcome.message}"))
            if write_status(KIND, body, conds, {**_rollout_fields(body), **gate_fields}):
                context.post_event(body, "Warning", outcome.reason, outcome.message)
            return Outcome(rolled_out=False, retry=outcome.message)
    elif (body.get("status") or {}).get("vault"):
        # No secrets any more, but a Vault role and policy were written for this model: they go
        # (least privilege; then mlsec.handlers.models removes the finalizer). The status below
        # then drops its vault fields.
        vault_step.retire_unused(body)

    desired = desired_children(md, pol)
    written = _apply_children(namespace, desired, created)
    ready_msg = "all children are in place" if not problems else \
        "rolled out in audit mode despite policy violations"
    conds.append(Cond("Ready", True, "Reconciled", ready_msg))
    fields = {
        "children": {k: v for k, v in child_names(md).items()
                     if any(c["kind"] == k for c in desired)},
        "lastAppliedVersion": md.spec.version,
        "lastAppliedImage": md.spec.image,
        "stage": md.spec.stage.value,
        **gate_fields,
        **vault_fields,
    }
    write_status(KIND, body, conds, fields)
    if written:
        _audit(md, pol, EventType.RECONCILED, "SUCCESS", f"applied {', '.join(written)}")
    return Outcome(rolled_out=True, written=written)


ROLLOUT_FIELDS = ("children", "lastAppliedVersion", "lastAppliedImage", "stage", "vault")


def _rollout_fields(body: dict[str, Any]) -> dict[str, Any]:
    """What the current rollout is, re-sent unchanged when a new spec is held back: status is
    server-side applied, so a field left out would be removed."""
    status = body.get("status") or {}
    return {k: status[k] for k in ROLLOUT_FIELDS if k in status}


def _gate_fields(decision: Decision, requester: str | None) -> dict[str, Any]:
    approvals = []
    for v in decision.verdicts[:32]:
        entry = {"name": v.name, "approver": v.approver or None, "platformRole": v.role,
                 "decision": v.decision, "counted": v.counted, "reason": v.reason[:253]}
        approvals.append({k: x for k, x in entry.items() if x is not None})
    missing = [f"{s.role}: {s.needed - s.have} more" + (f" ({s.why})" if s.why else "")
               for s in decision.missing[:16]]
    out: dict[str, Any] = {"approvals": approvals, "missingApprovals": missing,
                           "promotionPending": "" if decision.allowed else decision.message()[:512]}
    if requester:
        out["requestedBy"] = requester
    return out


# Children of one reconcile are written concurrently, in two waves: everything the pod relies on
# (ServiceAccount, Service, Istio policy), then the Deployment, so no pod starts before its
# identity and mTLS rules exist. Round trips, not CPU, bound a reconcile.
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlsec-children")


def _sync_child(namespace: str, child: dict[str, Any], created: bool) -> str | None:
    """Write ``child`` unless it is in sync; its "Kind/name" if written."""
    kube = context.kube()
    meta = child["metadata"]
    known = observed.in_sync(child)
    if known is True:
        return None
    if known is None and not created:  # not seen yet, or edited by someone else: compare it whole
        live = kube.get(child["apiVersion"], child["kind"], namespace, meta["name"])
        if in_sync(child, live):
            if live is not None:
                observed.record(live, FIELD_MANAGER)
            return None
    observed.record(kube.apply(child), FIELD_MANAGER)
    WRITES.labels(child["kind"]).inc()
    return f"{child['kind']}/{meta['name']}"


def _apply_children(namespace: str, desired: list[dict[str, Any]], created: bool = False) -> list[str]:
    kube = context.kube()
    written = []
    wanted = {(c["apiVersion"], c["kind"], c["metadata"]["name"]) for c in desired}
    first = [c for c in desired if c["kind"] != "Deployment"]
    last = [c for c in desired if c["kind"] == "Deployment"]
    for wave in (first, last):
        futures = [_pool.submit(_sync_child, namespace, c, created) for c in wave]
        results = [f.exception() or f.result() for f in futures]  # wait for all before raising
        for r in results:
            if isinstance(r, BaseException):
                raise r
        written += [r for r in results if isinstance(r, str)]
    # Prune children no longer desired (e.g. the EnvoyFilter when the rate limit goes away).
    owner = desired[-1]["metadata"]["ownerReferences"][0]["uid"] if desired else None
    for api_version, kind in CHILD_KINDS:
        if any(w[0] == api_version and w[1] == kind for w in wanted):
            continue
        for live in kube.list(api_version, kind, namespace,
                              label_selector=CHILD_SELECTOR):
            refs = live.get("metadata", {}).get("ownerReferences") or []
            if owner and any(r.get("uid") == owner for r in refs):
                kube.delete(api_version, kind, namespace, live["metadata"]["name"])
                observed.forget(kind, namespace, live["metadata"]["name"])
                written.append(f"-{kind}/{live['metadata']['name']}")
    return written


def _audit(md: ModelDeployment, pol: MLSecurityPolicy, event: EventType, status: str, reason: str) -> None:
    context.audit().record(
        event,
        resource=Resource(type=KIND, name=md.metadata.name, namespace=md.metadata.namespace,
                          version=md.spec.version),
        action=Action(type="RECONCILE", details={"stage": md.spec.stage.value, "image": md.spec.image}),
        result=Result(status=status, reason=reason),
        context=Context(policy=f"{pol.metadata.namespace}/{pol.metadata.name}"),
    )


# --- kopf wiring --------------------------------------------------------------------------------


# The models themselves are watched and queued in mlsec.handlers.models, which calls reconcile.


def _owner_name(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


_repairs = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlsec-repair")
_watches: list[ListWatch] = []


def _child_seen(type_: str | None, body: dict[str, Any]) -> None:
    """A child's watch event (in its watch thread): remember what we saw; have it repaired if
    someone else edited or deleted it. Most events are our own writes echoing back."""
    owner = _owner_name(body)
    if owner is None:
        return
    meta = body.get("metadata", {})
    namespace = str(meta.get("namespace"))
    if type_ == "DELETED":
        observed.forget(str(body.get("kind")), namespace, str(meta.get("name")))
    else:
        observed.record(body, FIELD_MANAGER)
    if type_ is None or not leader.leading():  # a (re)listing: the model's resume reconciles
        return
    if type_ != "DELETED" and not touched_by_others(body, FIELD_MANAGER):
        return
    _repairs.submit(_repair, namespace, owner, str(body.get("kind")))


def _repair(namespace: str, owner: str, kind: str) -> None:
    try:
        reconcile(namespace, owner, leader.indexes())
    except KubeError as exc:
        if exc.status == 403 and "being terminated" in exc.message:
            return  # the namespace is going away: nothing to repair
        log.exception("repairing %s of %s/%s failed", kind, namespace, owner)
    except Exception:  # logged; the next event or resume retries
        log.exception("repairing %s of %s/%s failed", kind, namespace, owner)


def child_watches(transport: Transport, namespaces: list[str]) -> list[ListWatch]:
    """One list+watch per child kind and watched namespace (or the whole cluster), label-selected
    by the API server. No leader filter: every replica keeps its view of the children current."""
    scopes: list[str | None] = list(namespaces) or [None]
    watches = [ListWatch(transport, api_version, kind, resource_of(api_version, kind).path(ns),
                         CHILD_SELECTOR, _child_seen)
               for api_version, kind in CHILD_KINDS for ns in scopes]
    for w in watches:
        w.on_listed = allocator.request_trim  # the pages of the listing are garbage now
    return watches


def children_listed(timeout: float) -> bool:
    """Wait until every child watch has listed once (at most ``timeout`` seconds in all)."""
    deadline = time.monotonic() + timeout
    return all(w.listed.wait(max(0.0, deadline - time.monotonic())) for w in list(_watches))


@kopf.on.startup(id="child-watches")
def start_child_watches(**_: Any) -> None:
    if _watches:
        return
    # Its own pool: each watch holds a connection for its life and must not starve the requests.
    scopes = max(1, len(settings.CONFIG.namespaces))
    _watches.extend(child_watches(transport_for(pool_size=len(CHILD_KINDS) * scopes),
                                  settings.CONFIG.namespaces))
    for w in _watches:
        w.start()


@kopf.on.cleanup(id="child-watches")
def stop_child_watches(**_: Any) -> None:
    for w in _watches:
        w.stop()
    _watches.clear()
