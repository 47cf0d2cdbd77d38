"""Compliance Reports: one OpenReports ``Report`` per namespace, kept current, written only on change.

What: :func:`mlsec.builders.report.build_report` computes the namespace's Report from its active
MLSecurityPolicy (spec, status) and its ModelDeployments (spec, status); here we decide when, and
write it by server-side apply when it differs from the live one. The Report is owned by the
policy (the garbage collector removes it with the policy).

When: one task per namespace with an active MLSecurityPolicy, on the elected leader (started and
stopped by one operator-wide loop), wakes when a ModelDeployment or a policy of its namespace
changes (watch events → :func:`mark`) and every :data:`PERIOD` seconds (LDAP freshness is a
matter of time). A burst of events is collapsed: the task waits until the namespace has been quiet
for :data:`SETTLE` seconds (at most :data:`MAX_DELAY`) and computes at most once per
:data:`MIN_INTERVAL` (longer after a slow write, see :data:`PACE`), so 200 models created at
once cause a handful of writes, not 200. The models come from their watch stream (the records in
:mod:`mlsec.handlers.model_store`); the policy is read once per computation.

Idle: the last Report written (or read) is kept; a recompute that yields the same object writes
nothing and reads nothing. Every :data:`RESYNC` seconds the live Report is read once, so that an
edited or deleted Report is put back.

Without the OpenReports CRDs: said once (at start-up, or when they disappear), then the tasks
only export metrics; the CRDs are looked for again at most every :data:`RECHECK` seconds
(one list call for the whole operator), and Reports are written as soon as they exist.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import REGISTRY

from mlsec import GROUP, VERSION
from mlsec.builders import report as rb
from mlsec.clients.kube import KubeError
from mlsec.handlers import context, leader, loops, metrics, model_store, rbac
from mlsec.handlers.metrics import WRITES
from mlsec.handlers.naps import nap
from mlsec.handlers.policy import API as POLICY_API
from mlsec.handlers.policy import KIND as POLICY_KIND
from mlsec.handlers.policy import PLURAL as POLICY_PLURAL
from mlsec.handlers.policy import active_policy_name
from mlsec.handlers.settings import CONFIG

log = logging.getLogger(__name__)

SETTLE = 0.3  # seconds without a new event before computing
MAX_DELAY = 3.0  # ... but never wait longer than this after the first event
MIN_INTERVAL = 1.0  # at most one computation (and so one write) per namespace per second ...
PACE = 3.0  # ... and after a write that took W seconds, none for PACE x W (a busy API server
# takes seconds for a Report of hundreds of KiB: the operator backs off instead of piling on)
PERIOD = 60.0  # recompute anyway (in memory; LDAP freshness depends on time)
RESYNC = 300.0  # read the live Report again (someone may have edited or deleted it)
RECHECK = 300.0  # look for the OpenReports CRDs again while they are missing
COMPUTING = 1
"""Reports computed at once, whatever the namespaces: after a restart every namespace computes
its Report together, each reading its models and the live Report (hundreds of KiB); one at a
time, a restart with 5,000 models settled 3 MiB lower (109.3 → 106.4 MiB; bench/README.md,
twelfth run). Computing is Python under the GIL: more at once would not finish sooner."""
TICK = 2.0  # how often the loop looks for namespaces to start or stop, and an idle task for models

COMPLIANCE_RESULTS = metrics.NamespaceCounts(
    "mlsec_compliance_results",
    "Compliance results of the namespace's Report, by rule and result (pass, fail, warn, error, skip).",
    rb.RESULTS,
)
REGISTRY.register(COMPLIANCE_RESULTS)

MISSING_MESSAGE = (
    "OpenReports CRDs (reports.openreports.io, openreports.io/v1alpha1) are not installed: compliance "
    "Reports are not written; the operator reconciles as usual and exports the results as the "
    "mlsec_compliance_results metric. Install the CRDs (Helm: --set reports.installCRDs=true; "
    "clusters running Kyverno have them) and the Reports appear within %d s."
)

# --- inputs, from kopf's watch streams ---------------------------------------------------------

# name, uid, spec, the parts of status the report reads, being deleted
ModelEntry = tuple[str, str, dict[str, Any], dict[str, Any], bool]


def status_subset(status: Mapping[str, Any]) -> dict[str, Any]:
    """What the report reads of a model's status (kept in memory for every model: keep it small)."""
    out: dict[str, Any] = {
        "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                       for c in status.get("conditions") or [] if isinstance(c, Mapping)],
    }
    for key in ("children", "vault"):
        if status.get(key):
            out[key] = copy.deepcopy(status[key])
    return out


