"""Benchmark (issue 11): ModelDeployment create/update/promotion latency through the native admission
policies vs. through the kopf webhook, in the same run.

    .venv/bin/mlsec local up --dir /tmp/env-bench          # or reuse any running environment
    .venv/bin/python -m bench.native_vs_webhook --dir /tmp/env-bench [-n 100 --rounds 3 --releases N]

Four series, interleaved round by round (none, native, webhook, both, none, …) so that the
machine's noise hits all of them alike:

- none:    no native policy bindings, no webhook configurations (the API server alone);
- native:  only the native bindings of crds/ (MutatingAdmissionPolicy stage label, the promotion
           gate and image rules as ValidatingAdmissionPolicies with the namespace's PromotionLedger);
- webhook: only the kopf webhooks (`mlsec run --webhook-port`), failurePolicy Fail;
- both:    native bindings + the webhooks with failurePolicy Ignore (what ships on >= 1.36).

A series is switched on by deleting/re-creating the bindings and the webhook configurations, then
probing until the API server's admission caches (updated asynchronously) show the change: a
dry-run create carries the stage label iff the native MutatingAdmissionPolicy runs and the
requested-by annotation iff the mutating webhook runs, and a dry-run promotion is denied by the
ValidatingAdmissionPolicy, by the webhook, or admitted (none). Three probes in a row must agree.

Each series and round: three bursts of N requests released at once (N clients, aiohttp, the admin
user's token), each timed end to end: (1) create a ModelDeployment at stage staging, (2) a merge
patch of spec.replicas, (3) a promotion (merge patch spec.stage=production) with dryRun=All — fully
admitted, but nothing reaches production, so every series keeps the same state. The promotion is
denied (no approved release in the ledger) except in "none", where it is admitted. Server side:
each request's duration as the API server's audit log records it (requestReceived → response,
µs resolution; the requests carry a user agent per series and op), and, read from /metrics around
every burst, the admission time per request (admission step histograms: mean exact, p99 only to the
buckets' resolution, 5/25/100 ms) and per admission plugin. CPU time of kube-apiserver and of the
operator per request comes from /proc. The goal's verdict: for every op, the server-side p99 (audit
log) of "native" at most 5 ms above that of "none".

The namespaces' PromotionLedger, the native policies' params, holds approved releases of 100 other
models (``--releases N``), none of the run's: the API server's cost of the native policies grows
with that object's size (see mlsec.api.ledger for why it is packed and small).

The operator runs as a non-leader (a Lease held by "bench-holder"): it serves the webhooks with
its indexes filled but reconciles nothing, so no reconcile load distorts the figures. The
namespaces' PromotionLedgers are written by the benchmark with the operator's identity. The
bindings and webhook configurations are restored to what they were at the start, the Lease and
the namespaces deleted. Prints tables and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import common
from mlsec.api.admission import DEPLOYMENT_STAMP as STAMP
from mlsec.api.admission import GATE
from mlsec.api.ledger import pack_releases
from mlsec.clients.kube import KubeError
from mlsec.local import env as local
from mlsec.local import procs

SERIES = ("none", "native", "webhook", "both")
OPS = ("create", "update", "promote")
SEQ = "-1"  # op suffix of the one-at-a-time requests: the service time, without queueing
# series → (native bindings on, webhook failurePolicy or None)
SETUP: dict[str, tuple[bool, str | None]] = {
    "none": (False, None), "native": (True, None), "webhook": (False, "Fail"), "both": (True, "Ignore")}
NATIVE = "app.kubernetes.io/part-of=mlsec-operator"
NATIVE_BINDINGS = "validatingadmissionpolicybindings,mutatingadmissionpolicybindings"
CONFIGS = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
WEBHOOK_NAME = "mlsec.io"
LEASE_NS, LEASE, HOLDER = "mlsec-system", "mlsec-operator-leader", "bench-holder"
LEDGER = "promotion-ledger"
STAGE_LABEL = "mlsec.io/stage"  # set by the native MutatingAdmissionPolicy mlsec-deployment-stamp
REQUESTED_BY = "mlsec.io/requested-by"  # set by the mutating webhook deployment-stamp
PENDING = "bench: no ModelApproval for this release (issue 11 benchmark)"
MAX_PENDING = 1024  # approved releases written into the ledger at most
AGENT = "mlsec-bench-nvw"  # user agent prefix: AGENT/<series>/<op> for the measured requests
GOAL_MS = 5.0

STEP = "apiserver_admission_step_admission_duration_seconds"
PLUGIN = "apiserver_admission_controller_admission_duration_seconds"
# columns of the server table: short name → (admission plugin, step type)
PLUGINS = {"MAP": ("MutatingAdmissionPolicy", "admit"), "VAP": ("ValidatingAdmissionPolicy", "validate"),
           "MAW": ("MutatingAdmissionWebhook", "admit"), "VAW": ("ValidatingAdmissionWebhook", "validate"),
           "quota": ("ResourceQuota", "validate")}
OP_OPERATION = {"create": "CREATE", "update": "UPDATE", "promote": "UPDATE"}
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]
Metrics = dict[tuple[str, Labels], float]


# --- the API server's /metrics ----------------------------------------------------------------------


def parse_metrics(text: str) -> Metrics:
    """The samples of the two admission histograms (buckets, _sum, _count)."""
    out: Metrics = {}
    for line in text.splitlines():
        if not line.startswith((STEP, PLUGIN)) or line.startswith(f"{STEP}_summary"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        out[(name, tuple(sorted(_LABEL.findall(rest))))] = float(value)
    return out


def delta(after: Metrics, before: Metrics) -> Metrics:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def add_into(total: Metrics, part: Metrics) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


class Hist:
    """One histogram (summed over the label sets that match), from metric deltas."""

    def __init__(self, metrics: Metrics, name: str, want: dict[str, str]) -> None:
        self.buckets: dict[float, float] = defaultdict(float)
        self.sum = self.count = 0.0
        for (metric, labels), value in metrics.items():
            d = dict(labels)
            if any(d.get(k) != v for k, v in want.items()):
                continue
            if metric == f"{name}_bucket":
                self.buckets[float("inf") if d["le"] == "+Inf" else float(d["le"])] += value
            elif metric == f"{name}_sum":
                self.sum += value
            elif metric == f"{name}_count":
                self.count += value

    def mean_ms(self) -> float:
        return self.sum / self.count * 1000 if self.count else float("nan")

    def bound_ms(self, q: float) -> float:
        """Upper bound of the bucket the q-quantile falls in (ms): all these histograms can tell."""
        if self.count <= 0:
            return float("nan")
        for bound in sorted(self.buckets):
            if self.buckets[bound] >= q * self.count:
                return bound * 1000
        return float("nan")


def admission_figures(m: Metrics, op: str) -> dict[str, Any]:
    """Admission time per request (all admission plugins: mutating + validating step) and the mean
    per call of the plugins that matter here."""
    operation = OP_OPERATION[op]
    admit = Hist(m, STEP, {"operation": operation, "type": "admit"})
    validate = Hist(m, STEP, {"operation": operation, "type": "validate"})
    out: dict[str, Any] = {
        "admission_count": int(admit.count),  # requests with this operation in the burst's window
        "admission_mean_ms": (admit.sum + validate.sum) / admit.count * 1000 if admit.count else float("nan"),
        # p99 of each step is at most its bucket's bound: the sum bounds the p98 of the total
        "admission_p99_bound_ms": admit.bound_ms(0.99) + validate.bound_ms(0.99),
    }
    for short, (plugin, typ) in PLUGINS.items():
        want = {"name": plugin, "operation": operation, "type": typ}
        out[f"{short}_mean_ms"] = Hist(m, PLUGIN, want).mean_ms()
    return out


# --- objects --------------------------------------------------------------------------------------


def model(namespace: str, name: str) -> dict[str, Any]:
    """The mri-classifier sample (staging, digest-pinned image from the allowed registry)."""
    return common.model_body(namespace, name, replicas=1)


def model_names(rounds: int, n: int) -> list[str]:
    return [f"m-{r}-{i:03d}" for r in range(rounds) for i in range(n)]


def ledger(namespace: str, names: list[str]) -> dict[str, Any]:
    """What the operator would write for the namespace: the policy's image rules and an approved
    release of each of ``names`` — other models than the run's, whose promotions stay denied
    (mlsec.api.ledger, mlsec.gate.adapt.ledger_spec). The native policies' cost grows with this
    object's size (it is their params)."""
    release = {"version": "1", "digest": "sha256:" + "c" * 64, "owner": "alice",
               "dataClassification": "phi", "approvers": ["carol", "dave"]}
    releases = {name: [release] for name in names}
    return {"apiVersion": common.API, "kind": "PromotionLedger",
            "metadata": {"name": LEDGER, "namespace": namespace},
            "spec": {"policy": "default", "enforcement": "enforce",
                     "images": {"allowedRegistries": ["registry.hospital.com/"], "requireDigest": True},
                     "blocked": "", "releases": pack_releases(releases)}}


