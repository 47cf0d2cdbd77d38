"""The promotion gate inside the operator: approvals → decisions → the namespace's ledger.

The ledger (a PromotionLedger named ``promotion-ledger`` per namespace, written only by the
operator) is what the API server's ValidatingAdmissionPolicy checks, so the gate holds while the
operator is down. It is recomputed when approvals, models or the policy change, and by one loop
for all namespaces that drops expired approvals (every :data:`EXPIRY_INTERVAL` seconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicy
from mlsec.api.ledger import pack as pack_ledger
from mlsec.api.ledger import unpack as unpack_ledger
from mlsec.audit.events import Action, Actor, Context, EventType, Resource, Result
from mlsec.builders.conditions import Cond
from mlsec.clients.kube import KubeError
from mlsec.gate import Decision
from mlsec.gate.adapt import RoleResolver, approval_of, ledger_spec, release_of, roles_from_groups, rules_of
from mlsec.gate.rules import evaluate
from mlsec.handlers import context, leader, loops, model_store, policy

API = f"{GROUP}/{VERSION}"
LEDGER_KIND = "PromotionLedger"
LEDGER_NAME = "promotion-ledger"
EXPIRY_INTERVAL = 30.0
log = logging.getLogger(__name__)

# name, creationTimestamp, spec, status
ApprovalEntry = tuple[str, str, dict[str, Any], dict[str, Any]]
# Who else wants to know (the reconcile re-checks models whose decision may have changed).
ON_DECISIONS_CHANGED: list[Callable[[str, dict[str, Any]], None]] = []
# A namespace-wide reason to refuse promotions (e.g. Vault without audit device); set by others.
BLOCKERS: list[Callable[[str, MLSecurityPolicy], str]] = []


@kopf.index(GROUP, VERSION, "modelapprovals")
def approvals_by_namespace(namespace: str, name: str, meta: kopf.Meta, spec: kopf.Spec,
                           status: kopf.Status, **_: Any) -> dict[str, ApprovalEntry]:
    return {namespace: (name, str(meta.get("creationTimestamp", "")), dict(spec), dict(status))}


# --- roles -----------------------------------------------------------------------------------------


def resolver(namespace: str, pol: MLSecurityPolicy) -> RoleResolver:
    """Platform roles from the last successful LDAP sync; before any, from authenticated groups."""
    try:
        from mlsec.handlers import rbac

        synced: Callable[[str, str], frozenset[str] | None] | None = getattr(rbac, "synced_roles_of", None)
    except ImportError:
        synced = None

    def resolve(user: str, groups: tuple[str, ...]) -> frozenset[str]:
        if synced is not None:
            roles = synced(namespace, user)
            if roles is not None:
                return roles
        return roles_from_groups(groups, pol)

    return resolve


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else datetime.now(UTC)


def _approvals(namespace: str, pol: MLSecurityPolicy, indexes: dict[str, Any]) -> list[Any]:
    resolve = resolver(namespace, pol)
    return [approval_of(name, spec, _parse_time(created), resolve)
            for name, created, spec, _ in context.snapshot(indexes["approvals_by_namespace"], namespace)]


# --- decisions -------------------------------------------------------------------------------------


def decide(namespace: str, md_name: str, spec: dict[str, Any], requester: str | None,
           pol: MLSecurityPolicy, indexes: dict[str, Any]) -> Decision:
    """The exact decision for promoting ``spec`` as ``requester`` (admission and reconcile)."""
    approvals = [a for a in _approvals(namespace, pol, indexes) if a.model == md_name]
    release = release_of({**spec, "_name": md_name}, requested_by=requester)
    return evaluate(release, approvals, rules_of(pol), datetime.now(UTC))


def blocked_reason(namespace: str, pol: MLSecurityPolicy) -> str:
    return "; ".join(r for r in (b(namespace, pol) for b in BLOCKERS) if r)


# --- the ledger ------------------------------------------------------------------------------------

_ns_locks: dict[str, threading.Lock] = {}
_ns_guard = threading.Lock()
_ledgers: dict[str, dict[str, Any]] = {}  # namespace → ledger spec last computed
_written: dict[str, str] = {}  # namespace → hash of the ledger spec last written (or read)
_recorded: set[tuple[str, str]] = set()  # approvals whose APPROVAL_RECORDED is in the audit log


def _lock(namespace: str) -> threading.Lock:
    with _ns_guard:
        return _ns_locks.setdefault(namespace, threading.Lock())


def refresh(namespace: str, indexes: dict[str, Any], only: str | None = None,
            *, policy_changed: bool = False) -> dict[str, Decision]:
    """Recompute the namespace's ledger (all models, or just ``only``) and approval statuses;
    write only what changed."""
    from mlsec.handlers.deployment import policy_in_force  # one module owns policy lookup

    pol, why = policy_in_force(namespace, indexes)
    if pol is None:
        if policy_changed:  # the policy went away or became invalid: close the native gate
            with _lock(namespace):
                _block_ledger(namespace, why)
        return {}
    with _lock(namespace):
        approvals = _approvals(namespace, pol, indexes)
        blocked = blocked_reason(namespace, pol)
        now = datetime.now(UTC)
        cached = _ledgers.get(namespace)
        if only is not None and cached is not None:  # one model: read only its spec
            one = model_store.model_spec(indexes, namespace, only)
            part = {only: one} if one is not None else {}
            spec, decisions, verdicts = ledger_spec(pol, part, [a for a in approvals if a.model == only],
                                                    now, blocked)
            # The pending texts stay out (each model's status carries its own): only releases merge.
            releases = {k: v for k, v in cached["releases"].items() if k != only} | spec["releases"]
            spec = {**spec, "releases": dict(sorted(releases.items()))}
        else:
            models = dict(context.snapshot(model_store.models_index(indexes), namespace))
            spec, decisions, verdicts = ledger_spec(pol, models, approvals, now, blocked)
        _ledgers[namespace] = spec
        _write_ledger(namespace, spec)
        _write_approval_statuses(namespace, verdicts, indexes, only if cached is not None else None)
    return decisions


def _block_ledger(namespace: str, why: str) -> None:
    """No valid policy any more: the ledger refuses every promotion (it is never deleted by us,
    and its guard keeps others from deleting it while the namespace lives)."""
    live = context.kube().get(API, LEDGER_KIND, namespace, LEDGER_NAME)
    if live is None or (live.get("spec") or {}).get("blocked") == why[:512]:
        return
    _ledgers.pop(namespace, None)
    _write_ledger(namespace, {**unpack_ledger(live["spec"]), "blocked": why[:512]})


def _write_ledger(namespace: str, spec: dict[str, Any]) -> None:
    """Write ``spec`` (releases as a map) packed, unless the live ledger has it."""
    spec = pack_ledger(spec)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    kube = context.kube()
    if namespace not in _written:
        live = kube.get(API, LEDGER_KIND, namespace, LEDGER_NAME)
        if live is not None:
            _written[namespace] = hashlib.sha256(
                json.dumps(live.get("spec") or {}, sort_keys=True).encode()).hexdigest()
    if _written.get(namespace) == digest:
        return
    # No owner reference: the ledger outlives its policy (then blocking every promotion); the
    # ledger guard lets it go only with its namespace.
    body = {
        "apiVersion": API, "kind": LEDGER_KIND,
        "metadata": {"name": LEDGER_NAME, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "mlsec-operator"}},
        "spec": spec,
    }
    try:
        kube.apply(body)
    except KubeError as exc:
        if exc.status == 404:  # the PromotionLedger CRD is not installed: say so once per content
            log.warning("cannot write the promotion ledger in %s: %s", namespace, exc.message)
            _written[namespace] = digest
            return
        raise
    _written[namespace] = digest


UNBOUND = "not bound to the current or any approved release of this model"


def _write_approval_statuses(namespace: str, verdicts: dict[str, Any], indexes: dict[str, Any],
                             only: str | None) -> None:
    for name, _created, spec, status in context.snapshot(indexes["approvals_by_namespace"], namespace):
        if only is not None and spec.get("modelDeployment") != only:
            continue
        v = verdicts.get(name)
        fields: dict[str, Any] = {
            "approver": spec.get("approvedBy"),
            "counted": bool(v.counted) if v else False,
            "reason": (v.reason if v else UNBOUND)[:1024],
        }
        if v and v.role:
            fields["platformRole"] = v.role
        if v and v.valid_until:
            fields["validUntil"] = v.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = {k: val for k, val in fields.items() if val is not None}
        if all(status.get(k) == val for k, val in fields.items()):
            continue
        try:
            context.kube().apply_status(API, "ModelApproval", namespace, name, fields)
        except KubeError as exc:
            if exc.status != 404:
                raise
        if (namespace, name) not in _recorded and not status.get("approver"):  # first evaluation
            _recorded.add((namespace, name))
            context.audit().record(
                EventType.APPROVAL_REJECTED if spec.get("decision") == "reject"
                else EventType.APPROVAL_RECORDED,
                actor=Actor(user_id=spec.get("approvedBy"),
                            groups=tuple(spec.get("approverGroups") or ())),
                resource=Resource(type="ModelApproval", name=name, namespace=namespace,
                                  version=str(spec.get("version"))),
                action=Action(type="APPROVE", details={"modelDeployment": spec.get("modelDeployment"),
                                                       "imageDigest": spec.get("imageDigest"),
                                                       "decision": spec.get("decision")}),
                result=Result(status="SUCCESS", reason=fields["reason"]),
            )


def decision_condition(decision: Decision | None, stage: str) -> Cond:
    if decision is None:
        return Cond("PromotionApproved", None, "NotEvaluated", "no policy in force")
    if decision.allowed:
        return Cond("PromotionApproved", True, "Approved", decision.message()[:1024])
    reason = "Rejected" if decision.rejected_by else "ApprovalsMissing"
    prefix = "production rollout held back: " if stage == "production" else "not yet promotable: "
    return Cond("PromotionApproved", False, reason, prefix + decision.message()[:900])


def audit_promotion(namespace: str, name: str, version: str, allowed: bool, message: str,
                    requester: str | None, pol: MLSecurityPolicy, request_id: str | None = None) -> None:
    context.audit().record(
        EventType.PROMOTION_ALLOWED if allowed else EventType.PROMOTION_DENIED,
        actor=Actor(user_id=requester),
        resource=Resource(type="ModelDeployment", name=name, namespace=namespace, version=version),
        action=Action(type="ROLLOUT", details={"to": "production", "layer": "reconcile"}),
        result=Result(status="SUCCESS" if allowed else "DENIED", reason=message),
        context=Context(request_id=request_id, policy=f"{namespace}/{pol.metadata.name}"),
    )


# --- triggers --------------------------------------------------------------------------------------


def _notify(namespace: str, indexes: dict[str, Any]) -> None:
    for callback in ON_DECISIONS_CHANGED:
        callback(namespace, indexes)


@kopf.on.event(GROUP, VERSION, "modelapprovals", when=leader.leading)
def approval_event(type: str | None, namespace: str, **kwargs: Any) -> None:
    if type is None:  # initial listing: the expiry loop and the models' resume handle it
        return
    refresh(namespace, kwargs)
    _notify(namespace, kwargs)


def expire_approvals(namespace: str, indexes: dict[str, Any]) -> None:
    """Approvals expire by the clock, which the API server's CEL cannot read: re-evaluate."""
    before = _written.get(namespace)
    refresh(namespace, indexes)
    if before != _written.get(namespace):
        _notify(namespace, indexes)


# One loop for every namespace rather than a kopf timer per policy: each timer is a task with its
# handler state and keeps the policy's last body, ~20 KiB a namespace (bench/README.md, ninth run).
async def _expiry_loop(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if not leader.leading():
            continue
        indexes = leader.indexes()
        for namespace in sorted(indexes.get("policies_by_namespace") or ()):  # read in the loop
            try:
                await asyncio.to_thread(expire_approvals, namespace, indexes)
            except Exception:
                log.exception("re-evaluating the approvals of %s failed", namespace)


loops.operator_loop("approval-expiry", lambda: _expiry_loop(EXPIRY_INTERVAL))


def _policy_changed(namespace: str, kwargs: dict[str, Any]) -> None:
    _written.pop(namespace, None)
    refresh(namespace, kwargs, policy_changed=True)


policy.ON_POLICY_CHANGE.insert(0, _policy_changed)