# The models' watch (mlsec.handlers.models) marks a namespace on every event of its models; an
# async index handler on policies, in kopf's event loop and silent (an @kopf.on.event handler logs
# a line per event), marks it on every change of a policy.


@kopf.index(GROUP, VERSION, POLICY_PLURAL)
async def report_policy_trigger(namespace: str, **_: Any) -> None:
    """Indexes nothing: wakes the namespace's task on any change of a policy (spec or status)."""
    mark(namespace)


# --- triggers -------------------------------------------------------------------------------------

_dirty: dict[str, asyncio.Event] = {}  # used only in kopf's event loop


def _event(namespace: str) -> asyncio.Event:
    ev = _dirty.get(namespace)
    if ev is None:
        ev = _dirty[namespace] = asyncio.Event()
    return ev


def mark(namespace: str) -> None:
    """The namespace's Report may have changed (call from kopf's event loop)."""
    _event(namespace).set()


# --- are the OpenReports CRDs there? ------------------------------------------------------------


class Availability:
    """Whether the API server serves openreports.io Reports; each change is logged once."""

    def __init__(self) -> None:
        self.present: bool | None = None
        self.checked = 0.0  # monotonic time of the last answer
        self._lock = threading.Lock()

    def usable(self) -> bool:
        """False while the CRDs are known to be missing and not due for another look."""
        with self._lock:
            return self.present is not False or time.monotonic() - self.checked >= RECHECK

    def found(self) -> None:
        with self._lock:
            if self.present is False:
                log.info("OpenReports CRDs found: writing compliance Reports")
            self.present, self.checked = True, time.monotonic()

    def missing(self) -> None:
        with self._lock:
            if self.present is not False:
                log.warning(MISSING_MESSAGE, RECHECK)
            self.present, self.checked = False, time.monotonic()


AVAILABILITY = Availability()


def _reports_missing(exc: KubeError) -> bool:
    """A 404 on a *list* can only mean the resource type is not served."""
    return exc.status == 404


def probe(namespace: str) -> bool | None:
    """Look for the CRDs with one (label-selected, usually empty) list; None if the API failed."""
    try:
        context.kube().list(rb.REPORT_API_VERSION, rb.REPORT_KIND, namespace, label_selector=rb.SELECTOR)
    except KubeError as exc:
        if _reports_missing(exc):
            AVAILABILITY.missing()
            return False
        log.warning("cannot tell whether the OpenReports CRDs are installed: %s", exc)
        return None
    AVAILABILITY.found()
    return True


@kopf.on.startup(id="report-crds")
def _probe_at_startup(**_: Any) -> None:
    namespace = CONFIG.namespaces[0] if CONFIG.namespaces else CONFIG.lease_namespace
    try:
        probe(namespace)
    except Exception as exc:  # never keep the operator from starting
        log.warning("cannot tell whether the OpenReports CRDs are installed: %s", exc)


# --- one namespace ---------------------------------------------------------------------------------