def lease_body(resource_version: str | None = None) -> dict[str, Any]:
    """A Lease held by someone else, live for a day (mlsec.handlers.leader reads holderIdentity,
    renewTime and leaseDurationSeconds): the operator serves webhooks but never leads."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    meta: dict[str, Any] = {"name": LEASE, "namespace": LEASE_NS}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": HOLDER, "leaseDurationSeconds": 86400, "acquireTime": now,
                     "renewTime": now, "leaseTransitions": 0}}


def bare(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as read from the API server, made creatable again (name, labels, annotations)."""
    meta = obj["metadata"]
    out = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    out["metadata"] = {k: meta[k] for k in ("name", "labels", "annotations") if meta.get(k)}
    return out


def with_failure_policy(config: dict[str, Any], policy: str) -> dict[str, Any]:
    out = bare(config)
    out["webhooks"] = [{**hook, "failurePolicy": policy} for hook in out.get("webhooks") or []]
    return out


def audit_seconds(entry: dict[str, Any]) -> float:
    """requestReceived → ResponseComplete of one audit event (the server's own duration)."""
    start = datetime.fromisoformat(str(entry["requestReceivedTimestamp"]).replace("Z", "+00:00"))
    end = datetime.fromisoformat(str(entry["stageTimestamp"]).replace("Z", "+00:00"))
    return (end - start).total_seconds()


