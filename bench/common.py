"""What the benchmarks share: the environment, an operator process, objects, the audit log, output.

Every benchmark runs against a running local environment (``mlsec local up --dir DIR``), starts
its own ``mlsec run`` as the operator's ServiceAccount (the identity and RBAC of a real install),
works in namespaces of its own (``bench-*``, deleted at the end unless ``--keep``), prints a table
and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from mlsec.clients.kube import Kube, KubeError, load_api_client, widen_pool
from mlsec.local import env as local
from mlsec.local import procs, slapd

REPO = Path(__file__).resolve().parents[1]
API = "mlsec.io/v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
BENCH_LABEL = "mlsec.io/bench"
# User agents (and field managers) of the operator's own writes, as the API server's audit log
# shows them: our client (mlsec.clients.kube.USER_AGENT) and kopf's (progress annotations,
# finalizers, events).
OPERATOR_AGENTS = ("mlsec-operator", "kopf")
OPERATOR_MANAGERS = ("mlsec-operator", "kopf")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


# --- arguments and the environment ----------------------------------------------------------------


def add_env_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=os.environ.get("MLSEC_LOCAL_DIR"),
                        help="directory of a running local environment (default: $MLSEC_LOCAL_DIR, "
                        "else mlsec local's default)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark namespaces")


def load_env(directory: Path | None) -> local.LocalEnv:
    env = local.LocalEnv.load(directory)
    not_ready = [k for k, ok in env.readiness().items() if not ok]
    if not_ready:
        raise SystemExit(f"local environment in {env.dir} is not ready: {', '.join(not_ready)} "
                         "(start one: mlsec local up --dir DIR)")
    return env


def install_crds(env: local.LocalEnv, timeout: float = 120) -> None:
    """Our CRDs and native admission policies, from crds/ as a user installs them; then wait until
    the API server serves every kind the operator watches (after a fresh install it answers 429
    "storage is (re)initializing" for a while; an operator started then was seen to stall for
    more than five minutes, see bench/README.md)."""
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    env.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l",
                "app.kubernetes.io/part-of=mlsec-operator")
    kube = admin_kube(env)
    kinds = [("mlsec.io/v1alpha1", k) for k in ("ModelDeployment", "MLSecurityPolicy", "ModelApproval",
                                                "PromotionLedger")]
    from mlsec.builders.children import CHILD_KINDS

    deadline = time.monotonic() + timeout
    for api_version, kind in [*kinds, *CHILD_KINDS]:
        while True:
            try:
                kube.list(api_version, kind, "default")
                break
            except KubeError as exc:
                if time.monotonic() > deadline:
                    raise
                say(f"waiting for the API server to serve {kind}: {exc.status} {exc.message}")
                time.sleep(1)


def wait_clean(env: local.LocalEnv, timeout: float = 900) -> None:
    """Wait until no benchmark namespace of an earlier run is left: the namespace controller
    deleting thousands of children, and the operator's watches seeing each deletion, would be
    measured along with this run. Those of a run killed before its clean-up are deleted first:
    its models would be counted as this run's (one environment serves one benchmark at a time)."""
    kube = admin_kube(env)
    deadline = time.monotonic() + timeout
    stale = [n["metadata"]["name"] for n in kube.list("v1", "Namespace", label_selector=f"{BENCH_LABEL}=true")
             if (n.get("status") or {}).get("phase") != "Terminating"]
    if stale:
        say(f"deleting {len(stale)} namespaces an earlier run left behind")
        delete_namespaces(kube, stale)
    while True:
        namespaces = kube.list("v1", "Namespace", label_selector=f"{BENCH_LABEL}=true")
        left = [n["metadata"]["name"] for n in namespaces]
        if not left:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"namespaces of an earlier run are still being deleted: {', '.join(left)}")
        say(f"waiting for {len(left)} namespaces of an earlier run to be deleted")
        time.sleep(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admin_kube(env: local.LocalEnv, agent: str = "mlsec-bench") -> Kube:
    """A client as the cluster admin (a user applying ModelDeployments)."""
    api = load_api_client(str(env.kubeconfig), "admin")
    api.user_agent = agent
    widen_pool(api)
    return Kube(api, field_manager=agent)


def operator_identity_kube(env: local.LocalEnv, workdir: Path, agent: str) -> Kube:
    """A plain client with the operator's ServiceAccount (same RBAC and admission as the operator)
    but its own user agent and field manager, so its writes are never counted as the operator's."""
    kubeconfig = local.operator_kubeconfig(env, workdir / "baseline.kubeconfig")
    api = load_api_client(str(kubeconfig), "operator")
    api.user_agent = agent
    widen_pool(api)
    return Kube(api, field_manager=agent)


# --- objects ----------------------------------------------------------------------------------------


def _sample(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "manifests/samples" / name).read_text()))


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def policy_body(namespace: str, env: local.LocalEnv | None = None, *,
                vault_addr: str | None = None) -> dict[str, Any]:
    """The hospital sample policy; with ``env`` its LDAP section points at the environment's
    slapd (the Secrets come from :func:`setup_namespace`), so LDAP → RBAC syncs really run. Without
    it the LDAP sync fails at once (no bind Secret) and never contacts a directory."""
    doc = _sample("policy-hospital.yaml")
    doc["metadata"] = {"name": "default", "namespace": namespace}
    if env is not None:
        doc["spec"]["ldap"].update({"url": env.ldap_url, "bindDN": slapd.ADMIN_DN,
                                    "userSearchBase": slapd.USERS_OU, "groupSearchBase": slapd.GROUPS_OU})
    if vault_addr:
        doc["spec"]["vault"].update({"address": vault_addr, "requireAuditDevice": False})
        doc["spec"]["vault"].pop("ldapAuthMount", None)
    else:
        doc["spec"].pop("vault", None)
    return doc