class NamespaceReport:
    """Computes and writes one namespace's Report; called from one task, one call at a time."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.cache: rb.Seen | None = None  # what is kept of the Report last written or read
        self.cache_known = False  # False: read the live Report before comparing
        self.read_at = 0.0
        self.last_error = ""
        self.write_seconds = 0.0  # how long the last write took

    def forget(self) -> None:
        self.cache, self.cache_known = None, False

    def _read_live(self) -> dict[str, Any] | None:
        items = context.kube().list(rb.REPORT_API_VERSION, rb.REPORT_KIND, self.namespace,
                                    label_selector=rb.SELECTOR)
        AVAILABILITY.found()
        return next((dict(i) for i in items if i.get("metadata", {}).get("name") == rb.REPORT_NAME), None)

    def recompute(self, policy: rb.ObjectFacts, models: list[rb.ObjectFacts], now: datetime) -> bool:
        """Bring the Report up to date; True if it was written. Raises KubeError on API failures."""
        kube = context.kube()
        if not AVAILABILITY.usable():
            self.export(rb.build_report(self.namespace, policy, models, None, now)["results"])
            return False
        if not self.cache_known or time.monotonic() - self.read_at >= RESYNC:
            try:
                self.cache = rb.seen(self._read_live())
            except KubeError as exc:
                if not _reports_missing(exc):
                    raise
                AVAILABILITY.missing()
                self.forget()
                self.export(rb.build_report(self.namespace, policy, models, None, now)["results"])
                return False
            self.cache_known, self.read_at = True, time.monotonic()
        started = time.perf_counter()
        desired = rb.build_report(self.namespace, policy, models, self.cache, now)
        self.export(desired["results"])
        if not rb.differs(self.cache, desired):
            return False
        built = time.perf_counter()
        try:
            written = kube.apply(desired)
        except KubeError as exc:
            self.forget()
            if exc.status == 404 and probe(self.namespace) is False:
                return False  # the CRDs went away (said once by probe)
            raise
        WRITES.labels(rb.REPORT_KIND).inc()
        self.cache, self.cache_known = rb.seen(written), True
        self.write_seconds = time.perf_counter() - built
        summary = desired["summary"]
        log.info("Report %s/%s: %s (%d models, %d bytes; computed in %.2fs, written in %.2fs)",
                 self.namespace, rb.REPORT_NAME,
                 ", ".join(f"{v} {k}" for k, v in summary.items() if v) or "no results", len(models),
                 rb.size_bytes(desired), built - started, self.write_seconds)
        return True

    def export(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Set mlsec_compliance_results for this namespace: every result for each rule seen."""
        COMPLIANCE_RESULTS.set(self.namespace, rb.counts_by_rule(results))

    def retire(self) -> None:
        """No longer ours to report (policy gone or superseded, leadership lost)."""
        COMPLIANCE_RESULTS.remove(self.namespace)
        self.forget()


def _policy_facts(body: Mapping[str, Any]) -> rb.ObjectFacts:
    meta = body.get("metadata") or {}
    return rb.ObjectFacts(name=str(meta.get("name")), uid=str(meta.get("uid") or ""),
                          spec=copy.deepcopy(dict(body.get("spec") or {})),
                          status=copy.deepcopy(dict(body.get("status") or {})),
                          ldap_synced_at=rbac.last_success(str(meta.get("namespace"))))


def _model_facts(entries: Iterable[ModelEntry]) -> list[rb.ObjectFacts]:
    # The store's records are replaced, never changed in place: sharing their parts is safe.
    return [rb.ObjectFacts(name=name, uid=uid, spec=spec, status=status)
            for name, uid, spec, status, deleting in entries if not deleting]


def _recompute(state: NamespaceReport, name: str, namespace: str) -> bool:
    """Compute (and write if changed) from the policy as the API server has it now; False if
    it is gone (its successor's task takes over)."""
    body = context.kube().get(POLICY_API, POLICY_KIND, namespace, name)
    if body is None:
        return False
    entries = context.snapshot(model_store.STORE.report_models, namespace)
    return state.recompute(_policy_facts(body), _model_facts(entries), datetime.now(UTC))


