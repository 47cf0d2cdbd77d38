"""Leader election over a coordination.k8s.io Lease: every replica serves webhooks, one reconciles.

kopf's own peering is priority-based and replicas of equal priority all freeze, so the election is
explicit: a replica holds the Lease by renewing it every :data:`RENEW` seconds; it considers itself
leader only while its last successful renewal is younger than :data:`DURATION`, so a replica cut
off from the API server stops reconciling before another one can take over. Resource handlers
are filtered with :func:`leading`; on election the new leader re-reconciles everything
(level-based: it trusts nothing a previous leader did or did not finish).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mlsec.clients.kube import Kube, KubeError
from mlsec.handlers import context

LEASE = "mlsec-operator-leader"
DURATION = 10.0
RENEW = 2.0
log = logging.getLogger(__name__)

# Run on becoming leader, with the latest kopf indexes (see remember_indexes).
ON_ELECTED: list[Callable[[dict[str, Any]], None]] = []


class Elector:
    def __init__(self, kube: Kube, namespace: str, identity: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self._renewed = 0.0  # monotonic time of our last successful acquire/renew
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return time.monotonic() - self._renewed < DURATION - RENEW

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and hand the Lease back, so a standby takes over at once."""
        self._stop.set()
        if not self.is_leader():
            return
        self._renewed = 0.0
        try:
            lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, LEASE)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.kube.replace(lease)
        except Exception as exc:
            log.warning("could not release the leader lease: %s", exc)

    def _run(self) -> None:
        was_leader = False
        while not self._stop.is_set():
            try:
                self._try_acquire()
            except Exception as exc:  # the API server may be briefly unreachable
                log.warning("leader election: %s", exc)
            leader = self.is_leader()
            if leader and not was_leader:
                log.info("became leader (%s)", self.identity)
                _elected()
            elif was_leader and not leader:
                log.warning("lost leadership (%s): reconciling stops", self.identity)
            was_leader = leader
            self._stop.wait(RENEW)

    def _try_acquire(self) -> None:
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, LEASE)
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity")
        if lease is not None and holder and holder != self.identity:
            renewed = spec.get("renewTime") or spec.get("acquireTime")
            age = (now - datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))).total_seconds() \
                if renewed else DURATION + 1
            if age < float(spec.get("leaseDurationSeconds") or DURATION):
                return  # someone else holds a live lease
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(DURATION),
                     "renewTime": stamp,
                     "acquireTime": spec.get("acquireTime") if holder == self.identity else stamp,
                     "leaseTransitions": int(spec.get("leaseTransitions") or 0)
                     + (0 if holder == self.identity else 1)},
        }
        if lease is None:
            self.kube.create(body)
        else:
            # resourceVersion makes the update conditional: of two replicas racing, one wins.
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            try:
                self.kube.replace(body)
            except KubeError as exc:
                if exc.status == 409:
                    return
                raise
        self._renewed = time.monotonic()


_elector: Elector | None = None
_indexes: dict[str, Any] = {}


def start(namespace: str) -> Elector:
    global _elector
    identity = f"{socket.gethostname()}-{os.getpid()}"
    _elector = Elector(context.kube(), namespace, identity)
    try:  # one synchronous attempt, so a sole replica handles objects from its first event on
        _elector._try_acquire()
    except Exception as exc:
        log.warning("leader election: first attempt failed: %s", exc)
    _elector.start()
    return _elector


def stop() -> None:
    if _elector is not None:
        _elector.stop()


def leading(**_: Any) -> bool:
    """kopf ``when=`` filter: True on the leader (and when no election runs, e.g. unit tests)."""
    return _elector is None or _elector.is_leader()


def remember_indexes(kwargs: dict[str, Any]) -> None:
    """Keep kopf's index objects (live views) for work started outside a handler."""
    for key in ("policies_by_namespace", "approvals_by_namespace", "models_by_namespace", "report_models"):
        if key in kwargs:
            _indexes[key] = kwargs[key]


def policy_index() -> Any | None:
    """kopf's policies-by-namespace index when this replica leads and kopf has delivered it, else
    None: what the operator-wide loops walk (they do nothing off the leader)."""
    return _indexes.get("policies_by_namespace") if leading() else None


def indexes() -> dict[str, Any]:
    """The kopf indexes remembered so far (live views; copy a key with context.snapshot)."""
    return dict(_indexes)


def _elected() -> None:
    if not _indexes:
        return  # kopf has not delivered indexes yet; resume handlers will do the work
    for callback in ON_ELECTED:
        try:
            callback(dict(_indexes))
        except Exception:
            log.exception("re-reconcile after election failed in %s", callback)
