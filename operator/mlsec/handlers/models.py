"""ModelDeployments, watched and queued outside kopf: watch → compact record → key queue → reconcile.

kopf kept per model its memory records, the bodies in its two model indexes, a worker per object
holding the event's body while it waited for a handler thread (thousands in a bulk create) and,
at start-up, the whole listing until every index was complete: ~88 KiB of RSS per model at
5,000. Here one list+watch per watched namespace (:class:`mlsec.clients.watch.ListWatch`) keeps a
:class:`~mlsec.handlers.model_store.ModelRecord` per model and queues only keys; a worker reads
the model when it takes the key (:func:`mlsec.handlers.deployment.reconcile` does a GET anyway).

What kopf did for the models and is done here instead:

- **Triggers**: a new model, a new generation, a change of labels, annotations or finalizers,
  a deletion starting, a (re)listing (the resume pass), a policy or approval change in the
  namespace, an election. The echo of a status write is not one.
- **Retries**: a reconcile that asks for a retry runs again after 15 s, a failure after 1 s, 2 s,
  4 s … up to a minute (:mod:`mlsec.handlers.workqueue`).
- **Leadership**: only the leader processes keys; a new leader queues every model.
- **The finalizer** ``mlsec.io/finalizer``, on models that use Vault (by spec, or by status: a role
  or policy was written for them): added before the reconcile writes to Vault, removed once the
  model's Vault role and policy are gone, at deletion or when the model stops using Vault.
- **Readiness**: the workers start once kopf's own indexes (policies, approvals) are complete,
  or a restart would report "no policy" for a moment (``kopf_patches.INDEXED``), and once the
  children are listed (else the resume pass reads each child; bounded: a child kind the API
  server cannot list must not stop the operator). Keys queued meanwhile wait, coalesced.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from mlsec.clients.kube import KubeError, resource_of, transport_for
from mlsec.clients.rest import Transport
from mlsec.clients.watch import ListWatch
from mlsec.handlers import (
    allocator,
    context,
    deployment,
    kopf_patches,
    leader,
    people,
    policy,
    promotion,
    reports,
)
from mlsec.handlers import settings as settings_
from mlsec.handlers import vault as vault_step
from mlsec.handlers.model_store import STORE, Key, ModelRecord, needs_reconcile, record_of
from mlsec.handlers.workqueue import WorkQueue

API, KIND = deployment.API, deployment.KIND
FINALIZER = settings_.FINALIZER
RETRY_SECONDS = 15.0  # a reconcile waiting for something outside (Vault, a policy) tries again
CHILDREN_LISTED_SECONDS = 60.0  # at most this long for the children's first listing at start-up
WORKERS = 8
log = logging.getLogger(__name__)

_fresh: set[Key] = set()  # seen created (ADDED, never listed, no status): no child can exist yet
_loop: asyncio.AbstractEventLoop | None = None
_watches: list[ListWatch] = []


def _record(body: Mapping[str, Any]) -> ModelRecord:
    """What the store keeps of a model (whether it uses Vault: by spec, or by status when Vault
    objects were written for it)."""
    return record_of(body, status_of=reports.status_subset, uses_vault=vault_step.uses_vault)


def seen(type_: str | None, body: dict[str, Any]) -> None:
    """A model's watch event (in its watch thread): keep its record, tell whoever depends on it,
    queue it if it is work."""
    meta = body.get("metadata") or {}
    # Interned: the store, the queue and what is observed of the children share one string.
    key = (sys.intern(str(meta.get("namespace") or "")), sys.intern(str(meta.get("name") or "")))
    if type_ == "DELETED":
        STORE.remove(key)
        _fresh.discard(key)
        old, new = None, None
    else:
        new = _record(body)
        old = STORE.put(key, new)
        if type_ == "ADDED" and old is None and not body.get("status"):
            _fresh.add(key)
    people.model_seen(body, type_)
    if _loop is not None:
        _loop.call_soon_threadsafe(reports.mark, key[0])
    if needs_reconcile(old, new) and leader.leading():
        QUEUE.add(key)


def process(key: Key, attempt: int) -> float | None:
    """Converge one model: its finalizer, its Vault cleanup at deletion, its reconcile. Returns
    None when done, or seconds until the next try."""
    if not leader.leading():
        return None  # a new leader queues every model
    record = STORE.get(key)
    if record is None:
        return None
    namespace, name = key
    try:
        if record.deleting:
            if FINALIZER in record.finalizers:
                _finalize(namespace, name, attempt)
            return None
        if record.uses_vault and FINALIZER not in record.finalizers:
            _set_finalizer(namespace, name, record, present=True)
        outcome = deployment.reconcile(namespace, name, leader.indexes(), created=key in _fresh)
        _fresh.discard(key)
        if outcome.retry:
            log.warning("%s/%s: %s (retrying in %.0f s)", namespace, name, outcome.retry, RETRY_SECONDS)
            return RETRY_SECONDS
        current = STORE.get(key)
        if current is not None and not current.uses_vault and FINALIZER in current.finalizers \
                and not current.deleting:
            _set_finalizer(namespace, name, current, present=False)  # its Vault objects are gone
        return None
    except kopf.TemporaryError as exc:
        log.warning("%s/%s: %s", namespace, name, exc)
        return float(exc.delay or RETRY_SECONDS)
    except _Raced:  # the finalizers changed since they were read: read them again
        return min(0.2 * 2.0 ** attempt, 5.0)
    except KubeError as exc:
        if exc.status == 403 and "being terminated" in exc.message:
            return None  # the namespace is going away
        raise


def _finalize(namespace: str, name: str, attempt: int) -> None:
    """The model is being deleted: remove its Vault role and policy (or raise TemporaryError),
    then the finalizer."""
    body = context.kube().get(API, KIND, namespace, name)
    if body is None or FINALIZER not in ((body.get("metadata") or {}).get("finalizers") or []):
        return
    if vault_step.uses_vault(body):
        vault_step.cleanup_for_deletion(body, attempt)
    _set_finalizer(namespace, name, _record(body), present=False)


def _set_finalizer(namespace: str, name: str, record: ModelRecord, *, present: bool) -> None:
    """Add or remove our finalizer with a JSON patch that first tests the resourceVersion the
    record came from: a change meanwhile (another controller's finalizers, say) fails the patch
    (422) instead of being overwritten, and the key is tried again with a fresher record."""
    current = list(record.finalizers)
    wanted = [f for f in current if f != FINALIZER] + ([FINALIZER] if present else [])
    if wanted == current:
        return
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/uid", "value": record.uid},
        {"op": "test", "path": "/metadata/resourceVersion", "value": record.resource_version},
        {"op": "add", "path": "/metadata/finalizers", "value": wanted},
    ]
    try:
        context.kube().request("PATCH", resource_of(API, KIND).path(namespace, name), body=ops,
                               content_type="application/json-patch+json")
    except KubeError as exc:
        if exc.status in (409, 422):  # a test op failed: someone changed the list meanwhile
            raise _Raced() from None
        raise


class _Raced(Exception):
    """A finalizer patch found the object changed since it was read."""


# --- triggers from elsewhere ----------------------------------------------------------------------


def queue_namespace(namespace: str, _indexes: dict[str, Any] | None = None) -> None:
    """Re-reconcile every model of a namespace (its policy or approvals changed)."""
    QUEUE.add_all(STORE.keys(namespace))


def queue_all(_indexes: dict[str, Any] | None = None) -> None:
    """On election: converge every model, whatever the previous leader left half-done."""
    QUEUE.add_all(STORE.keys())


QUEUE: WorkQueue[Key] = WorkQueue(process, workers=WORKERS, name="mlsec-reconcile")
QUEUE.on_idle = allocator.request_trim  # a burst (a restart's resume pass, a bulk create) is over
policy.ON_POLICY_CHANGE.append(queue_namespace)
promotion.ON_DECISIONS_CHANGED.append(queue_namespace)
leader.ON_ELECTED.append(queue_all)


def model_watches(transport: Transport, namespaces: list[str]) -> list[ListWatch]:
    """One list+watch of every model per watched namespace (or the whole cluster)."""
    scopes: list[str | None] = list(namespaces) or [None]
    watches = [ListWatch(transport, API, KIND, resource_of(API, KIND).path(ns), "", seen) for ns in scopes]

    def listed() -> None:
        allocator.request_trim()  # the pages of the listing are garbage now
        if all(w.listed.is_set() for w in watches):
            STORE.listed.set()

    for w in watches:
        w.on_listed = listed
    return watches


@kopf.on.startup(id="model-watches")
async def start(**kwargs: Any) -> None:
    global _loop
    if _watches:
        return
    _loop = asyncio.get_running_loop()
    leader.remember_indexes(kwargs)  # kopf's indexes (policies, approvals), live views
    leader.remember_indexes({"models_by_namespace": STORE.models_by_namespace,
                             "report_models": STORE.report_models})
    threading.Thread(target=_start_when_ready, name="mlsec-reconcile-start", daemon=True).start()
    scopes = max(1, len(settings_.CONFIG.namespaces))
    # Its own pool: each watch holds a connection for its life and must not starve the requests.
    _watches.extend(model_watches(transport_for(pool_size=scopes), settings_.CONFIG.namespaces))
    for w in _watches:
        w.start()


def _start_when_ready() -> None:
    kopf_patches.INDEXED.wait()
    deployment.children_listed(timeout=CHILDREN_LISTED_SECONDS)
    QUEUE.start()
    log.info("reconciling: %d models known, %d queued", len(STORE), QUEUE.pending())


@kopf.on.cleanup(id="model-watches")
def stop(**_: Any) -> None:
    for w in _watches:
        w.stop()
    _watches.clear()
    QUEUE.stop()
