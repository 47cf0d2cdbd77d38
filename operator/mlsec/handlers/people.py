"""People's Vault access and the Vault audit-device check (issue 12).

People: one ``roleMappings`` entry decides what an LDAP group may do in Kubernetes and in Vault.
For every namespace whose policy sets ``spec.vault.ldapAuthMount``, the people policies
``mlsec-<namespace>-<role>`` (mlsec.builders.people) are written, and each mapped group's entry
``auth/<mount>/groups/<cn>`` carries the union of what it earns across namespaces. Level-based and
global: one sync reads what Vault holds, writes only differences, removes people policies no
policy earns any more, and strips only mlsec's own names from group entries (hand-added policies
stay). Syncs run on a background thread, woken (debounced) by relevant changes of policies and
models and every :data:`RESYNC_SECONDS`; only the leader writes.

Audit device: each policy with a vault section is checked when it changes and every
:data:`AUDIT_INTERVAL` seconds (one loop for all):
condition ``VaultAuditEnabled`` (own field manager), ``status.vault.auditDevice``, an event on
change and the gauge ``mlsec_vault_audit_enabled``. With ``requireAuditDevice`` a promotion blocker
(mlsec.handlers.promotion.BLOCKERS) refuses promotions while no device is enabled, or while the
operator cannot tell (fail closed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import Gauge, Histogram
from pydantic import ValidationError

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.audit.events import Action, Context, EventType, Resource, Result
from mlsec.builders import people as build
from mlsec.builders.conditions import Cond
from mlsec.clients.vault import Vault, VaultError
from mlsec.handlers import context, leader, loops, promotion
from mlsec.handlers.settings import CONFIG
from mlsec.handlers.status import status_differs, write_status
from mlsec.handlers.vault import vault_client

API = f"{GROUP}/{VERSION}"
POLICY_KIND = "MLSecurityPolicy"
STATUS_OWNER = "mlsec-operator-people"
CONDITION = "VaultAuditEnabled"
MODEL_PAGE = 100
"""Models per page when the sync reads them: a page of 500 was ~7 MB of parsed objects (88,000,
most of them 64-byte dicts and strings) in flight after every change of a burst, the peak that
left pymalloc's pools pinned (bench/README.md, twelfth run)."""
# How often each policy's audit-device check runs (tests shorten it).
AUDIT_INTERVAL = float(os.environ.get("MLSEC_VAULT_AUDIT_SECONDS", "30"))
AUDIT_CACHE_SECONDS = 5.0
RESYNC_SECONDS = 300.0
DEBOUNCE_SECONDS = 0.5
SYNC_CONCURRENCY = 8
log = logging.getLogger(__name__)

AUDIT_ENABLED = Gauge("mlsec_vault_audit_enabled",
                      "1 when Vault had an enabled audit device at the last check, 0 when not or unknown.")
PEOPLE_SYNC_SECONDS = Histogram("mlsec_vault_people_sync_seconds",
                                "Duration of a full people-policy sync (policies and LDAP group entries).")


# --- the sync (explicit inputs: tests and the bench call it directly) ------------------------------


@dataclass
class SyncReport:
    policies_written: list[str] = field(default_factory=list)
    policies_removed: list[str] = field(default_factory=list)
    groups_written: list[str] = field(default_factory=list)  # "<mount>/<group>"
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.policies_written or self.policies_removed or self.groups_written)


def _in_scope(scope: Iterable[str]) -> Callable[[str], bool]:
    """Which people policy names this operator owns: all, or its watched namespaces' only."""
    namespaces = frozenset(scope)

    def owned(name: str) -> bool:
        ns = build.namespace_of_people_policy(name)
        return ns is not None and (not namespaces or ns in namespaces)

    return owned