# --- the tasks -------------------------------------------------------------------------------------


# One loop starts and stops a task per namespace with an active policy, rather than a kopf daemon
# per policy: each daemon was a task with kopf's handler state and made kopf keep the policy's
# whole body (~28 KiB a namespace with its managed fields; bench/README.md, twelfth run). The
# policy is read when a Report is computed (its status is part of the Report).
async def _reports_loop() -> None:
    tasks: dict[str, tuple[str, asyncio.Event, asyncio.Task[None]]] = {}  # namespace → policy, stop, task
    computing = asyncio.Semaphore(COMPUTING)
    try:
        while True:
            index = leader.policy_index()
            wanted: dict[str, str] = {}
            if index is not None:
                for namespace in sorted(index):
                    active = active_policy_name(index, namespace)
                    if active is not None:
                        wanted[namespace] = active
            for namespace, (name, stop, task) in list(tasks.items()):
                if task.done():  # retired (a policy superseded or gone, leadership lost)
                    del tasks[namespace]
                elif wanted.get(namespace) != name:
                    stop.set()  # it retires first; its successor starts on a later tick
            for namespace, name in wanted.items():
                if namespace not in tasks:
                    stop = asyncio.Event()
                    task = asyncio.create_task(compliance_report(stop, namespace, name, computing),
                                               name=f"compliance-report/{namespace}")
                    tasks[namespace] = (name, stop, task)
            await asyncio.sleep(TICK)
    finally:  # the operator stops: a computation under way ends in its thread
        for _, stop, task in tasks.values():
            stop.set()
            task.cancel()


loops.operator_loop("compliance-reports", _reports_loop)


async def compliance_report(stopped: asyncio.Event, namespace: str, name: str,
                            computing: asyncio.Semaphore) -> None:
    """Keep the namespace's Report current while policy ``name`` is in force (until stopped),
    computing it only while holding ``computing``."""
    store = model_store.STORE
    state = NamespaceReport(namespace)
    loop = asyncio.get_running_loop()
    event = _event(namespace)
    last_run = next_due = 0.0  # newly responsible: trust nothing cached, compute at once
    count = -1  # models in the index at the last computation (deletions do not call the index)
    failures = 0
    try:
        while not stopped.is_set():
            if not event.is_set() and loop.time() < next_due \
                    and store.count(namespace) == count:  # counted, not parsed, every tick
                await nap(stopped, min(TICK, next_due - loop.time()), event)
                continue
            # Let a burst of events settle (at most MAX_DELAY), then keep to MIN_INTERVAL.
            woke = loop.time()
            while not stopped.is_set():
                event.clear()
                await nap(stopped, SETTLE)
                if not event.is_set() or loop.time() - woke >= MAX_DELAY:
                    break
            pause = last_run + max(MIN_INTERVAL, PACE * state.write_seconds) - loop.time()
            if pause > 0:
                await nap(stopped, pause)
            if stopped.is_set():
                break
            event.clear()
            # Parsed in the worker thread and dropped with it: kept in this coroutine's frame,
            # every namespace's parsed models stayed alive between two Reports (15 MiB at 5,000).
            count = store.count(namespace)
            log.debug("recomputing the Report of %s (%d models)", namespace, count)
            try:
                async with computing:
                    await asyncio.to_thread(_recompute, state, name, namespace)
            except Exception as exc:
                failures += 1
                text = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, KubeError) and "being terminated" in exc.message:
                    log.debug("namespace %s is going away: no Report", namespace)
                elif text != state.last_error:
                    log.warning("compliance Report of %s not updated: %s", namespace, text)
                state.last_error = text
                last_run = loop.time()
                next_due = last_run + min(PERIOD, 2.0 ** min(failures, 6))
                continue
            failures, state.last_error = 0, ""
            last_run = loop.time()
            next_due = last_run + PERIOD
    finally:
        state.retire()
