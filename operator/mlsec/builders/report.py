"""Compliance reports in the OpenReports format: one ``Report`` (openreports.io/v1alpha1) per namespace.

Pure: from the namespace's MLSecurityPolicy (spec and status) and its ModelDeployments (spec and
status), :func:`build_report` computes the whole Report object, ready for server-side apply. It
reflects the current state only (history goes to the audit log) and is bounded in size.

Schema (the CRD of github.com/openreports/reports-api v0.2.1, ``config/crd/openreports.io_reports.yaml``):
top-level ``source``, ``summary {pass, fail, warn, error, skip}``, ``configuration.limits.maxResults``
(and ``statusFilter`` when pass/skip results had to be left out) and ``results[]`` with ``policy``
(required), ``rule``, ``category``, ``result`` (pass | fail | warn | error | skip), ``severity``
(critical | high | medium | low | info), ``message``, ``properties`` (string map), ``resources``
(the JSON name of the Go field ``Subjects``: ObjectReferences) and ``timestamp {seconds, nanos}``.

Results, one per ModelDeployment and rule (``policy`` is the MLSecurityPolicy's name, ``rule`` the
policy field it checks):

- ``images.allowedRegistries``, ``images.requireDigest``: from the spec, exactly as the reconcile
  decides (:mod:`mlsec.builders.compliance`); skip when the policy does not ask for it.
- ``workload.podSecurity``, ``network.mtls``, ``network.rateLimit``: from what the last reconcile
  says in status (``Ready`` and ``status.children``); the operator applies hardened children only
  and repairs any drift on the children's events. Skip while the model is not rolled out.
- ``vault.access`` (models with secrets or tls only): allowed paths, ``VaultReady``, ``status.vault``.
- ``promotion.production`` (production models only): ``PromotionApproved``.

and policy-wide ones, whose subject is the policy: ``ldap.sync`` (``LDAPSynced`` and the age of
the last successful sync: ``ObjectFacts.ldap_synced_at``, else ``status.ldap.lastChange``) and
``vault.requireAuditDevice`` (when the ``VaultAuditEnabled`` condition exists). An invalid policy
yields one ``policy.valid`` failure instead.

Writes only on change: each result's ``timestamp`` is carried over from the previous Report while
its outcome (result, severity, message, properties) stays the same, so recomputing an unchanged
namespace yields an identical object (:func:`differs` is False) and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from mlsec import API_VERSION
from mlsec.api import MLSecurityPolicy, ModelDeployment, parse_duration, validation_messages
from mlsec.builders.compliance import (
    RULE_ALLOWED_REGISTRIES,
    RULE_REQUIRE_DIGEST,
    image_violations,
    vault_violations,
)
from mlsec.builders.naming import LABEL_MANAGED_BY, MANAGED_BY
from mlsec.builders.vault import needs_vault

Obj = dict[str, Any]

REPORT_API_VERSION: Final = "openreports.io/v1alpha1"
REPORT_KIND: Final = "Report"
REPORT_NAME: Final = "mlsec"
SOURCE: Final = "mlsec"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
REPORT_LABELS: Final = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: "mlsec-operator"}
SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
# Set when results had to be left out (count of those left out), so nobody mistakes a cut report
# for a complete one.
TRUNCATED_ANNOTATION: Final = "mlsec.io/results-omitted"

RESULTS: Final = ("pass", "fail", "warn", "error", "skip")
SEVERITIES: Final = ("critical", "high", "medium", "low", "info")

# Bounds. A result is ~300 bytes of JSON, so 200 models x 5-7 rules stay far below the budget;
# beyond it, pass and skip results go first (configuration.limits.statusFilter says so), then the
# least severe of the rest. etcd refuses values over 1.5 MiB; the budget keeps us under 1 MiB.
MAX_RESULTS: Final = 2000
MAX_MESSAGE: Final = 400
MAX_PROPERTY: Final = 253
MAX_REPORT_BYTES: Final = 900 * 1024

# Rules: policy field path → (category, severity when not met).
RULE_POD_SECURITY: Final = "workload.podSecurity"
RULE_MTLS: Final = "network.mtls"
RULE_RATE_LIMIT: Final = "network.rateLimit"
RULE_VAULT_ACCESS: Final = "vault.access"
RULE_PROMOTION: Final = "promotion.production"
RULE_LDAP_SYNC: Final = "ldap.sync"
RULE_AUDIT_DEVICE: Final = "vault.requireAuditDevice"
RULE_POLICY_VALID: Final = "policy.valid"
RULE_MODEL_SPEC: Final = "modelDeployment.spec"

RULES: Final[dict[str, tuple[str, str]]] = {
    RULE_ALLOWED_REGISTRIES: ("Supply chain", "high"),
    RULE_REQUIRE_DIGEST: ("Supply chain", "high"),
    RULE_POD_SECURITY: ("Workload", "high"),
    RULE_MTLS: ("Network", "high"),
    RULE_RATE_LIMIT: ("Network", "medium"),
    RULE_VAULT_ACCESS: ("Secrets", "high"),
    RULE_PROMOTION: ("Promotion", "critical"),
    RULE_LDAP_SYNC: ("Access control", "medium"),
    RULE_AUDIT_DEVICE: ("Audit", "high"),
    RULE_POLICY_VALID: ("Policy", "critical"),
    RULE_MODEL_SPEC: ("Policy", "high"),
}
RULE_ORDER: Final = {rule: i for i, rule in enumerate(RULES)}

# LDAP: a successful sync older than this many intervals (plus slack) is stale.
LDAP_STALE_INTERVALS: Final = 2
LDAP_STALE_SLACK: Final = timedelta(seconds=60)
# VaultReady reasons that mean "could not check" (error) rather than "not in place" (fail).
VAULT_ERROR_REASONS: Final = frozenset({"VaultUnavailable", "VaultAuthFailed"})
# The LDAP sync's message ends with its backoff, which changes on every retry: not a new finding.
_RETRY_SUFFIX = re.compile(r";\s*retrying in \d+(\.\d+)?s\s*$")

HARDENING = "non-root, read-only root FS, no privilege escalation, no capabilities, seccomp RuntimeDefault"


# --- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectFacts:
    """What the report reads of one object: identity, spec and status (plain dicts, as served)."""

    name: str
    uid: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    ldap_synced_at: datetime | None = None
    """The policy's last successful LDAP sync as the operator knows it (status records only the
    last change: an unchanged directory is not written)."""


@dataclass(frozen=True)
class Check:
    """One result before it becomes a dict: about ``subject`` (a ModelDeployment or the policy)."""

    rule: str
    result: str
    message: str
    subject_kind: str
    subject: str
    subject_uid: str = ""
    severity: str = ""  # default: the rule's
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.subject_kind, self.subject, self.rule)


# --- helpers -----------------------------------------------------------------------------------------


def _cond(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None


def _truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration_text(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


# --- per-model rules ---------------------------------------------------------------------------------


def _model_check(md: ObjectFacts, rule: str, result: str, message: str, **props: str) -> Check:
    return Check(rule, result, message, "ModelDeployment", md.name, md.uid,
                 properties=tuple(sorted((k, v) for k, v in props.items() if v)))


def _rolled_out(md: ObjectFacts) -> tuple[bool, str]:
    """(True, "") when the last reconcile applied the children; else (False, why not)."""
    ready = _cond(md.status, "Ready")
    if ready is None:
        return False, "not reconciled yet"
    if ready.get("status") == "True" and md.status.get("children"):
        return True, ""
    reason = str(ready.get("reason") or "")
    return False, _truncate(f"not rolled out ({reason}): {ready.get('message') or ''}", 300)


def image_checks(md: ObjectFacts, model: ModelDeployment, pol: MLSecurityPolicy) -> list[Check]:
    rules = pol.spec.images
    found = {v.rule: v.message for v in image_violations(model, pol)}
    image = model.spec.image
    out: list[Check] = []
    if not rules.allowed_registries:
        out.append(_model_check(md, RULE_ALLOWED_REGISTRIES, "skip",
                                "the policy sets no images.allowedRegistries"))
    elif RULE_ALLOWED_REGISTRIES in found:
        out.append(_model_check(md, RULE_ALLOWED_REGISTRIES, "fail",
                                f"{found[RULE_ALLOWED_REGISTRIES]}: set spec.image to an image from an "
                                "allowed registry", image=image))
    else:
        out.append(_model_check(md, RULE_ALLOWED_REGISTRIES, "pass", "image is from an allowed registry"))
    if not rules.require_digest:
        out.append(_model_check(md, RULE_REQUIRE_DIGEST, "skip", "the policy does not require digests"))
    elif RULE_REQUIRE_DIGEST in found:
        repo = image.split("@", 1)[0]
        tail = repo.rsplit("/", 1)[-1]
        if ":" in tail:
            repo = repo[: len(repo) - len(tail)] + tail.split(":", 1)[0]
        out.append(_model_check(md, RULE_REQUIRE_DIGEST, "fail",
                                f"image {image} is not pinned by digest: set spec.image to "
                                f"{repo}@sha256:<digest> (images.requireDigest)", image=image))
    else:
        out.append(_model_check(md, RULE_REQUIRE_DIGEST, "pass", "image is pinned by sha256 digest"))
    return out


def workload_checks(md: ObjectFacts, pol: MLSecurityPolicy) -> list[Check]:
    rolled_out, why = _rolled_out(md)
    children: Mapping[str, Any] = md.status.get("children") or {}
    limit = pol.spec.network.rate_limit
    if not rolled_out:
        out = [_model_check(md, RULE_POD_SECURITY, "skip", why),
               _model_check(md, RULE_MTLS, "skip", why)]
        out.append(_model_check(md, RULE_RATE_LIMIT, "skip",
                                why if limit else "the policy sets no network.rateLimit"))
        return out

    out = []
    deployment = children.get("Deployment")
    if deployment:
        out.append(_model_check(md, RULE_POD_SECURITY, "pass", f"Deployment {deployment}: {HARDENING}"))
    else:
        out.append(_model_check(md, RULE_POD_SECURITY, "fail",
                                "no Deployment applied by the operator: the pods' hardening is unknown; "
                                "check the model's Ready condition and the operator's log"))

    missing = [k for k in ("PeerAuthentication", "AuthorizationPolicy") if not children.get(k)]
    mode = str(pol.spec.network.mtls)
    if missing:
        out.append(_model_check(md, RULE_MTLS, "fail",
                                f"no {' and no '.join(missing)} applied: the model's traffic is not "
                                "restricted; check the model's Ready condition and the operator's log"))
    elif mode != "STRICT":
        out.append(_model_check(md, RULE_MTLS, "warn",
                                f"network.mtls is {mode}: the sidecar also accepts plaintext (the "
                                "AuthorizationPolicy still denies callers without an allowed principal); "
                                "set network.mtls: STRICT", mode=mode))
    else:
        principals = len(pol.spec.network.allowed_principals)
        callers = f"{principals} allowed principal{'s' if principals != 1 else ''}" if principals \
            else "no caller allowed"
        out.append(_model_check(md, RULE_MTLS, "pass", f"mTLS STRICT, {callers}"))

    if limit is None:
        out.append(_model_check(md, RULE_RATE_LIMIT, "skip", "the policy sets no network.rateLimit"))
    elif children.get("EnvoyFilter"):
        out.append(_model_check(md, RULE_RATE_LIMIT, "pass",
                                f"{limit.requests_per_second} requests/s, burst {limit.burst}"))
    else:
        out.append(_model_check(md, RULE_RATE_LIMIT, "fail",
                                "network.rateLimit is set but no rate-limit EnvoyFilter was applied; "
                                "check the model's Ready condition and the operator's log"))
    return out


def vault_checks(md: ObjectFacts, model: ModelDeployment, pol: MLSecurityPolicy) -> list[Check]:
    if not needs_vault(model):
        return []
    problems = vault_violations(model, pol)
    if problems:
        text = "; ".join(str(p) for p in problems)
        return [_model_check(md, RULE_VAULT_ACCESS, "fail",
                             f"{text}: remove the path from spec.secrets/spec.tls or allow it in the policy")]
    ready = _cond(md.status, "VaultReady")
    if ready is None:
        _, why = _rolled_out(md)
        return [_model_check(md, RULE_VAULT_ACCESS, "skip", f"Vault role and policy not evaluated yet ({why})"
                             if why else "Vault role and policy not evaluated yet")]
    if ready.get("status") != "True":
        reason = str(ready.get("reason") or "VaultNotReady")
        result = "error" if reason in VAULT_ERROR_REASONS else "fail"
        return [_model_check(md, RULE_VAULT_ACCESS, result, f"{reason}: {ready.get('message') or ''}",
                             reason=reason)]
    vault: Mapping[str, Any] = md.status.get("vault") or {}
    role, policy_name = vault.get("role"), vault.get("policy")
    if not role or not policy_name:
        return [_model_check(md, RULE_VAULT_ACCESS, "fail",
                             "VaultReady but status.vault names no role or no policy; the operator "
                             "re-checks Vault on its next resync")]
    return [_model_check(md, RULE_VAULT_ACCESS, "pass",
                         f"Vault role {role} and policy {policy_name} in place")]


def promotion_checks(md: ObjectFacts, model: ModelDeployment) -> list[Check]:
    if model.spec.stage.value != "production":
        return []
    cond = _cond(md.status, "PromotionApproved")
    if cond is None:
        return [_model_check(md, RULE_PROMOTION, "skip", "promotion not evaluated yet")]
    if cond.get("status") == "True":
        return [_model_check(md, RULE_PROMOTION, "pass", "production release approved")]
    if cond.get("status") == "Unknown":
        return [_model_check(md, RULE_PROMOTION, "error", str(cond.get("message") or "not evaluated"))]
    return [_model_check(md, RULE_PROMOTION, "fail",
                         f"{cond.get('message') or 'not approved'}: create the missing ModelApprovals "
                         "(kubectl mlsec approve) or move the model out of production",
                         reason=str(cond.get("reason") or ""))]


def model_checks(namespace: str, md: ObjectFacts, pol: MLSecurityPolicy) -> list[Check]:
    """Every result of one ModelDeployment under ``pol``."""
    try:
        model = ModelDeployment.model_validate({
            "metadata": {"name": md.name, "namespace": namespace, "uid": md.uid or None},
            "spec": dict(md.spec)})
    except ValidationError as exc:
        return [_model_check(md, RULE_MODEL_SPEC, "error",
                             "spec is invalid, no rule can be evaluated: "
                             + "; ".join(validation_messages(exc)))]
    return [*image_checks(md, model, pol), *workload_checks(md, pol), *vault_checks(md, model, pol),
            *promotion_checks(md, model)]


# --- policy-wide rules -------------------------------------------------------------------------------


def _policy_check(pol: ObjectFacts, rule: str, result: str, message: str, **props: str) -> Check:
    return Check(rule, result, message, "MLSecurityPolicy", pol.name, pol.uid,
                 properties=tuple(sorted((k, v) for k, v in props.items() if v)))


def ldap_check(pol: ObjectFacts, parsed: MLSecurityPolicy, now: datetime) -> Check:
    cond = _cond(pol.status, "LDAPSynced")
    if cond is None:
        return _policy_check(pol, RULE_LDAP_SYNC, "skip", "LDAP not synced yet")
    if cond.get("status") != "True":
        reason = str(cond.get("reason") or "SyncFailed")
        message = _RETRY_SUFFIX.sub("", str(cond.get("message") or ""))
        return _policy_check(pol, RULE_LDAP_SYNC, "error",
                             f"LDAP sync failing ({reason}): {message}; fix spec.ldap (URL, bind Secret, "
                             "CA) or the directory", reason=reason)
    interval = parse_duration(parsed.spec.ldap.sync_interval)
    last = pol.ldap_synced_at or _parse_time((pol.status.get("ldap") or {}).get("lastChange"))
    limit = interval * LDAP_STALE_INTERVALS + LDAP_STALE_SLACK
    if last is not None and now - last > limit:
        return _policy_check(pol, RULE_LDAP_SYNC, "warn",
                             f"last successful LDAP sync at {last.strftime('%Y-%m-%dT%H:%M:%SZ')}, more "
                             f"than {LDAP_STALE_INTERVALS} sync intervals ({_duration_text(interval)}) ago: "
                             "platform roles may be stale; check the operator's log", reason="Stale")
    return _policy_check(pol, RULE_LDAP_SYNC, "pass", str(cond.get("message") or "LDAP synced"))


def audit_device_check(pol: ObjectFacts, parsed: MLSecurityPolicy) -> Check | None:
    cond = _cond(pol.status, "VaultAuditEnabled")
    if cond is None:
        return None
    message = str(cond.get("message") or "")
    if cond.get("status") == "True":
        return _policy_check(pol, RULE_AUDIT_DEVICE, "pass", message or "Vault has an audit device")
    required = parsed.spec.vault is not None and parsed.spec.vault.require_audit_device
    if cond.get("status") == "Unknown":
        return _policy_check(pol, RULE_AUDIT_DEVICE, "error", message or "Vault's audit devices unknown")
    return _policy_check(pol, RULE_AUDIT_DEVICE, "fail" if required else "warn",
                         f"{message or 'Vault has no audit device'}: enable an audit device in Vault"
                         + (" (no promotion to production until then)" if required else ""),
                         reason=str(cond.get("reason") or ""))


# --- the report ----------------------------------------------------------------------------------------


def parse_policy(namespace: str, pol: ObjectFacts) -> MLSecurityPolicy | str:
    try:
        return MLSecurityPolicy.model_validate(
            {"metadata": {"name": pol.name, "namespace": namespace}, "spec": dict(pol.spec)})
    except ValidationError as exc:
        return "; ".join(validation_messages(exc))


def checks(namespace: str, pol: ObjectFacts, models: Iterable[ObjectFacts], now: datetime) -> list[Check]:
    """Every result of the namespace, policy-wide ones first, then by model name and rule."""
    parsed = parse_policy(namespace, pol)
    if isinstance(parsed, str):
        return [_policy_check(pol, RULE_POLICY_VALID, "fail",
                              f"MLSecurityPolicy {pol.name} is invalid, no rule is evaluated and no model "
                              f"is rolled out: {parsed}")]
    out = [ldap_check(pol, parsed, now)]
    audit = audit_device_check(pol, parsed)
    if audit is not None:
        out.append(audit)
    for md in sorted(models, key=lambda m: m.name):
        out += model_checks(namespace, md, parsed)
    return out


def _subject(namespace: str, check: Check) -> Obj:
    ref: Obj = {"apiVersion": API_VERSION, "kind": check.subject_kind, "name": check.subject,
                "namespace": namespace}
    if check.subject_uid:
        ref["uid"] = check.subject_uid
    return ref


def _outcome(result: Mapping[str, Any]) -> tuple[Any, ...]:
    return (result.get("result"), result.get("severity"), result.get("message"),
            json.dumps(result.get("properties") or {}, sort_keys=True))


def _result_key(result: Mapping[str, Any]) -> tuple[str, str, str]:
    resources = result.get("resources") or [{}]
    ref = resources[0] if isinstance(resources[0], Mapping) else {}
    return (str(ref.get("kind", "")), str(ref.get("name", "")), str(result.get("rule", "")))


def to_result(namespace: str, policy_name: str, check: Check, stamp: Obj) -> Obj:
    # The severity is the rule's (how much it matters when not met), whatever this result is.
    category, rule_severity = RULES.get(check.rule, ("Policy", "medium"))
    severity = check.severity or rule_severity
    out: Obj = {
        "policy": policy_name,
        "rule": check.rule,
        "category": category,
        "result": check.result,
        "severity": severity,
        "message": _truncate(check.message),
        "resources": [_subject(namespace, check)],
        "timestamp": dict(stamp),
    }
    if check.properties:
        out["properties"] = {k: _truncate(v, MAX_PROPERTY) for k, v in check.properties}
    return out


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(str(r.get("result")) for r in results)
    return {k: counts.get(k, 0) for k in RESULTS}


def counts_by_rule(results: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """(rule, result) → number of results (for the metrics)."""
    return dict(Counter((str(r.get("rule")), str(r.get("result"))) for r in results))


def _size(obj: Obj) -> int:
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


_KEEP_ORDER = {"fail": 0, "error": 1, "warn": 2, "pass": 3, "skip": 4}
_SEVERITY_ORDER = {s: i for i, s in enumerate(SEVERITIES)}


def _bound(results: list[Obj], report: Obj) -> tuple[list[Obj], int, bool]:
    """Results that fit MAX_RESULTS and MAX_REPORT_BYTES; (kept, omitted count, pass/skip dropped)."""
    if len(results) <= MAX_RESULTS and _size({**report, "results": results}) <= MAX_REPORT_BYTES:
        return results, 0, False
    important = [r for r in results if r["result"] in ("fail", "error", "warn")]
    important.sort(key=lambda r: (_KEEP_ORDER[r["result"]], _SEVERITY_ORDER.get(r["severity"], 9)))
    kept = important[:MAX_RESULTS]
    base = _size({**report, "results": []})
    total = base
    for i, r in enumerate(kept):
        total += _size(r) + 1
        if total > MAX_REPORT_BYTES:
            kept = kept[:i]
            break
    order = {id(r): i for i, r in enumerate(results)}
    kept.sort(key=lambda r: order[id(r)])
    return kept, len(results) - len(kept), True


@dataclass(frozen=True, slots=True)
class Seen:
    """What the operator keeps of a Report it wrote or read, instead of the object (~2 KB of JSON
    per model, more with managedFields, for every namespace): a fingerprint of the fields the
    builder sets (:func:`differs`), and per result a hash of its key → (hash of its outcome,
    timestamp), so that results whose outcome did not change keep their timestamp. The hashes
    are Python's, compared only within the process that made them."""

    fingerprint: str
    # Per result: (key hash, outcome hash, seconds, nanos) packed as _STAMP, one bytes object
    # for the whole Report. As a dict of tuples it was ~15 long-lived small objects per model
    # (0.8 MiB per 1,000 models, pinning pymalloc's pools: bench/README.md, eighth run).
    packed_stamps: bytes

    @property
    def stamps(self) -> dict[int, tuple[int, int, int]]:
        """Result key hash → (outcome hash, seconds, nanos)."""
        return {key: (outcome, sec, ns) for key, outcome, sec, ns in _STAMP.iter_unpack(self.packed_stamps)}