def setup_namespace(kube: Kube, env: local.LocalEnv, prefix: str, *,
                    vault_addr: str | None = None) -> str:
    """A fresh namespace with the LDAP bind and CA Secrets and the policy (LDAP: local slapd)."""
    ns = create_namespace(kube, prefix)
    for name, key, value in (("ldap-bind", "password", env.ldap_admin_password.encode()),
                             ("ldap-ca", "ca.crt", env.ca_file.read_bytes())):
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                     "data": {key: base64.b64encode(value).decode()}})
    kube.create(policy_body(ns, env, vault_addr=vault_addr))
    return ns


def model_body(namespace: str, name: str, *, version: str = "3", replicas: int = 2,
               vault: bool = False) -> dict[str, Any]:
    """The mri-classifier sample as ``name`` (staging; without Vault secrets unless ``vault``)."""
    doc = _sample("modeldeployment-mri-classifier.yaml")
    doc["metadata"] = {"name": name, "namespace": namespace}
    spec = doc["spec"]
    spec.update({"model": name, "version": version, "stage": "staging", "replicas": replicas,
                 "image": f"registry.hospital.com/ml/{name}@{digest(name + version)}"})
    if vault:
        spec["secrets"] = [{"name": "hyperparams", "path": f"secret/data/ml-models/{name}"},
                           {"name": "db", "path": f"database/creds/{name}-role"}]
    else:
        spec.pop("secrets", None)
        spec.pop("tls", None)
    return copy.deepcopy(doc)


def create_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": name, "labels": {BENCH_LABEL: "true"}}})
    return name


def delete_namespaces(kube: Kube, namespaces: Iterable[str]) -> None:
    """Delete (without waiting). The operator is stopped by then, so the finalizers it keeps
    (models using Vault; every policy: kopf puts one on objects with daemons and timers) are
    stripped first, or the namespace would stay Terminating for good."""
    for ns in namespaces:
        try:
            for kind in (KIND, "MLSecurityPolicy", "ModelApproval"):
                for item in kube.list(API, kind, ns):
                    if item["metadata"].get("finalizers"):
                        kube.patch(API, kind, ns, item["metadata"]["name"],
                                   {"metadata": {"finalizers": None}})
            kube.delete("v1", "Namespace", None, ns)
        except KubeError as exc:
            print(f"cleanup of {ns}: {exc}", file=sys.stderr)


# Admission refuses for a moment after the CRDs were (re)installed, until the API server has
# resolved the admission policies' paramKind; such refusals are retried, nothing else.
_TRANSIENT = ("failed to configure policy", "no params found", "failed to find resource")


