"""LDAP → RBAC: platform-role Roles and RoleBindings of a namespace, synced from LDAP groups.

When: on create/update/resume of the namespace's active MLSecurityPolicy, and then every
``spec.ldap.syncInterval`` (or the failure backoff), by one operator-wide loop that looks every
TICK_SECONDS for namespaces whose sync is due, reads their policy and syncs each in a worker
thread (kopf's timers have a fixed interval; a daemon per policy cost a task and the policy's
kept body per namespace).

Fail-safe: if anything cannot be read (LDAP down, bad credentials, a search failing part-way,
Secret missing), no Role or RoleBinding is touched. LDAPSynced turns False with the reason; an
outage is retried after 10 s, 20 s, 40 s… (never later than the interval), a wrong password or
TLS/config error once per interval. Writes happen only for objects whose desired hash or security
content (rules, subjects) differ from the live ones.

The membership of the last successful sync is kept in memory for the promotion gate
(:func:`platform_roles_of`, :func:`role_snapshot`); after a restart it is seeded from the live
RoleBindings, which are exactly that sync's result, with its time from ``status.ldap.lastChange``.

An unchanged directory writes nothing, not even a time stamp (``status.ldap.lastChange`` moves
only with a change): how fresh the sync is shows in the metric
``mlsec_ldap_last_success_timestamp_seconds`` and, from the same in-memory time, in the compliance
Report's ``ldap.sync`` result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicy, PlatformRole, SecretKeyRef, parse_duration
from mlsec.audit.events import Action, Context, EventType, Resource, Result
from mlsec.builders import rbac
from mlsec.builders.conditions import Cond, rfc3339
from mlsec.builders.meta import DESIRED_HASH_ANNOTATION, Obj
from mlsec.clients.kube import KubeError
from mlsec.clients.ldap import DirectoryClient, DirectoryError, DirectorySettings, LdapDirectory
from mlsec.handlers import context, leader, loops
from mlsec.handlers.metrics import WRITES
from mlsec.handlers.policy import API, KIND, PLURAL, active_policy, active_policy_name
from mlsec.handlers.status import status_differs, write_status

log = logging.getLogger(__name__)

OWNER = "mlsec-operator-ldap"
CONDITION = "LDAPSynced"
TICK_SECONDS = 5.0
MIN_PAUSE_SECONDS = 0.5
RETRY_FIRST_SECONDS = 10.0
RBAC_KINDS = ("Role", "RoleBinding")

SYNCS = Counter("mlsec_ldap_sync_total", "LDAP → RBAC syncs by result (reason on failure).",
                ["result"])
SYNC_SECONDS = Histogram("mlsec_ldap_sync_duration_seconds", "LDAP → RBAC sync duration.",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
LAST_SUCCESS = Gauge("mlsec_ldap_last_success_timestamp_seconds",
                     "When the namespace's last successful LDAP → RBAC sync finished (Unix time).",
                     ["namespace"])

# Replaced by tests and the benchmark; the handler never builds an ldap3 connection itself.
DirectoryFactory = Callable[[DirectorySettings, str], DirectoryClient]
directory_factory: DirectoryFactory = LdapDirectory


# --- the membership cache the promotion gate reads ---------------------------------------------


@dataclass(frozen=True)
class RoleSnapshot:
    """Platform roles of a namespace as of the last successful sync."""

    policy: str
    synced_at: datetime | None
    """When LDAP was read; None if unknown (seeded from RoleBindings of a policy never synced)."""
    members: Mapping[str, tuple[str, ...]]
    """platform role → user ids."""
    by_user: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def age(self, now: datetime | None = None) -> timedelta | None:
        if self.synced_at is None:
            return None
        return (now or datetime.now(UTC)) - self.synced_at


_SNAPSHOTS: dict[str, RoleSnapshot] = {}


def role_snapshot(namespace: str) -> RoleSnapshot | None:
    return _SNAPSHOTS.get(namespace)


def platform_roles_of(namespace: str, user: str) -> frozenset[str]:
    """Platform roles (e.g. ``{"model_approver"}``) ``user`` holds in ``namespace``, per LDAP.

    Empty when the user holds none or the namespace was never synced; check
    :func:`role_cache_age` to decide whether the answer is fresh enough.
    """
    snap = _SNAPSHOTS.get(namespace)
    return snap.by_user.get(user, frozenset()) if snap else frozenset()


def synced_roles_of(namespace: str, user: str) -> frozenset[str] | None:
    """Like :func:`platform_roles_of`, but None while the namespace has no sync result at all
    (the promotion gate then falls back to the groups the API server authenticated)."""
    snap = _SNAPSHOTS.get(namespace)
    return None if snap is None else snap.by_user.get(user, frozenset())


def role_cache_age(namespace: str, now: datetime | None = None) -> timedelta | None:
    """How old the membership behind :func:`platform_roles_of` is (None: unknown / never)."""
    snap = _SNAPSHOTS.get(namespace)
    return snap.age(now) if snap else None


def _remember(namespace: str, policy: str, members: Mapping[str, Sequence[str]],
              synced_at: datetime | None) -> None:
    frozen = {role: tuple(users) for role, users in members.items()}
    _SNAPSHOTS[namespace] = RoleSnapshot(policy, synced_at, frozen, rbac.roles_by_user(frozen))


# --- per-namespace schedule --------------------------------------------------------------------


@dataclass
class _State:
    uid: str
    interval: float = 300.0
    next_due: float = 0.0  # time.monotonic()
    failures: int = 0
    last_failure: str | None = None  # reason, to post events and warnings on transitions only
    synced_generation: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


def _state(namespace: str, uid: str) -> _State:
    with _STATES_LOCK:
        state = _STATES.get(namespace)
        if state is None or state.uid != uid:  # a new policy object: start afresh
            state = _STATES[namespace] = _State(uid)
        return state


def forget(namespace: str) -> None:
    with _STATES_LOCK:
        _STATES.pop(namespace, None)
    _SNAPSHOTS.pop(namespace, None)
    with contextlib.suppress(KeyError):
        LAST_SUCCESS.remove(namespace)


def last_success(namespace: str) -> datetime | None:
    """When this process last synced the namespace successfully (or what status said at a seed)."""
    snap = _SNAPSHOTS.get(namespace)
    return snap.synced_at if snap else None


# --- kopf handlers -----------------------------------------------------------------------------


def _is_active(index: kopf.Index[str, tuple[str, str]], namespace: str, name: str) -> bool:
    return active_policy_name(index, namespace) in (None, name)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="ldap-rbac", when=leader.leading)
@kopf.on.create(GROUP, VERSION, PLURAL, id="ldap-rbac", when=leader.leading)
@kopf.on.update(GROUP, VERSION, PLURAL, id="ldap-rbac", when=leader.leading)
def ldap_policy_changed(body: kopf.Body, namespace: str, name: str,
                        policies_by_namespace: kopf.Index[str, tuple[str, str]], **_: Any) -> None:
    """A new or changed policy syncs at once; so does any label or annotation change, e.g.
    ``kubectl annotate mlpol default ldap.mlsec.io/sync-requested="$(date +%s)" --overwrite``
    (annotations under mlsec.io/ are kopf's bookkeeping and trigger nothing)."""
    if _is_active(policies_by_namespace, namespace, name):
        sync_namespace(namespace, body)


# One loop for every namespace rather than a kopf daemon per policy: each daemon was a task with
# its handler state, woke every few seconds, and made kopf keep the policy's whole body (~28 KiB a
# namespace with its managed fields; bench/README.md, twelfth run). The create/resume handler
# makes the first sync; this loop keeps it fresh, reading the policy when a sync is due.
async def _schedule_loop() -> None:
    running: dict[str, asyncio.Task[None]] = {}
    pause = TICK_SECONDS
    try:
        while True:
            await asyncio.sleep(pause)
            pause = TICK_SECONDS
            index = leader.policy_index()
            if index is None:
                continue
            now = time.monotonic()
            for namespace in sorted(index):  # read in the loop: namespaces come and go
                entry = active_policy(index, namespace)
                if entry is None or namespace in running:
                    continue
                state = _state(namespace, entry[4])
                if now < state.next_due or state.lock.locked():
                    # Wake when the soonest is due (a sync is due within its interval, not a tick later).
                    pause = min(pause, max(state.next_due - now, MIN_PAUSE_SECONDS))
                    continue
                running[namespace] = asyncio.create_task(
                    asyncio.to_thread(_scheduled_sync, namespace, entry[1], state))
                running[namespace].add_done_callback(functools.partial(_done, running, namespace))
    finally:  # the operator stops: a sync under way ends in its thread
        for task in list(running.values()):
            task.cancel()


def _done(running: dict[str, asyncio.Task[None]], namespace: str, _: asyncio.Task[None]) -> None:
    running.pop(namespace, None)


def _scheduled_sync(namespace: str, name: str, state: _State) -> None:
    try:
        body = context.kube().get(API, KIND, namespace, name)
    except KubeError as exc:  # an API outage: the same backoff as a failed sync's
        log.info("LDAP sync of %s postponed: the policy cannot be read: %s", namespace, exc.message)
        state.next_due = time.monotonic() + RETRY_FIRST_SECONDS
        return
    if body is not None and (body.get("metadata") or {}).get("uid") == state.uid:
        sync_namespace(namespace, body, wait=False)


loops.operator_loop("ldap-rbac-schedule", _schedule_loop)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="ldap-rbac", optional=True)
def ldap_policy_deleted(namespace: str, uid: str, **_: Any) -> None:
    # The Roles and RoleBindings go with the policy (owner references, garbage collector).
    with _STATES_LOCK:
        state = _STATES.get(namespace)
    if state is not None and state.uid == uid:
        forget(namespace)