_STAMP = struct.Struct("<qqqq")
_INT64 = range(-(1 << 63), 1 << 63)


def seen(report: Mapping[str, Any] | None) -> Seen | None:
    if report is None:
        return None
    stamps: dict[int, tuple[int, int, int]] = {}
    for r in report.get("results") or []:
        if isinstance(r, Mapping) and isinstance(r.get("timestamp"), Mapping):
            ts = r["timestamp"]
            sec, ns = int(ts.get("seconds") or 0), int(ts.get("nanos") or 0)
            if sec in _INT64 and ns in _INT64:  # a wild value: the result is stamped anew
                stamps[hash(_result_key(r))] = (hash(_outcome(r)), sec, ns)
    packed = b"".join(_STAMP.pack(key, *value) for key, value in stamps.items())
    return Seen(fingerprint(report), packed)


def fingerprint(report: Mapping[str, Any]) -> str:
    """SHA-256 of what :func:`differs` compares: the builder's fields, its labels, the
    truncation annotation and the owners (not what the API server adds)."""
    meta: Mapping[str, Any] = report.get("metadata") or {}
    labels = meta.get("labels") or {}
    part = {
        **{key: report.get(key) for key in ("source", "summary", "configuration", "results")},
        "labels": {k: labels.get(k) for k in REPORT_LABELS},
        "truncated": (meta.get("annotations") or {}).get(TRUNCATED_ANNOTATION),
        "owners": [(o.get("kind"), o.get("name"), o.get("uid")) for o in meta.get("ownerReferences") or []],
    }
    return hashlib.sha256(json.dumps(part, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_report(namespace: str, policy: ObjectFacts, models: Sequence[ObjectFacts],
                 previous: Mapping[str, Any] | Seen | None, now: datetime) -> Obj:
    """The namespace's Report (a complete desired object for server-side apply).

    ``previous`` is the live Report (or the last one written), or what was kept of it
    (:class:`Seen`): results whose outcome did not change keep its timestamp. ``now`` stamps new
    or changed results and judges LDAP freshness.
    """
    found = checks(namespace, policy, models, now)
    memory = previous if isinstance(previous, Seen) else seen(previous)
    old = memory.stamps if memory is not None else {}
    stamp_now = {"seconds": int(now.timestamp()), "nanos": 0}
    results: list[Obj] = []
    for check in found:
        result = to_result(namespace, policy.name, check, stamp_now)
        before = old.get(hash(_result_key(result)))
        if before is not None and before[0] == hash(_outcome(result)):
            result["timestamp"] = {"seconds": before[1], "nanos": before[2]}
        results.append(result)

    report: Obj = {
        "apiVersion": REPORT_API_VERSION,
        "kind": REPORT_KIND,
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": dict(REPORT_LABELS),
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "MLSecurityPolicy",
                                 "name": policy.name, "uid": policy.uid, "controller": True}],
        },
        "source": SOURCE,
        "summary": summarize(results),
        "configuration": {"limits": {"maxResults": MAX_RESULTS}},
    }
    kept, omitted, filtered = _bound(results, report)
    if filtered:
        report["configuration"]["limits"]["statusFilter"] = ["fail", "error", "warn"]
    if omitted:
        report["metadata"]["annotations"] = {TRUNCATED_ANNOTATION: str(omitted)}
    report["results"] = kept
    return report


