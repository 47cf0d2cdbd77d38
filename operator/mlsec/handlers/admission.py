"""Admission webhooks (kopf): the second layer of the promotion gate, with the detailed reasoning,
and the approver stamp on clusters without MutatingAdmissionPolicy.

Served by every replica (``mlsec run --webhook-port N``); registered for mlsec.io only, with a
short timeout, ``failurePolicy: Fail`` where the webhook is the gate and ``Ignore`` where the
native admission policies hold it (see :mod:`mlsec.handlers.webhook`). All registrations are
persistent: a stopping replica leaves them in place, so a rolling upgrade never opens the gate.

- ModelApproval CREATE: the approver is whoever the API server authenticated (mutating: stamped
  over whatever the client wrote; validating: refused if something else survived), and an approval
  that could never count (owner, or no required platform role) is refused. Approvals are
  immutable (the CRD says so too).
- ModelDeployment CREATE/UPDATE: the requester of a release change is stamped in the
  ``mlsec.io/requested-by`` annotation; a promotion to production is decided exactly as the
  reconcile loop does (:func:`mlsec.handlers.promotion.decide` with the requester) and refused with
  what is missing; stage skipping and model_developers promoting are refused. ``audit``
  enforcement: allowed with an API warning. Every promotion decision is an audit record.
- Status of our kinds: written only by the operator's own identity.

Handlers are coroutines: they only read kopf's in-memory indexes, so they run on the event loop
without a thread hop. kopf registers them and runs the server, but calls them through
:mod:`mlsec.handlers.admission_dispatch`, not its own per-request pipeline
(``bench/webhook_latency.py``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicy, stage_transition_error
from mlsec.api.approval import IMMUTABLE_MESSAGE
from mlsec.api.deployment import REQUESTED_BY
from mlsec.audit.events import Action, Actor, Context, EventType, Resource, Result, ResultStatus
from mlsec.gate import Decision, review
from mlsec.gate.adapt import release_of, rules_of
from mlsec.handlers import admission_dispatch as dispatch
from mlsec.handlers import context, model_store, promotion, settings, webhook
from mlsec.handlers.deployment import policy_in_force

MODELS, APPROVALS, POLICIES = "modeldeployments", "modelapprovals", "mlsecuritypolicies"
log = logging.getLogger(__name__)


@dataclass
class State:
    identity: str | None = None  # the operator's own user name (status writes)
    failure_policy: str | None = None
    native_requester: bool = False  # the API server stamps mlsec.io/requested-by: no stamp webhook
    indexed: bool = False  # kopf has listed every kind it indexes (approvals, policies)


STATE = State()


def _user(userinfo: Mapping[str, Any]) -> tuple[str, list[str]]:
    return str(userinfo.get("username") or ""), [str(g) for g in userinfo.get("groups") or []]


def _deny(message: str) -> kopf.AdmissionError:
    return kopf.AdmissionError(message, code=403)


def _audit_mode(pol: MLSecurityPolicy) -> bool:
    return str(pol.spec.enforcement) == "audit"


# --- ModelApproval ----------------------------------------------------------------------------


async def approval_stamp(userinfo: Mapping[str, Any], spec: Mapping[str, Any], patch: kopf.Patch,
                         warnings: list[str], **_: Any) -> None:
    """The approver is whoever creates the approval, with the groups they were authenticated with."""
    user, groups = _user(userinfo)
    named = spec.get("approvedBy")
    if named is not None and named != user:
        warnings.append(f"spec.approvedBy {named!r} was replaced by the authenticated user {user!r}: "
                        "an approval records its creator")
    patch.spec["approvedBy"] = user
    patch.spec["approverGroups"] = review.stamped_groups(groups)


async def approval_check(operation: str, namespace: str, userinfo: Mapping[str, Any],
                         spec: Mapping[str, Any], meta: Mapping[str, Any],
                         old: Mapping[str, Any] | None, warnings: list[str], **indexes: Any) -> None:
    if operation == "UPDATE":
        if old is not None and dict(old.get("spec") or {}) != dict(spec):
            raise _deny(IMMUTABLE_MESSAGE)
        return
    user, groups = _user(userinfo)
    forged = review.forged_approver(spec, meta.get("annotations"), user, groups)
    if forged:
        raise _deny(forged)
    pol, why = policy_in_force(namespace, indexes)
    if pol is None:
        warnings.append(f"this approval cannot count yet: {why}")
        return
    model = _model_spec(namespace, str(spec.get("modelDeployment") or ""), indexes)
    release = release_of({**model, "_name": spec.get("modelDeployment")}) if model is not None else None
    roles = promotion.resolver(namespace, pol)(user, tuple(groups))
    problem = review.approval_problem(user, roles, release, rules_of(pol))
    if problem:
        if _audit_mode(pol):
            warnings.append(f"enforcement is audit, so this approval is stored, but it will not count: "
                            f"{problem}")
            return
        raise _deny(problem)
    if model is None:
        warnings.append(f"ModelDeployment {spec.get('modelDeployment')} does not exist (yet) in {namespace}")
    elif (str(model.get("version")), release.image_digest if release else "") != \
            (str(spec.get("version")), str(spec.get("imageDigest"))):
        warnings.append(f"{spec.get('modelDeployment')} is now version {model.get('version')} "
                        f"({release.image_digest if release else '?'}): this approval counts only for "
                        f"version {spec.get('version')} at {spec.get('imageDigest')}")


def _model_spec(namespace: str, name: str, indexes: Mapping[str, Any]) -> dict[str, Any] | None:
    return model_store.model_spec(indexes, namespace, name)


# --- ModelDeployment --------------------------------------------------------------------------


async def deployment_stamp(operation: str, userinfo: Mapping[str, Any], spec: Mapping[str, Any],
                           old: Mapping[str, Any] | None, patch: kopf.Patch, **_: Any) -> None:
    """Record who requested the release (stage, version, image, …) as the API server saw them."""
    user, _groups = _user(userinfo)
    old_spec = dict(old.get("spec") or {}) if old is not None and operation == "UPDATE" else None
    old_meta = dict(old.get("metadata") or {}) if old is not None else None
    patch.meta.annotations[REQUESTED_BY] = review.requester_after(old_meta, old_spec, spec, user,
                                                                  REQUESTED_BY)


async def deployment_gate(operation: str, namespace: str, name: str | None, userinfo: Mapping[str, Any],
                          spec: Mapping[str, Any], body: Mapping[str, Any],
                          old: Mapping[str, Any] | None, warnings: list[str], dryrun: bool,
                          **indexes: Any) -> None:
    user, groups = _user(userinfo)
    name = name or str((body.get("metadata") or {}).get("name") or "")
    old_spec = dict(old.get("spec") or {}) if old is not None and operation == "UPDATE" else None
    if old_spec is not None and old_spec.get("stage") and spec.get("stage"):
        skipped = stage_transition_error(str(old_spec["stage"]), str(spec["stage"]))
        if skipped:
            raise _deny(f"{name}: {skipped}")
    if not review.is_promotion(old_spec, spec):
        return
    pol, why = policy_in_force(namespace, indexes)
    if pol is None:
        _record(EventType.PROMOTION_DENIED, namespace, name, spec, user, groups, why, None, dryrun)
        raise _deny(f"promotion of {name} to production denied: {why}")
    problems = []
    roles = promotion.resolver(namespace, pol)(user, tuple(groups))
    if (not_allowed := review.role_problem(user, roles)) is not None:
        problems.append(not_allowed)
    if blocked := promotion.blocked_reason(namespace, pol):
        problems.append(f"promotion to production is blocked in {namespace}: {blocked}")
    decision = promotion.decide(namespace, name, dict(spec), user, pol, indexes)
    if not decision.allowed:
        problems.append(review.denial_message(name, spec, decision))
    if not problems and not (STATE.indexed and model_store.STORE.listed.is_set()):
        # kopf starts serving before its initial listings (and ours of the models) are complete: an
        # approval index that is still filling could be missing a reject. Only an allow can be
        # wrong; deny until ready.
        problems.append("the operator has just started and is still loading approvals and policies: "
                        "retry in a few seconds")
    if not problems:
        _record(EventType.PROMOTION_ALLOWED, namespace, name, spec, user, groups, decision.message(),
                pol, dryrun, decision)
        return
    message = "; ".join(problems)
    if _audit_mode(pol):
        warnings.append(f"enforcement is audit, so this is allowed, but: {message}")
        _record(EventType.PROMOTION_WARNED, namespace, name, spec, user, groups, message, pol, dryrun,
                decision)
        return
    _record(EventType.PROMOTION_DENIED, namespace, name, spec, user, groups, message, pol, dryrun, decision)
    raise _deny(message)


def _record(event: EventType, namespace: str, name: str, spec: Mapping[str, Any], user: str,
            groups: list[str], reason: str, pol: MLSecurityPolicy | None, dryrun: bool,
            decision: Decision | None = None) -> None:
    if dryrun:  # nothing happened; sideEffects NoneOnDryRun
        return
    status: ResultStatus = ("SUCCESS" if event == EventType.PROMOTION_ALLOWED
                            else "WARNING" if event == EventType.PROMOTION_WARNED else "DENIED")
    details: dict[str, Any] = {"to": "production", "layer": "admission-webhook",
                               "image": spec.get("image"), "stage": spec.get("stage")}
    if decision is not None:
        details["approvedBy"] = [v.approver for v in decision.approved_by]
    context.audit().record(
        event,
        actor=Actor(user_id=user, groups=tuple(groups),
                    service_account=user if user.startswith("system:serviceaccount:") else None),
        resource=Resource(type="ModelDeployment", name=name, namespace=namespace,
                          version=str(spec.get("version"))),
        action=Action(type="PROMOTE", details=details),
        result=Result(status=status, reason=reason[:2048]),
        context=Context(request_id=webhook.REQUEST_UID.get(),
                        policy=f"{namespace}/{pol.metadata.name}" if pol else None),
    )


# --- status subresources ----------------------------------------------------------------------


async def status_guard(userinfo: Mapping[str, Any], resource: Any, name: str | None, **_: Any) -> None:
    """Only the operator reports status: nobody makes a model look approved or compliant."""
    user, _groups = _user(userinfo)
    if STATE.identity and user == STATE.identity:
        return
    kind = getattr(resource, "kind", None) or "object"
    raise _deny(f"the status of {kind} {name} is written only by the operator "
                f"({STATE.identity or 'its ServiceAccount'}); {user} may not change it")


async def indexes_ready(**_: Any) -> None:
    """Called by kopf only once every index is populated (kopf holds resource handlers until
    then); a namespace without any MLSecurityPolicy never promotes, so a policy event suffices."""
    STATE.indexed = True


# --- registration -----------------------------------------------------------------------------


def configure(settings_: kopf.OperatorSettings, **_: Any) -> None:
    """Start-up: failure policy, the operator's identity, TLS, kopf's server and managed config."""
    cfg = settings.CONFIG
    kube = context.kube()
    served = functools.cache(lambda: webhook.native_policies_served(kube))  # one discovery
    STATE.failure_policy = webhook.decide_failure_policy(cfg.webhook.failure_policy, served)
    STATE.native_requester = webhook.native_requester(STATE.failure_policy, served)
    STATE.identity = webhook.operator_identity(cfg, kube)
    webhook.install_config_rewrite(STATE.failure_policy, cfg.webhook.timeout_seconds, STATE.identity,
                                   native_requester=STATE.native_requester)
    settings_.admission.server = webhook.make_server(cfg, ROUTES)
    settings_.admission.managed = webhook.MANAGED
    log.info("admission webhooks on port %s: failurePolicy %s, timeout %ss, operator identity %s%s",
             cfg.webhook_port, STATE.failure_policy, cfg.webhook.timeout_seconds, STATE.identity,
             "; the requester is stamped natively (mlsec-deployment-stamp)" if STATE.native_requester
             else "")


ROUTES: dict[str, dispatch.Route] = {}  # webhook id → handler, served by mlsec.handlers.webhook.Server


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    """Register the webhooks and their start-up (only when the operator serves webhooks)."""
    reg = registry or kopf.get_default_registry()

    def startup(settings: kopf.OperatorSettings, **kw: Any) -> None:
        configure(settings, **kw)

    def hook(decorator: Any, plural: str, id: str, fn: Any, operations: list[str],
             subresource: str | None = None, audited: bool = False, **options: Any) -> None:
        decorator(GROUP, VERSION, plural, id=id, operations=operations, subresource=subresource,
                  registry=reg, persistent=True, **options)(fn)
        ROUTES[id] = dispatch.Route.of(fn, operations, subresource, audited=audited)

    kopf.on.startup(registry=reg, id="admission-webhooks")(startup)
    hook(kopf.on.mutate, APPROVALS, "approval-stamp", approval_stamp, ["CREATE"])
    hook(kopf.on.validate, APPROVALS, "approval-check", approval_check, ["CREATE", "UPDATE"])
    hook(kopf.on.mutate, MODELS, "deployment-stamp", deployment_stamp, ["CREATE", "UPDATE"])
    hook(kopf.on.validate, MODELS, webhook.GATE_HOOK, deployment_gate, ["CREATE", "UPDATE"],
         audited=True, side_effects=True)
    kopf.on.event(GROUP, VERSION, POLICIES, id="admission-indexes-ready", registry=reg)(indexes_ready)
    for plural in (MODELS, APPROVALS, POLICIES):
        hook(kopf.on.validate, plural, f"status-guard-{plural}", status_guard, ["UPDATE"], "status")


if settings.CONFIG.webhook_port:
    register()