def sync(client: Vault, policies: Iterable[MLSecurityPolicy],
         models_by_namespace: Mapping[str, Sequence[build.Model]], *,
         mounts: Iterable[str] = (), scope: Iterable[str] = ()) -> SyncReport:
    """Make Vault's people policies and LDAP group entries what ``policies`` and the models say.

    ``policies``: the policy in force of each namespace. ``mounts``: LDAP auth mounts to clean
    besides those the policies name (one no policy names any more). Raises VaultError.
    """
    started = time.monotonic()
    state = build.desired(policies, models_by_namespace)
    owned = _in_scope(scope)
    report = SyncReport()
    # Independent requests: a few at a time (one HTTP round trip each dominates a sync).
    with ThreadPoolExecutor(SYNC_CONCURRENCY) as pool:

        def put_policy(name: str, text: str) -> str | None:
            if client.read_policy(name) != text:
                client.write_policy(name, text)
                return name
            return None

        written = pool.map(lambda kv: put_policy(*kv), state.policies.items())
        report.policies_written = [n for n in written if n]
        for mount in sorted(set(state.groups) | set(mounts)):
            wanted = state.groups.get(mount, {})
            try:
                existing = {g.lower() for g in client.list_ldap_groups(mount)}
            except VaultError as exc:
                if exc.status in (400, 404) and mount not in state.groups:
                    continue  # a mount that is gone holds nothing of ours
                raise

            def put_group(group: str, mount: str = mount,
                          wanted: Mapping[str, frozenset[str]] = wanted) -> str | None:
                live = client.read_ldap_group(mount, group)
                ours = wanted.get(group, frozenset())
                if live is None and not ours:
                    return None
                kept = [p for p in (live or []) if not owned(p)]
                new = sorted(set(kept) | set(ours))
                if live is None or sorted(set(live)) != new:
                    client.write_ldap_group(mount, group, new)
                    return f"{mount}/{group}"
                return None

            report.groups_written += [g for g in pool.map(put_group, sorted(existing | set(wanted))) if g]
        stale = [n for n in client.list_policies() if owned(n) and n not in state.policies]
        list(pool.map(client.delete_policy, stale))
        report.policies_removed = stale
    report.seconds = time.monotonic() - started
    PEOPLE_SYNC_SECONDS.observe(report.seconds)
    return report


# --- what the sync reads: the API server ----------------------------------------------------------


def _policies_in_force(items: list[dict[str, Any]]) -> list[MLSecurityPolicy]:
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if item.get("metadata", {}).get("deletionTimestamp"):
            continue
        by_ns.setdefault(str(item["metadata"]["namespace"]), []).append(item)
    out = []
    for entries in by_ns.values():
        entries.sort(key=lambda p: (str(p["metadata"].get("creationTimestamp", "")), p["metadata"]["name"]))
        for item in entries:  # the oldest valid one, as everywhere else
            try:
                out.append(MLSecurityPolicy.model_validate(item))
                break
            except ValidationError:
                continue
    return out


def _what_sync_reads(item: dict[str, Any]) -> dict[str, Any]:
    """A model's body without what the sync never reads (managed fields, annotations, status
    other than the stage): all models are read at once, a page of full bodies at a time."""
    meta = item.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "generation", "deletionTimestamp") if k in meta}
    out = {"apiVersion": item.get("apiVersion"), "kind": item.get("kind"), "metadata": kept,
           "spec": item.get("spec")}
    stage = (item.get("status") or {}).get("stage")
    if stage is not None:
        out["status"] = {"stage": stage}
    return out


def _kv_use(item: dict[str, Any]) -> build.KvUse | None:
    """What the people policies read of a listed model; None if deleted, invalid or without a kv
    secret (it grants nothing)."""
    if item.get("metadata", {}).get("deletionTimestamp"):
        return None
    try:
        use = build.kv_use(ModelDeployment.model_validate(_what_sync_reads(item)))
    except ValidationError:
        return None
    return use if use.paths else None


_mounts_seen: set[str] = set()


def sync_from_api() -> SyncReport | None:
    """One full sync from what the API server holds now; None without a Vault client."""
    client = vault_client()
    if client is None:
        return None
    kube = context.kube()
    scope = list(CONFIG.namespaces)
    where: list[str | None] = list(scope) or [None]
    pol_items: list[dict[str, Any]] = []
    uses: dict[str, list[build.KvUse]] = {}
    for ns in where:
        pol_items += kube.list(API, POLICY_KIND, ns)
        # Reduced page by page to what the policies read: the whole cluster's models held and
        # validated at once, after every change in a burst, left 25 MiB of arenas at 5,000.
        for item in kube.iter_list(API, "ModelDeployment", ns, page_size=MODEL_PAGE):
            if (use := _kv_use(item)) is not None:
                uses.setdefault(use.namespace, []).append(use)
    pols = _policies_in_force(pol_items)
    for p in pols:
        if p.spec.vault is not None and p.spec.vault.ldap_auth_mount:
            _mounts_seen.add(p.spec.vault.ldap_auth_mount)
    report = sync(client, pols, uses, mounts=sorted(_mounts_seen), scope=scope)
    if report.changed:
        _audit(report)
        log.info("people's Vault access synced in %.2fs: %d policies written, %d removed, "
                 "%d group entries written", report.seconds, len(report.policies_written),
                 len(report.policies_removed), len(report.groups_written))
    return report