def _retrying(call: Callable[[], dict[str, Any]], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KubeError as exc:
            transient = exc.status in (429, 500, 503) or (
                exc.status == 422 and any(t in exc.message for t in _TRANSIENT))
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def apply(kube: Kube, body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply as a user, retrying transient admission refusals."""
    return _retrying(lambda: kube.apply(body))


def create_all(kube: Kube, bodies: Sequence[dict[str, Any]], threads: int = 8) -> float:
    """Create ``bodies`` with ``threads`` parallel requests (an existing object counts as
    created); return the seconds it took."""
    started = time.monotonic()

    def one(body: dict[str, Any]) -> None:
        def create() -> dict[str, Any]:
            try:
                return kube.create(body)
            except KubeError as exc:
                if exc.status == 409:
                    return {}
                raise

        _retrying(create)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, bodies))
    return time.monotonic() - started


def is_ready(obj: dict[str, Any] | None, generation: int | None = None) -> bool:
    """Ready=True for the object's current generation (or at least ``generation``)."""
    if not obj:
        return False
    status = obj.get("status") or {}
    want = generation if generation is not None else (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if want is None or observed is None or observed < want:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               and (c.get("observedGeneration") or 0) >= want for c in status.get("conditions") or [])


# --- watching readiness ---------------------------------------------------------------------------


class ReadyWatch:
    """Watch ModelDeployments of the benchmark namespaces; record when each (namespace, name)
    first reached Ready=True with observedGeneration >= each generation seen."""

    def __init__(self, env: local.LocalEnv, namespaces: Callable[[], set[str]]) -> None:
        self.api = kubernetes.client.CustomObjectsApi(load_api_client(str(env.kubeconfig), "admin"))
        self.namespaces = namespaces
        self.ready_gen: dict[tuple[str, str], int] = {}  # highest generation seen Ready
        self.ready_at: dict[tuple[str, str, int], float] = {}  # (ns, name, generation) -> time
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)
        self._w: kubernetes.watch.Watch | None = None

    def start(self) -> ReadyWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._w is not None:
            self._w.stop()

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            self._w = kubernetes.watch.Watch()
            try:
                kw: dict[str, Any] = {"timeout_seconds": 60, "allow_watch_bookmarks": False}
                if rv:
                    kw["resource_version"] = rv
                for event in self._w.stream(self.api.list_cluster_custom_object, "mlsec.io", "v1alpha1",
                                            PLURAL, **kw):
                    now = time.monotonic()
                    obj = event["object"]
                    meta = obj.get("metadata") or {}
                    rv = meta.get("resourceVersion") or rv
                    if meta.get("namespace") not in self.namespaces():
                        continue
                    self._seen(meta, obj, now)
                    if self._stop.is_set():
                        break
            except kubernetes.client.ApiException as exc:
                if exc.status == 410:
                    rv = None
                time.sleep(0.2)
            except Exception:  # connection trouble: watch again
                time.sleep(0.2)

    def _seen(self, meta: dict[str, Any], obj: dict[str, Any], now: float) -> None:
        status = obj.get("status") or {}
        observed = status.get("observedGeneration")
        if observed is None or not is_ready(obj, observed):
            return
        key = (meta["namespace"], meta["name"])
        with self.cond:
            prev = self.ready_gen.get(key, 0)
            if observed > prev:
                for g in range(prev + 1, observed + 1):
                    self.ready_at.setdefault((*key, g), now)
                self.ready_gen[key] = observed
                self.cond.notify_all()

    def count_ready(self, generation: int = 1) -> int:
        with self.cond:
            return sum(1 for g in self.ready_gen.values() if g >= generation)

    def resync(self) -> None:
        """Read every model once (a watch event can be lost across a reconnect)."""
        for ns in self.namespaces():
            items = self.api.list_namespaced_custom_object("mlsec.io", "v1alpha1", ns, PLURAL)["items"]
            for obj in items:
                self._seen(obj["metadata"], obj, time.monotonic())

    def wait_count(self, n: int, timeout: float, generation: int = 1,
                   progress: Callable[[int], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        last_report = last_change = 0.0
        before = -1
        while True:
            with self.cond:
                have = sum(1 for g in self.ready_gen.values() if g >= generation)
                if have >= n:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if progress and time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    progress(have)
                if have != before:
                    before, last_change = have, time.monotonic()
                self.cond.wait(min(left, 1.0))
            if time.monotonic() - last_change > 30:  # stalled: look instead of waiting
                self.resync()
                last_change = time.monotonic()


# --- the operator process -------------------------------------------------------------------------


@dataclass
class Operator:
    """``mlsec run`` as a child process, as the operator's ServiceAccount."""

    env: local.LocalEnv
    workdir: Path
    extra: tuple[str, ...] = ()
    kopf: str = ""  # kopf settings to override (bench.kopf_variant), e.g. "execution.max_workers=32"
    environ: dict[str, str] = field(default_factory=dict)  # for the operator process only
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=procs.free_port)
    health_port: int = field(default_factory=procs.free_port)

    @property
    def log_file(self) -> Path:
        return self.workdir / "operator.log"

    def start(self, timeout: float = 90) -> Operator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = local.operator_kubeconfig(self.env, self.workdir / "operator.kubeconfig")
        environ = {**os.environ, "KUBECONFIG": str(kubeconfig), "VAULT_ADDR": self.env.vault_addr}
        environ.pop("VAULT_TOKEN", None)
        environ["MLSEC_BENCH_KOPF"] = self.kopf
        environ.update(self.environ)
        module = "bench.kopf_variant" if self.kopf or environ.get("MLSEC_BENCH_TRACEMALLOC") \
            or environ.get("MLSEC_BENCH_OBJECTS") or environ.get("MLSEC_BENCH_PEAKS") else "mlsec"
        cmd = [sys.executable, "-m", module, "run", "--metrics-port", str(self.metrics_port),
               "--health-port", str(self.health_port), "--bind-address", "127.0.0.1",
               "--audit-file", str(self.workdir / "audit.jsonl"), *self.extra]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ,
                                         start_new_session=True, cwd=REPO)
        procs.wait_for("operator", self.healthy, timeout, self.proc.pid, self.log_file)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def rss_mib(self) -> float:
        """VmRSS of the operator process, from /proc/<pid>/status."""
        return rss_mib(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Operator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample ``name{labels...}`` in ``text`` (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


# --- the API server's audit log -------------------------------------------------------------------


class AuditTail:
    """Write events in the API server's audit log from the moment of construction on (follows
    the log across one rotation: kube-apiserver keeps one backup, see --audit-log-maxbackup)."""

    def __init__(self, env: local.LocalEnv) -> None:
        self.path = env.audit_log
        st = self.path.stat()
        self.inode, self.offset = st.st_ino, st.st_size

    def _chunks(self) -> Iterator[bytes]:
        st = self.path.stat()
        if st.st_ino != self.inode:  # rotated since: the rest of the old file is the backup
            for backup in sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}")):
                if backup.stat().st_ino == self.inode:
                    with backup.open("rb") as f:
                        f.seek(self.offset)
                        yield f.read()
            start = 0
        else:
            start = self.offset
        with self.path.open("rb") as f:
            f.seek(start)
            yield f.read()

    def events(self, namespaces: set[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for chunk in self._chunks():
            for line in chunk.splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written right now
                if entry.get("verb") not in WRITE_VERBS:
                    continue
                ns = (entry.get("objectRef") or {}).get("namespace")
                if namespaces is not None and ns not in namespaces:
                    continue
                out.append(entry)
        return out


def by_operator(entry: dict[str, Any]) -> bool:
    """A write by the operator: its user agents, or its field managers in the request URI."""
    agent = str(entry.get("userAgent", ""))
    uri = str(entry.get("requestURI", ""))
    return agent.startswith(OPERATOR_AGENTS) or any(f"fieldManager={m}" in uri for m in OPERATOR_MANAGERS)


def write_key(entry: dict[str, Any]) -> str:
    ref = entry.get("objectRef") or {}
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{entry.get('verb')} {ref.get('resource')}{sub}"


def stamp(entry: dict[str, Any]) -> float:
    """requestReceivedTimestamp as epoch seconds."""
    text = str(entry.get("requestReceivedTimestamp", ""))
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- figures and output ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
    return ordered[k]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, ""]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def emit(result: dict[str, Any]) -> None:
    """The final JSON line of a benchmark (``python -m bench`` reads it); inf/nan become null."""
    print(json.dumps(_finite(result), sort_keys=True), flush=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