# --- requests -------------------------------------------------------------------------------------


class Outcome:
    """One request: its outcome name, whether it is the expected one, an error text."""

    __slots__ = ("error", "name", "ok", "seconds")

    def __init__(self, name: str, ok: bool, error: str = "", seconds: float = 0.0) -> None:
        self.name, self.ok, self.error, self.seconds = name, ok, error, seconds


def denial_source(text: str) -> str:
    if "ValidatingAdmissionPolicy" in text:
        return "denied:native"
    if "admission webhook" in text:
        return "denied:webhook"
    return "denied:other"


async def burst(n: int, request: Callable[[int], Awaitable[Outcome]]) -> list[Outcome]:
    """``n`` requests released at once; each timed from its send to its full response."""
    start = asyncio.Event()

    async def one(i: int) -> Outcome:
        await start.wait()
        t0 = time.perf_counter()
        try:
            out = await request(i)
        except (aiohttp.ClientError, TimeoutError) as exc:
            out = Outcome("error", False, f"{type(exc).__name__}: {exc}")
        out.seconds = time.perf_counter() - t0
        return out

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)  # every task waiting on the event
    start.set()
    return list(await asyncio.gather(*tasks))


MERGE = {"Content-Type": "application/merge-patch+json"}


# --- the benchmark --------------------------------------------------------------------------------