def _audit(report: SyncReport) -> None:
    context.audit().record(
        EventType.VAULT_ROLE_WRITTEN,
        resource=Resource(type="VaultPeopleAccess", name="ldap-groups", namespace=None),
        action=Action(type="WRITE", details={
            "policies_written": report.policies_written, "policies_removed": report.policies_removed,
            "group_entries_written": report.groups_written}),  # names only, never a secret
        result=Result(status="SUCCESS"),
        context=Context(policy=None),
    )


# --- the worker thread and its triggers ------------------------------------------------------------

_wake = threading.Event()
_stop = threading.Event()
# kind → namespace → name → a 64-bit digest of what the people policies read of the object;
# interned names, an int each: no key tuple and hex string per model (0.3 KB each at 5,000).
_fingerprints: dict[str, dict[str, dict[str, int]]] = {}
_thread: threading.Thread | None = None


def request_sync() -> None:
    _wake.set()


def _worker() -> None:
    while not _stop.is_set():
        _wake.wait(RESYNC_SECONDS)
        if _stop.is_set():
            return
        time.sleep(DEBOUNCE_SECONDS)
        _wake.clear()
        if not leader.leading():
            continue
        try:
            sync_from_api()
        except VaultError as exc:
            log.warning("people's Vault access not synced: %s (retrying)", exc)
            _stop.wait(5.0)
            _wake.set()
        except Exception:
            log.exception("people's Vault access sync failed (retrying)")
            _stop.wait(5.0)
            _wake.set()


@kopf.on.startup()
def start_people_sync(**_: Any) -> None:
    global _thread
    if vault_client() is None or (_thread is not None and _thread.is_alive()):
        return
    _stop.clear()
    _thread = threading.Thread(target=_worker, name="mlsec-people-sync", daemon=True)
    _thread.start()
    request_sync()


@kopf.on.cleanup()
def stop_people_sync(**_: Any) -> None:
    _stop.set()
    _wake.set()


def _relevant(kind: str, body: Mapping[str, Any], type_: str | None) -> int | None:
    """What of an object the people policies depend on (hashed); None once it is going."""
    spec = body.get("spec") or {}
    if type_ == "DELETED" or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    if kind == POLICY_KIND:
        part: Any = {"vault": spec.get("vault"), "roleMappings": spec.get("roleMappings"),
                     "created": (body.get("metadata") or {}).get("creationTimestamp")}
    else:
        part = {"stage": spec.get("stage"), "secrets": spec.get("secrets"),
                "status_stage": (body.get("status") or {}).get("stage")}
    digest = hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _observe(kind: str, body: Mapping[str, Any], type_: str | None) -> None:
    meta = body.get("metadata") or {}
    namespace, name = sys.intern(str(meta.get("namespace"))), sys.intern(str(meta.get("name")))
    value = _relevant(kind, body, type_)
    spaces = _fingerprints.setdefault(kind, {})
    if (spaces.get(namespace) or {}).get(name) != value:
        if value is None:
            names = spaces[namespace]
            del names[name]
            if not names:
                del spaces[namespace]
        else:
            spaces.setdefault(namespace, {})[name] = value
        request_sync()


# Async (in kopf's event loop, a hash and a dict lookup): a thread per event is not worth it.
@kopf.on.event(GROUP, VERSION, "mlsecuritypolicies", id="people-policy-watch")
async def policy_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    _observe(POLICY_KIND, body, type)


def model_seen(body: Mapping[str, Any], type_: str | None) -> None:
    """A model's watch event (from the models' watch thread, :mod:`mlsec.handlers.models`)."""
    _observe("ModelDeployment", body, type_)


# --- the audit device --------------------------------------------------------------------------------

_audit_lock = threading.Lock()
_audit_cache: tuple[float, bool | None, str] = (0.0, None, "")


def check_audit_devices(client: Vault | None = None, *, max_age: float = AUDIT_CACHE_SECONDS) -> tuple[
        bool | None, str]:
    """(enabled, message): True/False, or None when the operator cannot tell (and why)."""
    global _audit_cache
    with _audit_lock:
        when, enabled, message = _audit_cache
        if client is None and time.monotonic() - when < max_age and when > 0:
            return enabled, message
        try:
            client = client or vault_client()
        except ValueError as exc:
            client, message = None, str(exc)
        if client is None:
            enabled, message = None, "the operator has no Vault to check"
        else:
            try:
                devices = client.list_audit_devices()
                enabled = bool(devices)
                message = (f"Vault audit devices enabled: {', '.join(sorted(devices))}" if devices
                           else "Vault has no audit device enabled")
            except VaultError as exc:
                enabled, message = None, f"cannot list Vault's audit devices: {exc}"
        _audit_cache = (time.monotonic(), enabled, message)
        AUDIT_ENABLED.set(1 if enabled else 0)
        return enabled, message


