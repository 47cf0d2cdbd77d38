"""MLSecurityPolicy: validate, report Valid/Active in status, and re-reconcile what it governs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf
from pydantic import ValidationError

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicySpec, validation_messages
from mlsec.audit.events import Action, Context, EventType, Resource, Result
from mlsec.builders.conditions import Cond
from mlsec.handlers import context, leader
from mlsec.handlers.metrics import POLICIES_VALID, observe
from mlsec.handlers.status import write_status

KIND = "MLSecurityPolicy"
PLURAL = "mlsecuritypolicies"
API = f"{GROUP}/{VERSION}"
log = logging.getLogger(__name__)

# Other modules (e.g. the ModelDeployment reconciler) register here to be re-run when a namespace's
# policy changes; a list of callbacks keeps this module free of imports of theirs.
# Callbacks receive the namespace and the handler kwargs (which carry kopf's indexes).
ON_POLICY_CHANGE: list[Callable[[str, dict[str, Any]], None]] = []

# (creationTimestamp, name, generation, spec, uid)
PolicyEntry = tuple[str, str, int, dict[str, Any], str]


@kopf.index(GROUP, VERSION, PLURAL)
def policies_by_namespace(namespace: str, name: str, meta: kopf.Meta, spec: kopf.Spec,
                          **_: Any) -> dict[str, PolicyEntry]:
    """namespace → every policy there, so a reconcile finds the one in force without API calls."""
    entry = (str(meta.get("creationTimestamp", "")), name, int(meta.get("generation") or 0), dict(spec),
             str(meta.get("uid", "")))
    return {namespace: entry}


def active_policy(index: kopf.Index[str, PolicyEntry], namespace: str) -> PolicyEntry | None:
    """The policy in force in a namespace: the oldest (by creation time, then name)."""
    entries = sorted(context.snapshot(index, namespace), key=lambda e: (e[0], e[1]))
    return entries[0] if entries else None


def active_policy_name(index: kopf.Index[str, PolicyEntry], namespace: str) -> str | None:
    entry = active_policy(index, namespace)
    return entry[1] if entry else None


def validate_spec(spec: dict[str, Any]) -> tuple[MLSecurityPolicySpec | None, list[str]]:
    try:
        return MLSecurityPolicySpec.model_validate(spec), []
    except ValidationError as exc:
        return None, validation_messages(exc)


def _write_policy_status(namespace: str, name: str, body: dict[str, Any],
                         siblings: list[str], active: str | None) -> bool:
    """Compute and write (only if changed) one policy's conditions; return validity."""
    spec, errors = validate_spec(dict(body.get("spec") or {}))
    conds = [
        Cond("Valid", True, "Validated", "spec is valid") if spec
        else Cond("Valid", False, "InvalidSpec", "; ".join(errors)),
    ]
    if len(siblings) > 1:
        others = ", ".join(s for s in siblings if s != name)
        if name == active:
            conds.append(Cond("Active", True, "OldestInNamespace",
                              f"{len(siblings)} MLSecurityPolicies in this namespace ({others} ignored); "
                              "this one, the oldest, is in force"))
        else:
            conds.append(Cond("Active", False, "Superseded",
                              f"{len(siblings)} MLSecurityPolicies in this namespace; the oldest, "
                              f"{active}, is in force and this one is ignored"))
    else:
        conds.append(Cond("Active", True, "OnlyPolicy", "the only MLSecurityPolicy in this namespace"))
    write_status(KIND, body, conds)
    POLICIES_VALID.labels(namespace, name).set(1 if spec else 0)
    return spec is not None


@kopf.on.resume(GROUP, VERSION, PLURAL, when=leader.leading)
@kopf.on.create(GROUP, VERSION, PLURAL, when=leader.leading)
@kopf.on.update(GROUP, VERSION, PLURAL, when=leader.leading)
def policy_changed(body: kopf.Body, namespace: str, name: str,
                   policies_by_namespace: kopf.Index[str, PolicyEntry], **kwargs: Any) -> None:
    with observe(KIND):
        siblings = sorted(e[1] for e in context.snapshot(policies_by_namespace, namespace))
        if name not in siblings:
            siblings = sorted([*siblings, name])
        active = active_policy_name(policies_by_namespace, namespace) or name
        valid = _write_policy_status(namespace, name, dict(body), siblings, active)
        _record(namespace, name, valid, dict(body))
        if not valid:
            kopf.warn(dict(body), reason="InvalidPolicy",
                      message="spec is invalid; ModelDeployments in this namespace are not rolled out")
        # A new policy changes whether its siblings are in force: refresh their status too.
        for other in siblings:
            if other != name:
                sibling = context.kube().get(API, KIND, namespace, other)
                if sibling:
                    _write_policy_status(namespace, other, sibling, siblings, active)
        kwargs["policies_by_namespace"] = policies_by_namespace
        for callback in ON_POLICY_CHANGE:
            callback(namespace, kwargs)


@kopf.on.event(GROUP, VERSION, PLURAL)
def policy_deleted(type: str, namespace: str, **kwargs: Any) -> None:
    """Without a finalizer a deletion is seen only as a DELETED watch event.

    Runs on every replica (no leader filter) so that each keeps a handle on kopf's indexes for
    the re-reconcile it owes when elected.
    """
    leader.remember_indexes(kwargs)
    if type != "DELETED" or not leader.leading():
        return
    for callback in ON_POLICY_CHANGE:
        callback(namespace, kwargs)


def _record(namespace: str, name: str, valid: bool, body: dict[str, Any]) -> None:
    _, errors = validate_spec(dict(body.get("spec") or {}))
    context.audit().record(
        EventType.POLICY_VALID if valid else EventType.POLICY_INVALID,
        resource=Resource(type=KIND, name=name, namespace=namespace,
                          version=str(body.get("metadata", {}).get("generation"))),
        action=Action(type="VALIDATE"),
        result=Result(status="SUCCESS" if valid else "FAILURE", reason="; ".join(errors) or None),
        context=Context(policy=f"{namespace}/{name}"),
    )


def _revalidate_all(indexes: dict[str, Any]) -> None:
    """On election: policy statuses may be stale if the previous leader died mid-way."""
    for body in context.kube().list(API, KIND):
        meta = body["metadata"]
        policy_changed(body=body, namespace=meta["namespace"], name=meta["name"], **indexes)


leader.ON_ELECTED.append(_revalidate_all)