# --- one sync ----------------------------------------------------------------------------------


class SyncFailed(Exception):
    """``retryable``: worth a quick retry (outage, API error); otherwise wait a whole interval."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class SyncReport:
    """What one successful sync did (also what the benchmark prints)."""

    users: int
    groups: int
    members: Mapping[str, Sequence[str]]
    written: tuple[str, ...]
    deleted: tuple[str, ...]
    added: Mapping[str, Sequence[str]]
    removed: Mapping[str, Sequence[str]]
    missing_groups: tuple[str, ...]
    ldap_seconds: float
    status_written: bool


def sync_namespace(namespace: str, body: Mapping[str, Any], *, wait: bool = True) -> SyncReport | None:
    """Sync the RBAC of ``namespace`` from ``body`` (its active policy). Never raises.

    Returns the report, or None when the sync failed (status tells why) or, with
    ``wait=False``, when another sync of the namespace is running.
    """
    meta = body.get("metadata") or {}
    state = _state(namespace, str(meta.get("uid", "")))
    if not state.lock.acquire(blocking=wait):
        return None
    started = time.perf_counter()
    try:
        report = _sync(namespace, body, state)
    except SyncFailed as exc:
        _failed(namespace, body, state, exc)
        SYNCS.labels(exc.reason).inc()
        return None
    except KubeError as exc:  # reading Secrets, listing RBAC, writing status
        _failed(namespace, body, state, SyncFailed("APIError", str(exc), retryable=True))
        SYNCS.labels("APIError").inc()
        return None
    except Exception as exc:  # a bug or an API outage: same fail-safe path, with the traceback
        log.exception("LDAP sync of %s failed unexpectedly", namespace)
        _failed(namespace, body, state,
                SyncFailed("InternalError", f"{type(exc).__name__}: {exc}", retryable=True))
        SYNCS.labels("InternalError").inc()
        return None
    else:
        SYNCS.labels("success").inc()
        return report
    finally:
        SYNC_SECONDS.observe(time.perf_counter() - started)
        state.lock.release()


def _sync(namespace: str, body: Mapping[str, Any], state: _State) -> SyncReport:
    meta = dict(body.get("metadata") or {})
    try:
        policy = MLSecurityPolicy.model_validate({"metadata": meta, "spec": body.get("spec") or {}})
    except ValidationError:
        state.interval = 300.0
        raise SyncFailed("InvalidPolicy", "the spec is invalid (see condition Valid)") from None
    ldap = policy.spec.ldap
    state.interval = parse_duration(ldap.sync_interval).total_seconds()

    password = _secret_value(namespace, ldap.bind_password_secret_ref, "bindPasswordSecretRef")
    ca_pem = _secret_value(namespace, ldap.ca_secret_ref, "caSecretRef") if ldap.ca_secret_ref else None
    settings = DirectorySettings(
        url=ldap.url, start_tls=ldap.start_tls, bind_dn=ldap.bind_dn, ca_pem=ca_pem,
        user_search_base=ldap.user_search_base, group_search_base=ldap.group_search_base,
        user_id_attribute=ldap.user_id_attribute, group_object_class=ldap.group_object_class,
    )
    t0 = time.perf_counter()
    try:
        membership = directory_factory(settings, password).group_members(
            [m.ldap_group for m in policy.spec.role_mappings])
    except DirectoryError as exc:
        raise SyncFailed(exc.reason, exc.message, retryable=exc.retryable) from None
    ldap_seconds = time.perf_counter() - t0
    synced_at = datetime.now(UTC)

    members = rbac.role_members(membership.groups, policy.spec.role_mappings)
    written, deleted, added, removed = _converge(namespace, rbac.desired_rbac(policy, members))
    _remember(namespace, str(meta.get("name")), members, synced_at)

    users = len({u for us in members.values() for u in us})
    groups = len(membership.groups)
    total = len({m.ldap_group for m in policy.spec.role_mappings})
    message = f"{users} users hold a platform role, from {groups} of {total} mapped LDAP groups"
    if membership.missing:
        message += f"; not found under groupSearchBase: {', '.join(membership.missing)}"
    LAST_SUCCESS.labels(namespace).set(synced_at.timestamp())
    changed = bool(written or deleted)
    conds = [Cond(CONDITION, True, "Synced", message)]
    previous = ((body.get("status") or {}).get("ldap") or {}).get("lastChange")
    ldap_status = {"lastChange": previous, "users": users, "groups": groups}
    fields = {"ldap": ldap_status, "roleMembers": {role: len(us) for role, us in members.items()}}
    if changed or not previous or status_differs(body, conds, fields, owner=OWNER):
        ldap_status["lastChange"] = rfc3339(synced_at)
    status_written = write_status(KIND, body, conds, fields, owner=OWNER)

    generation = int(meta.get("generation") or 0)
    if changed or state.synced_generation != generation or state.failures:
        _audit_synced(namespace, policy, members, written, deleted, added, removed, membership.missing)
    if changed:
        _event(body, "Normal", "RBACSynced", _change_text(written, deleted, added, removed))
    log.info("LDAP sync of %s: %s; %d written, %d deleted in %.2fs (LDAP %.2fs)", namespace, message,
             len(written), len(deleted), time.perf_counter() - t0, ldap_seconds)
    state.failures, state.last_failure, state.synced_generation = 0, None, generation
    state.next_due = time.monotonic() + state.interval
    return SyncReport(users, groups, members, written, deleted, added, removed, membership.missing,
                      ldap_seconds, status_written)


def _secret_value(namespace: str, ref: SecretKeyRef, field_name: str) -> str:
    """One key of a Secret, decoded. The value is returned, never put into a message."""
    secret = context.kube().get("v1", "Secret", namespace, ref.name)
    if secret is None:
        raise SyncFailed("SecretNotFound", f"{field_name}: Secret {ref.name} not found")
    encoded = (secret.get("data") or {}).get(ref.key)
    if encoded is None:
        raise SyncFailed("SecretKeyNotFound", f"{field_name}: Secret {ref.name} has no key {ref.key}")
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise SyncFailed("SecretInvalid", f"{field_name}: key {ref.key} of Secret {ref.name} "
                         "is not UTF-8 text") from None


# --- converge live objects to desired ---------------------------------------------------------


def _security_content(obj: Mapping[str, Any], kind: str) -> Any:
    """What grants access; compared too, so that a hand-edited binding is put back (drift).

    ``kind`` is passed in: the items of a LIST carry no kind of their own.
    """
    if kind == "Role":
        return obj.get("rules") or []
    return (obj.get("roleRef"), obj.get("subjects") or [])


def _differs(live: Mapping[str, Any] | None, desired: Obj) -> bool:
    if live is None:
        return True
    live_hash = ((live.get("metadata") or {}).get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)
    want_hash = desired["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    kind = desired["kind"]
    return bool(live_hash != want_hash) or _security_content(live, kind) != _security_content(desired, kind)


def _subjects(obj: Mapping[str, Any] | None) -> set[str]:
    return {s.get("name", "") for s in (obj or {}).get("subjects") or [] if s.get("kind") == "User"}


def _converge(namespace: str, desired: list[Obj]) -> tuple[
        tuple[str, ...], tuple[str, ...], dict[str, list[str]], dict[str, list[str]]]:
    """Apply what differs and delete what is no longer desired; 2 LISTs and no write if in sync."""
    kube = context.kube()
    live: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in RBAC_KINDS:
        for obj in kube.list(rbac.RBAC_API_VERSION, kind, namespace, rbac.SELECTOR):
            live[(kind, obj["metadata"]["name"])] = obj
    written: list[str] = []
    added: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    for obj in desired:
        key = (obj["kind"], obj["metadata"]["name"])
        before = live.get(key)
        if obj["kind"] == "RoleBinding":
            role = obj["metadata"]["labels"][rbac.LABEL_PLATFORM_ROLE]
            if plus := sorted(_subjects(obj) - _subjects(before)):
                added[role] = plus
            if minus := sorted(_subjects(before) - _subjects(obj)):
                removed[role] = minus
        if _differs(before, obj):
            try:
                kube.apply(obj)
            except KubeError as err:  # e.g. 403: the operator lacks a permission it would grant
                raise SyncFailed("ApplyFailed", f"cannot write {obj['kind']}/{key[1]}: {err}",
                                 retryable=True) from None
            WRITES.labels(obj["kind"]).inc()
            written.append(f"{obj['kind']}/{key[1]}")
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    deleted: list[str] = []
    # Bindings before Roles: access goes away first. Only objects a policy owns are pruned.
    for (kind, name), obj in sorted(live.items(), key=lambda kv: kv[0][0] != "RoleBinding"):
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if (kind, name) in wanted or not any(o.get("kind") == KIND for o in owners):
            continue
        if kind == "RoleBinding" and (users := sorted(_subjects(obj))):
            removed[obj["metadata"]["labels"].get(rbac.LABEL_PLATFORM_ROLE, name)] = users
        kube.delete(rbac.RBAC_API_VERSION, kind, namespace, name)
        WRITES.labels(kind).inc()
        deleted.append(f"{kind}/{name}")
    return tuple(written), tuple(deleted), added, removed


# --- failure path ------------------------------------------------------------------------------


def _failed(namespace: str, body: Mapping[str, Any], state: _State, exc: SyncFailed) -> None:
    """Leave RBAC as it is; say why in status, an event (on change) and the audit log; back off."""
    state.failures += 1
    # Transient failures back off from 10 s up to the interval. The others (wrong password, TLS,
    # configuration) are retried once per interval only: repeated bad binds can lock the bind
    # account, and a fixed Secret is also picked up at once by touching the policy.
    delay = (min(state.interval, RETRY_FIRST_SECONDS * 2 ** (state.failures - 1))
             if exc.retryable else state.interval)
    state.next_due = time.monotonic() + delay
    transition = state.last_failure != exc.reason
    state.last_failure = exc.reason
    old = dict(body.get("status") or {})
    last = (old.get("ldap") or {}).get("lastChange")
    # The message stays the same while the failure does (no retry countdown in it): an operator
    # retrying a broken policy must not rewrite its status on every attempt.
    message = (f"{exc.message}; Roles and RoleBindings left unchanged "
               f"(as the last successful sync left them; last changed {last})" if last else
               f"{exc.message}; Roles and RoleBindings left unchanged (no successful sync yet)")
    # Re-send the fields this owner holds, or server-side apply would remove them.
    fields = {k: old[k] for k in ("ldap", "roleMembers") if k in old}
    try:
        write_status(KIND, body, [Cond(CONDITION, False, exc.reason, message)], fields, owner=OWNER)
    except KubeError as err:
        log.warning("cannot write LDAPSynced status of %s: %s", namespace, err)
    if transition:
        _event(body, "Warning", "LDAPSyncFailed", message)
        log.warning("LDAP sync of %s failed: %s; retrying in %.0fs", namespace, message, delay)
    context.audit().record(
        EventType.LDAP_SYNC_FAILED,
        resource=_resource(namespace, body),
        action=Action(type="SYNC", details={"attempt": state.failures, "retryInSeconds": round(delay)}),
        result=Result(status="FAILURE", reason=f"{exc.reason}: {exc.message}"),
        context=Context(policy=f"{namespace}/{(body.get('metadata') or {}).get('name')}"),
    )
    # Only a namespace that had a successful sync (before a restart) has bindings to trust;
    # one that never synced keeps no snapshot, so the gate uses the authenticated groups.
    if namespace not in _SNAPSHOTS and last:
        _seed_from_bindings(namespace, body, last)


def _seed_from_bindings(namespace: str, body: Mapping[str, Any], last_sync: str | None) -> None:
    """After a restart during an outage: the live bindings are the last successful sync."""
    try:
        bindings = context.kube().list(rbac.RBAC_API_VERSION, "RoleBinding", namespace, rbac.SELECTOR)
    except KubeError:
        return
    members: dict[str, list[str]] = {}
    for b in bindings:
        role = (b.get("metadata") or {}).get("labels", {}).get(rbac.LABEL_PLATFORM_ROLE)
        if role in {r.value for r in PlatformRole}:
            members[role] = sorted(_subjects(b))
    synced_at = None
    if last_sync:
        with contextlib.suppress(ValueError):
            synced_at = datetime.fromisoformat(last_sync.replace("Z", "+00:00"))
    if synced_at is not None:  # at least that old: the last change is a lower bound
        LAST_SUCCESS.labels(namespace).set(synced_at.timestamp())
    _remember(namespace, str((body.get("metadata") or {}).get("name")), members, synced_at)


# --- audit and events --------------------------------------------------------------------------


def _resource(namespace: str, body: Mapping[str, Any]) -> Resource:
    meta = body.get("metadata") or {}
    return Resource(type=KIND, name=meta.get("name"), namespace=namespace,
                    version=str(meta.get("generation")))


def _audit_synced(namespace: str, policy: MLSecurityPolicy, members: Mapping[str, Sequence[str]],
                  written: Sequence[str], deleted: Sequence[str], added: Mapping[str, Sequence[str]],
                  removed: Mapping[str, Sequence[str]], missing: Sequence[str]) -> None:
    context.audit().record(
        EventType.RBAC_SYNCED,
        resource=Resource(type=KIND, name=policy.metadata.name, namespace=namespace,
                          version=str(policy.metadata.generation)),
        action=Action(type="SYNC", details={
            "roleMembers": {role: len(us) for role, us in members.items()},
            "written": list(written), "deleted": list(deleted),
            "added": dict(added), "removed": dict(removed), "missingGroups": list(missing),
        }),
        result=Result(status="SUCCESS"),
        context=Context(policy=f"{namespace}/{policy.metadata.name}"),
    )


def _change_text(written: Sequence[str], deleted: Sequence[str], added: Mapping[str, Sequence[str]],
                 removed: Mapping[str, Sequence[str]]) -> str:
    parts = [f"+{u} {role}" for role, us in added.items() for u in us]
    parts += [f"-{u} {role}" for role, us in removed.items() for u in us]
    text = f"{len(written)} written, {len(deleted)} deleted"
    return f"{text}: {', '.join(parts)}"[:1000] if parts else text


def _event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    # Written directly: a scheduled sync runs outside any kopf handler, where kopf.event has no
    # poster.
    context.post_event(body, type_, reason, message)