def audit_blocker(namespace: str, pol: MLSecurityPolicy) -> str:
    """promotion.BLOCKERS: why promotions are refused in ``namespace`` ("" if they are not)."""
    vault = pol.spec.vault
    if vault is None or not vault.require_audit_device:
        return ""
    enabled, message = check_audit_devices()
    if enabled:
        return ""
    if enabled is None:
        return (f"Vault audit devices cannot be checked ({message}); spec.vault.requireAuditDevice "
                "refuses promotions to production until they can")
    return ("Vault has no audit device enabled (spec.vault.requireAuditDevice): promotions to "
            "production are refused until one is enabled")


promotion.BLOCKERS.append(audit_blocker)


def _audit_condition(enabled: bool | None, message: str) -> Cond:
    if enabled:
        return Cond(CONDITION, True, "AuditDeviceEnabled", message)
    if enabled is None:
        return Cond(CONDITION, None, "AuditCheckFailed", message)  # Unknown, as the report reads it
    return Cond(CONDITION, False, "NoAuditDevice", message)


def _has_vault(spec: kopf.Spec, **kwargs: Any) -> bool:
    return bool(spec.get("vault")) and leader.leading(**kwargs)


@kopf.on.resume(GROUP, VERSION, "mlsecuritypolicies", when=_has_vault, id="vault-audit-device")
@kopf.on.create(GROUP, VERSION, "mlsecuritypolicies", when=_has_vault, id="vault-audit-device")
@kopf.on.update(GROUP, VERSION, "mlsecuritypolicies", when=_has_vault, id="vault-audit-device")
def audit_device_on_change(body: kopf.Body, namespace: str, **kwargs: Any) -> None:
    check_policy_audit(body, namespace, kwargs)


# Then every AUDIT_INTERVAL, one loop for every namespace rather than a kopf timer per policy (a
# task and the policy's kept body each; bench/README.md, twelfth run): each policy with a vault
# section is read and checked (the devices are asked once for all: check_audit_devices' max_age).
async def _audit_loop() -> None:
    while True:
        await asyncio.sleep(AUDIT_INTERVAL)
        index = leader.policy_index()
        if index is None:
            continue
        indexes = leader.indexes()
        for namespace in sorted(index):
            for entry in context.snapshot(index, namespace):
                if entry[3].get("vault"):
                    try:
                        await asyncio.to_thread(_check_named, namespace, entry[1], indexes)
                    except Exception:
                        log.exception("checking Vault's audit devices for %s failed", namespace)


def _check_named(namespace: str, name: str, indexes: dict[str, Any]) -> None:
    body = context.kube().get(API, POLICY_KIND, namespace, name)
    if body is not None and body.get("spec", {}).get("vault"):
        check_policy_audit(body, namespace, indexes)


loops.operator_loop("vault-audit-device", _audit_loop)


def check_policy_audit(body: Mapping[str, Any], namespace: str, indexes: dict[str, Any]) -> bool:
    """Check, report on the policy (condition, status, event on change), refresh the ledger on
    change; True if something changed."""
    enabled, message = check_audit_devices(max_age=1.0)
    cond = _audit_condition(enabled, message)
    # auditDevice is a boolean in the schema: leave it out while Vault cannot be asked.
    fields = {"vault": {"auditDevice": enabled}} if enabled is not None else {}
    if not status_differs(body, [cond], fields, owner=STATUS_OWNER):
        return False
    # The ledger first: once the condition says "no audit device", promotions are refused.
    if "approvals_by_namespace" in indexes:
        try:
            promotion.refresh(namespace, indexes)
        except Exception:  # the ledger's own timer tries again
            log.exception("refreshing the promotion ledger of %s failed", namespace)
    changed = write_status(POLICY_KIND, body, [cond], fields, owner=STATUS_OWNER)
    if changed:
        # Written directly: the periodic check runs outside any kopf handler (no kopf.event).
        context.post_event(body, "Normal" if enabled else "Warning", cond.reason, message)
    return changed