def differs(live: Mapping[str, Any] | Seen | None, desired: Mapping[str, Any]) -> bool:
    """Whether applying ``desired`` would change ``live`` (only the fields the builder sets)."""
    if live is None:
        return True
    if isinstance(live, Seen):
        return live.fingerprint != fingerprint(desired)
    for key in ("source", "summary", "configuration", "results"):
        if live.get(key) != desired.get(key):
            return True
    lmeta: Mapping[str, Any] = live.get("metadata") or {}
    dmeta: Mapping[str, Any] = desired.get("metadata") or {}
    labels = lmeta.get("labels") or {}
    if any(labels.get(k) != v for k, v in (dmeta.get("labels") or {}).items()):
        return True
    annotations = lmeta.get("annotations") or {}
    if annotations.get(TRUNCATED_ANNOTATION) != (dmeta.get("annotations") or {}).get(TRUNCATED_ANNOTATION):
        return True
    live_owners = [(o.get("kind"), o.get("name"), o.get("uid")) for o in lmeta.get("ownerReferences") or []]
    return live_owners != [(o["kind"], o["name"], o["uid"]) for o in dmeta.get("ownerReferences") or []]


def size_bytes(report: Mapping[str, Any]) -> int:
    """Size of the report's JSON (what the API server stores, give or take its own metadata)."""
    return _size(dict(report))