class Bench:
    def __init__(self, env: local.LocalEnv, workdir: Path, n: int, rounds: int, settle: float,
                 releases: int = 100, sequential: int = 30, bind: frozenset[str] = frozenset()) -> None:
        self.env, self.workdir, self.n, self.rounds, self.settle = env, workdir, n, rounds, settle
        self.bind = bind  # the native policies bound in the native series (empty: all)
        self.sequential = sequential  # per op, series and round, sent one at a time
        self.seq: dict[str, dict[str, list[float]]] = {s: {o: [] for o in OPS} for s in SERIES}
        # approved releases of other models in the ledger (a namespace with models in production)
        self.pending = [f"approved-{i:04d}" for i in range(min(releases, MAX_PENDING))]
        cfg = yaml.safe_load(env.kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.api_ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.token = next(u["user"]["token"] for u in cfg["users"] if u["name"] == "admin")
        self.admin = common.admin_kube(env, AGENT)
        self.namespaces: dict[str, str] = {}
        self.operator: common.Operator | None = None
        self.webhook_port = procs.free_port()
        self.captured = False  # the bindings and webhook configurations of the start were saved
        self.saved_bindings: list[dict[str, Any]] = []
        self.saved_configs: list[dict[str, Any]] = []  # mlsec.io webhook configurations at the start
        self.ours: list[dict[str, Any]] = []  # the running operator's registrations
        self.state: tuple[bool, str | None] | None = None  # (bindings on, webhook failurePolicy)
        # results, per series and op
        self.samples: dict[str, dict[str, list[float]]] = {s: {o: [] for o in OPS} for s in SERIES}
        self.failures: dict[str, dict[str, int]] = {s: dict.fromkeys(OPS, 0) for s in SERIES}
        self.outcomes: dict[str, dict[str, Counter[str]]] = {s: {o: Counter() for o in OPS} for s in SERIES}
        self.errors: dict[str, dict[str, str]] = {s: {} for s in SERIES}
        self.deltas: dict[str, dict[str, Metrics]] = {s: {o: {} for o in OPS} for s in SERIES}
        self.cpu: dict[str, dict[str, dict[str, float]]] = {  # series → op → process → CPU seconds
            s: {o: {"kube-apiserver": 0.0, "operator": 0.0} for o in OPS} for s in SERIES}
        self.switch_seconds: dict[str, list[float]] = {s: [] for s in SERIES}
        self.loads: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.env.kubectl(*args, check=check, input=input).stdout

    def url(self, namespace: str, name: str = "", query: str = "") -> str:
        path = f"{self.server}/apis/{common.API}/namespaces/{namespace}/{common.PLURAL}"
        return f"{path}/{name}{query}" if name else f"{path}{query}"

    def cpu_now(self) -> dict[str, float]:
        out = {"kube-apiserver": common.cpu_seconds(self.env.pids["kube-apiserver"])}
        out["operator"] = common.cpu_seconds(self.operator.pid) if self.operator else 0.0
        return out

    # --- switching the series -----------------------------------------------------------------
    def bindings(self, on: bool) -> None:
        if on:
            body = yaml.safe_dump_all([bare(b) for b in self.saved_bindings
                                       if not self.bind or b["spec"]["policyName"] in self.bind])
            self.kubectl("create", "-f", "-", input=body)
        else:
            self.kubectl("delete", NATIVE_BINDINGS, "-l", NATIVE, "--wait=false")

    def webhooks(self, policy: str | None) -> None:
        for kind in CONFIGS:
            self.kubectl("delete", kind, WEBHOOK_NAME, "--ignore-not-found", "--wait=false")
        if policy is not None:
            body = yaml.safe_dump_all([with_failure_policy(c, policy) for c in self.ours])
            self.kubectl("create", "-f", "-", input=body)

    def switch(self, series: str) -> None:
        want = SETUP[series]
        have = self.state
        if have is None or have[0] != want[0]:
            self.bindings(want[0])
        if have is None or have[1] != want[1]:
            self.webhooks(want[1])
        self.state = want

    async def probe(self, series: str) -> tuple[bool, bool, str]:
        """(stage label set, requested-by annotation set, promotion outcome) right now."""
        assert self.session is not None
        ns = self.namespaces[series]
        async with self.session.post(self.url(ns, query="?dryRun=All"),
                                     json=model(ns, f"probe-{uuid.uuid4().hex[:8]}"),
                                     headers={"User-Agent": f"{AGENT}/probe"}) as resp:
            text = await resp.text()
        if resp.status != 201:
            return False, False, f"create {resp.status}: {text[:200]}"
        meta = json.loads(text)["metadata"]
        outcome = await self.promote_request(ns, "probe", f"{AGENT}/probe")
        return (STAGE_LABEL in (meta.get("labels") or {}), REQUESTED_BY in (meta.get("annotations") or {}),
                outcome.name if outcome.name != "error" else outcome.error)

    async def wait_in_effect(self, series: str, timeout: float = 90) -> float:
        native, policy = SETUP[series]
        stamp = native and (not self.bind or STAMP in self.bind)
        gate = native and (not self.bind or GATE in self.bind)
        # The native stamp (mlsec-deployment-stamp) sets the requester as the webhook does.
        expect = (stamp, stamp or policy is not None,
                  "denied:native" if gate else "denied:webhook" if policy else "admitted")
        t0 = time.monotonic()
        good = 0
        seen: tuple[bool, bool, str] | None = None
        while good < 3:  # three probes in a row: the API server's caches have the change
            seen = await self.probe(series)
            good = good + 1 if seen == expect else 0
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"{series}: not in effect after {timeout:.0f} s: probe {seen}, "
                                 f"want {expect}")
            await asyncio.sleep(0.2)
        took = time.monotonic() - t0
        await asyncio.sleep(self.settle)
        return took

    # --- the requests ---------------------------------------------------------------------------
    async def promote_request(self, ns: str, name: str, agent: str) -> Outcome:
        assert self.session is not None
        async with self.session.patch(self.url(ns, name, "?dryRun=All"),
                                      data=json.dumps({"spec": {"stage": "production"}}),
                                      headers={**MERGE, "User-Agent": agent}) as resp:
            text = await resp.text()
        if resp.status == 200:
            return Outcome("admitted", True)
        if resp.status in (403, 422):
            return Outcome(denial_source(text), True, text[:300])
        return Outcome(f"http {resp.status}", False, text[:300])

    def request(self, op: str, series: str, rnd: int, prefix: str = "m",
                 suffix: str = "") -> Callable[[int], Awaitable[Outcome]]:
        assert self.session is not None
        session, ns, agent = self.session, self.namespaces[series], f"{AGENT}/{series}/{op}{suffix}"

        async def create(i: int) -> Outcome:
            async with session.post(self.url(ns), json=model(ns, f"{prefix}-{rnd}-{i:03d}"),
                                    headers={"User-Agent": agent}) as resp:
                text = await resp.text()
            return Outcome("created", True) if resp.status == 201 else \
                Outcome(f"http {resp.status}", False, text[:300])

        async def update(i: int) -> Outcome:
            async with session.patch(self.url(ns, f"{prefix}-{rnd}-{i:03d}"),
                                     data=json.dumps({"spec": {"replicas": 2}}),
                                     headers={**MERGE, "User-Agent": agent}) as resp:
                text = await resp.text()
            return Outcome("updated", True) if resp.status == 200 else \
                Outcome(f"http {resp.status}", False, text[:300])

        async def promote(i: int) -> Outcome:
            out = await self.promote_request(ns, f"{prefix}-{rnd}-{i:03d}", agent)
            if out.ok and (out.name == "admitted") != (series == "none"):
                out.ok = False  # the gate let a promotion through, or "none" denied one
            return out

        return {"create": create, "update": update, "promote": promote}[op]

    async def metrics(self) -> Metrics:
        assert self.session is not None
        headers = {"User-Agent": f"{AGENT}/metrics"}
        async with self.session.get(f"{self.server}/metrics", headers=headers) as resp:
            resp.raise_for_status()
            return parse_metrics(await resp.text())

    async def warm_up(self, series: str) -> None:
        """N dry-run creates at once: N open connections, the webhook's connections warm."""
        assert self.session is not None
        session, ns = self.session, self.namespaces[series]

        async def dry(i: int) -> Outcome:
            async with session.post(self.url(ns, query="?dryRun=All"), json=model(ns, f"warm-{i:03d}"),
                                    headers={"User-Agent": f"{AGENT}/warm-up"}) as resp:
                await resp.read()
            return Outcome("warm", resp.status == 201)

        await burst(self.n, dry)

    async def series_round(self, series: str, rnd: int) -> None:
        self.switch(series)
        self.switch_seconds[series].append(await self.wait_in_effect(series))
        await self.warm_up(series)
        before = await self.metrics()
        for op in OPS:
            cpu0 = self.cpu_now()
            results = await burst(self.n, self.request(op, series, rnd))
            for proc, seconds in self.cpu_now().items():
                self.cpu[series][op][proc] += seconds - cpu0[proc]
            after = await self.metrics()
            add_into(self.deltas[series][op], delta(after, before))
            before = after
            for r in results:
                self.outcomes[series][op][r.name] += 1
                if r.ok:
                    self.samples[series][op].append(r.seconds)
                else:
                    self.failures[series][op] += 1
                    self.errors[series].setdefault(op, f"{r.name}: {r.error}")
        # the same ops one at a time: what each request costs the server without queueing
        for op in OPS:
            call = self.request(op, series, rnd, prefix="s", suffix=SEQ)
            for i in range(self.sequential):
                [r] = await burst(1, lambda _j, i=i, call=call: call(i))
                if r.ok:
                    self.seq[series][op].append(r.seconds)
                else:
                    self.failures[series][op] += 1
                    self.errors[series].setdefault(op + SEQ, f"{r.name}: {r.error}")
        common.say(f"round {rnd + 1} {series}: " + ", ".join(
            f"{op} p50 {common.percentile(self.samples[series][op], 50) * 1000:.1f} ms" for op in OPS))

    # --- set-up and clean-up ----------------------------------------------------------------------
    def setup(self) -> None:
        common.install_crds(self.env)
        common.wait_clean(self.env)
        self.saved_bindings = yaml.safe_load(
            self.kubectl("get", NATIVE_BINDINGS, "-l", NATIVE, "-o", "yaml"))["items"]
        for kind in CONFIGS:
            got = self.kubectl("get", kind, WEBHOOK_NAME, "-o", "yaml", "--ignore-not-found")
            if got.strip():
                self.saved_configs.append(yaml.safe_load(got))
        self.captured = True
        if not self.saved_bindings:
            raise SystemExit("no native admission policy bindings (crds/) in this environment")
        if self.saved_configs:  # an earlier operator's: they would call a webhook that is gone
            common.say("removing the mlsec.io webhook configurations found (restored at the end)")
            self.webhooks(None)
        operator_kube = common.operator_identity_kube(self.env, self.workdir, f"{AGENT}-ledger")
        self.hold_lease()
        for series in SERIES:
            ns = common.create_namespace(self.admin, f"bench-nvw-{series}")
            self.namespaces[series] = ns
            self.admin.create(common.policy_body(ns))  # the hospital sample, no Vault section
            operator_kube.create(ledger(ns, self.pending))
            common.apply(self.admin, model(ns, "probe"))  # promoted (dry run) by the probes
        extra = ("--webhook-port", str(self.webhook_port), "--webhook-failure-policy", "Fail")
        self.operator = common.Operator(self.env, self.workdir, extra=extra).start()
        deadline = time.monotonic() + 60
        while True:
            configs = [yaml.safe_load(self.kubectl("get", kind, WEBHOOK_NAME, "-o", "yaml", check=False)
                                      or "{}") or {} for kind in CONFIGS]
            if all(f":{self.webhook_port}/" in json.dumps(c) for c in configs):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the operator did not register its webhooks")
            time.sleep(0.5)
        self.ours = configs
        self.state = (True, "Fail")

    def hold_lease(self) -> None:
        lease = self.admin.get("coordination.k8s.io/v1", "Lease", LEASE_NS, LEASE)
        if lease is None:
            self.admin.create(lease_body())
            return
        spec = lease.get("spec") or {}
        renewed = spec.get("renewTime")
        age = 1e9 if not renewed else \
            (datetime.now(UTC) - datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))).total_seconds()
        live = age < float(spec.get("leaseDurationSeconds") or 10)
        if spec.get("holderIdentity") not in (None, "", HOLDER) and live:
            raise SystemExit(f"an operator holds {LEASE_NS}/{LEASE} ({spec.get('holderIdentity')}): it "
                             "would reconcile during the benchmark; stop it first")
        self.admin.replace(lease_body(lease["metadata"]["resourceVersion"]))

    def cleanup(self, keep: bool) -> None:
        if self.operator is not None:
            self.operator.stop()
        problems = []
        if self.captured:
            try:  # the bindings as they were
                self.kubectl("delete", NATIVE_BINDINGS, "-l", NATIVE, "--ignore-not-found")
                if self.saved_bindings:
                    self.kubectl("create", "-f", "-",
                                 input=yaml.safe_dump_all([bare(b) for b in self.saved_bindings]))
            except RuntimeError as exc:
                problems.append(f"restoring the native bindings: {exc}")
            try:  # the webhook configurations as they were (usually: none)
                self.webhooks(None)
                if self.saved_configs:
                    self.kubectl("create", "-f", "-",
                                 input=yaml.safe_dump_all([bare(c) for c in self.saved_configs]))
            except RuntimeError as exc:
                problems.append(f"restoring the webhook configurations: {exc}")
        try:
            lease = self.admin.get("coordination.k8s.io/v1", "Lease", LEASE_NS, LEASE)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == HOLDER:
                self.admin.delete("coordination.k8s.io/v1", "Lease", LEASE_NS, LEASE)
        except KubeError as exc:
            problems.append(f"deleting the Lease: {exc}")
        if not keep:
            common.delete_namespaces(self.admin, self.namespaces.values())
        for p in problems:
            print(f"CLEAN-UP PROBLEM: {p}", file=sys.stderr)

    def leader_lines(self) -> list[str]:
        if self.operator is None or not self.operator.log_file.exists():
            return []
        return [line for line in self.operator.log_file.read_text(errors="replace").splitlines()
                if "became leader" in line]

    async def measure(self) -> None:
        ctx = ssl.create_default_context(cadata=self.api_ca)
        connector = aiohttp.TCPConnector(ssl=ctx, limit=0, keepalive_timeout=600)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                         headers={"Authorization": f"Bearer {self.token}"}) as session:
            self.session = session
            for rnd in range(self.rounds):
                self.loads.append(common.load_average())
                for series in SERIES:
                    await self.series_round(series, rnd)
            self.session = None

    def run(self, keep: bool) -> dict[str, Any]:
        audit = common.AuditTail(self.env)
        apiserver_log = self.env.dir / "logs" / "kube-apiserver.log"
        log_start = apiserver_log.stat().st_size if apiserver_log.exists() else 0
        try:
            self.setup()
            asyncio.run(self.measure())
            self.loads.append(common.load_average())
        finally:
            leader = self.leader_lines()
            events = audit.events(set(self.namespaces.values()))
            self.cleanup(keep)
        closed = 0
        if apiserver_log.exists():
            with apiserver_log.open("rb") as f:
                f.seek(log_start)
                # the API server drops a watch whose client does not keep up (the operator's)
                closed = sum(1 for line in f if b"watcher close due to unresponsiveness" in line)
        return self.report(events, leader, closed)

    # --- the report -------------------------------------------------------------------------------
    def report(self, events: list[dict[str, Any]], leader: list[str], closed: int) -> dict[str, Any]:
        server_s: dict[tuple[str, str], list[float]] = defaultdict(list)
        for e in events:
            parts = str(e.get("userAgent", "")).split("/")
            if len(parts) == 3 and parts[0] == AGENT and parts[1] in SERIES and \
                    parts[2].removesuffix(SEQ) in OPS:
                server_s[(parts[1], parts[2])].append(audit_seconds(e))
        writes = Counter(common.write_key(e) for e in events if common.by_operator(e))

        def figures(xs: list[float]) -> dict[str, float]:
            return {"p50_ms": common.percentile(xs, 50) * 1000, "p99_ms": common.percentile(xs, 99) * 1000,
                    "mean_ms": statistics.fmean(xs) * 1000 if xs else float("nan")}

        e2e: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SERIES}
        server: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SERIES}
        rows, srows = [], []
        for s in SERIES:
            for op in OPS:
                fig: dict[str, Any] = {"n": len(self.samples[s][op]), "failures": self.failures[s][op],
                                       **figures(self.samples[s][op]), "outcomes": dict(self.outcomes[s][op])}
                e2e[s][op] = fig
                rows.append((s, op, fig["n"], fig["failures"], fig["p50_ms"], fig["p99_ms"], fig["mean_ms"],
                             " ".join(f"{k}={v}" for k, v in sorted(fig["outcomes"].items()))))
                sent = max(1, fig["n"] + fig["failures"])
                sv = {"n": len(server_s[(s, op)]), **figures(server_s[(s, op)]),
                      **admission_figures(self.deltas[s][op], op),
                      "apiserver_cpu_ms": self.cpu[s][op]["kube-apiserver"] * 1000 / sent,
                      "operator_cpu_ms": self.cpu[s][op]["operator"] * 1000 / sent}
                server[s][op] = sv
                srows.append((s, op, sv["n"], sv["p50_ms"], sv["p99_ms"], sv["admission_mean_ms"],
                              sv["admission_p99_bound_ms"], *(sv[f"{short}_mean_ms"] for short in PLUGINS),
                              sv["apiserver_cpu_ms"], sv["operator_cpu_ms"]))

        def ratio(a: float, b: float) -> float:
            return a / b if b and b == b and a == a else float("nan")

        def pooled(s: str) -> list[float]:
            return [x for op in OPS for x in self.samples[s][op]]

        ratios = {op: {q: ratio(e2e["webhook"][op][f"{q}_ms"], e2e["native"][op][f"{q}_ms"])
                       for q in ("p50", "p99")} for op in OPS}
        ratios["all"] = {f"p{q}": ratio(common.percentile(pooled("webhook"), q),
                                        common.percentile(pooled("native"), q)) for q in (50, 99)}
        nat, none = server["native"], server["none"]
        overhead = {op: {
            "e2e_p50_ms": e2e["native"][op]["p50_ms"] - e2e["none"][op]["p50_ms"],
            "e2e_p99_ms": e2e["native"][op]["p99_ms"] - e2e["none"][op]["p99_ms"],
            "server_p50_ms": nat[op]["p50_ms"] - none[op]["p50_ms"],
            "server_p99_ms": nat[op]["p99_ms"] - none[op]["p99_ms"],
            "admission_mean_ms": nat[op]["admission_mean_ms"] - none[op]["admission_mean_ms"],
            "apiserver_cpu_ms": nat[op]["apiserver_cpu_ms"] - none[op]["apiserver_cpu_ms"],
        } for op in OPS}
        # One at a time: the server-side overhead itself, without 100 requests queueing for 2 CPUs.
        seq_rows, seq_overhead = [], {}
        for op in OPS:
            for s in SERIES:
                xs = server_s[(s, op + SEQ)]
                seq_rows.append((s, op, len(xs), *figures(xs).values(),
                                 *figures(self.seq[s][op]).values()))
            seq_overhead[op] = {q: figures(server_s[("native", op + SEQ)])[q]
                                - figures(server_s[("none", op + SEQ)])[q] for q in ("p50_ms", "p99_ms")}
        seq_worst = max(OPS, key=lambda op: seq_overhead[op]["p99_ms"])
        seq_met = seq_overhead[seq_worst]["p99_ms"] <= GOAL_MS
        worst = max(OPS, key=lambda op: overhead[op]["server_p99_ms"])
        worst_server = overhead[worst]["server_p99_ms"]
        met = worst_server <= GOAL_MS and not any(self.failures["native"].values())

        print(f"\nNative admission policies vs. kopf webhook (issue 11): {self.rounds} rounds x "
              f"{len(SERIES)} series x {len(OPS)} bursts of {self.n} concurrent requests; "
              f"{os.cpu_count()} CPUs; load average at each round's start and at the end: "
              f"{' | '.join(self.loads)}; the PromotionLedger (the native policies' params) lists "
              f"{len(self.pending)} approved releases of other models\n")
        print(common.table("End to end (client, aiohttp), ms",
                           ["series", "op", "n", "failures", "p50", "p99", "mean", "outcomes"], rows))
        print()
        print(common.table(
            "Server side, ms: request = the API server's audit log (received -> response complete); "
            "admission = mutating + validating admission steps from /metrics (mean exact; p99 only as "
            "the histogram buckets' upper bounds); MAP/VAP/MAW/VAW/quota = mean per call of the admission "
            "plugins MutatingAdmissionPolicy, ValidatingAdmissionPolicy, Mutating-/"
            "ValidatingAdmissionWebhook, ResourceQuota; CPU = CPU time of kube-apiserver and of the "
            "operator per request during the burst (/proc: what waiting does not inflate)",
            ["series", "op", "n", "req p50", "req p99", "adm mean", "adm p99 <=", *PLUGINS,
             "apiserver CPU", "operator CPU"], srows))
        print()
        print(common.table("webhook / native, end to end", ["op", "p50 ratio", "p99 ratio"],
                           [(op, r["p50"], r["p99"]) for op, r in ratios.items()]))
        print()
        print(common.table("native - none: what the native policies add, ms",
                           ["op", "e2e p50", "e2e p99", "server p50", "server p99", "admission mean",
                            "apiserver CPU"],
                           [(op, o["e2e_p50_ms"], o["e2e_p99_ms"], o["server_p50_ms"], o["server_p99_ms"],
                             o["admission_mean_ms"], o["apiserver_cpu_ms"]) for op, o in overhead.items()]))
        print()
        print(common.table(
            f"One request at a time ({self.sequential} per op, series and round), ms: server = the API "
            "server's audit log, e2e = the client",
            ["series", "op", "n", "server p50", "server p99", "server mean", "e2e p50", "e2e p99",
             "e2e mean"],
            seq_rows))
        print()
        print(common.table("native - none, one at a time: the server-side overhead without queueing, ms",
                           ["op", "server p50", "server p99"],
                           [(op, o["p50_ms"], o["p99_ms"]) for op, o in seq_overhead.items()]))
        print()
        print("seconds until a switch was in effect (probe, max): "
              + ", ".join(f"{s} {max(self.switch_seconds[s] or [0]):.1f}" for s in SERIES))
        print("operator writes in the benchmark namespaces: "
              + (", ".join(f"{k} x{v}" for k, v in sorted(writes.items())) or "none")
              + " (not the leader: no reconcile; kopf still sets its finalizer on the policies)"
              + ("" if not leader else f"; BUT IT BECAME LEADER: {leader[0]}"))
        print(f"watches the API server closed as unresponsive during the run: {closed}")
        if self.bind:
            print(f"native series with only these policies bound: {', '.join(sorted(self.bind))}")
        for s in SERIES:
            for op, err in self.errors[s].items():
                print(f"first failure {s}/{op}: {err}")
        print(f"goal: native p99 server-side overhead <= {GOAL_MS:g} ms over none: worst op {worst} "
              f"{worst_server:+.1f} ms -> {'MET' if met else 'MISSED'} (end to end p99: "
              f"{overhead[worst]['e2e_p99_ms']:+.1f} ms; mean admission time added: "
              f"{overhead[worst]['admission_mean_ms']:+.2f} ms) at {self.n} concurrent clients; one request "
              f"at a time: worst op {seq_worst} {seq_overhead[seq_worst]['p99_ms']:+.1f} ms -> "
              f"{'MET' if seq_met else 'MISSED'}")
        return {"benchmark": "native_vs_webhook", "clients": self.n, "rounds": self.rounds,
                "ledger_releases": len(self.pending), "bound": sorted(self.bind) or "all",
                "cpus": os.cpu_count(), "load_average": self.loads, "end_to_end": e2e, "server": server,
                "ratio_webhook_native": ratios, "overhead_native_minus_none": overhead,
                "operator_writes": dict(writes), "operator_led": bool(leader),
                "watches_closed": closed,
                "one_at_a_time": {"overhead_native_minus_none": seq_overhead,
                                  "server": {f"{s}/{op}": figures(server_s[(s, op + SEQ)])
                                             for s in SERIES for op in OPS}},
                "goal": {"server_p99_overhead_ms": worst_server, "worst_op": worst, "max_ms": GOAL_MS,
                         "met": met, "one_at_a_time_p99_overhead_ms": seq_overhead[seq_worst]["p99_ms"],
                         "one_at_a_time_met": seq_met}}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    common.add_env_args(parser)
    parser.add_argument("-n", "--clients", type=int, default=100, help="requests released at once (100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four series (3)")
    parser.add_argument("--sequential", type=int, default=30,
                        help="requests per op, series and round sent one at a time (30)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait once a switch is seen in effect (1)")
    parser.add_argument("--bind", default="",
                        help="comma-separated native policies to bind in the native series (default "
                        "all): what each costs, e.g. --bind mlsec-image-rules,mlsec-image-rules-audit")
    parser.add_argument("--releases", type=int, default=100,
                        help="approved releases of other models in the PromotionLedger (default 100, "
                        f"at most {MAX_PENDING})")
    args = parser.parse_args()
    env = common.load_env(args.dir)
    with tempfile.TemporaryDirectory(prefix="mlsec-bench-nvw-") as tmp:
        result = Bench(env, Path(tmp), args.clients, args.rounds, args.settle, args.releases,
                       args.sequential, frozenset(filter(None, args.bind.split(",")))).run(args.keep)
    common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
