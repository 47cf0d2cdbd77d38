"""Benchmark: latency of the kopf admission webhooks, straight and through the API server.

    .venv/bin/mlsec local up --dir /tmp/env-bench          # or reuse any running environment
    .venv/bin/python bench/webhook_latency.py --dir /tmp/env-bench

Starts an operator (`mlsec run --webhook-port …`, as its own ServiceAccount) against the local
environment, then measures, each as rounds of N requests sent at once:

1. AdmissionReview POSTs straight to the webhook over TLS: the promotion gate deciding a
   staging → production request (the full decision: policy, approvals index, rules, audit record),
   and the approver stamp (mutating);
   — each also one request at a time, for the service time without queueing;
2. ModelDeployment creates through the API server with our webhooks registered (stamp + gate), and
   the same without them (the webhook configurations removed for that series): the difference is
   what the webhook hop costs a user;
3. the same creates as installed on a cluster that serves MutatingAdmissionPolicy: the native
   policies bound and the operator restarted with failure policy auto (its webhooks a second
   layer, the requester stamped by the API server, so a staging create calls no webhook).

The native admission policies' bindings (crds/) are removed for the first two and restored for
the third, so the second series measures the webhooks alone. Besides latencies, each series reports the
operator's CPU time per request (from /proc), which a busy machine does not distort. Prints a
table and, last, one JSON line. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from mlsec.local import env as local
from mlsec.local import procs

if not __package__:  # run as a file: bench/ is on sys.path, the repository is not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common as c

REPO = Path(__file__).resolve().parents[1]
API = "mlsec.io/v1alpha1"
DIGEST = "sha256:" + "a" * 64
NATIVE = "app.kubernetes.io/part-of=mlsec-operator"
NATIVE_BINDINGS = "validatingadmissionpolicybindings,mutatingadmissionpolicybindings"
CONFIGS = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
SHIPPED = "API create, as shipped (native + webhooks Ignore)"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(name: str, samples: list[float], failures: int, cpu: float | None = None,
            client_cpu: float | None = None) -> dict[str, Any]:
    out = {"series": name, "n": len(samples), "failures": failures,
           "p50_ms": round(pct(samples, 50) * 1000, 2), "p99_ms": round(pct(samples, 99) * 1000, 2),
           "mean_ms": round(statistics.fmean(samples) * 1000, 2), "max_ms": round(max(samples) * 1000, 2)}
    if cpu is not None:  # the operator's CPU seconds over the series: robust to a busy machine
        out["operator_cpu_ms_per_request"] = round(cpu * 1000 / max(1, len(samples) + failures), 2)
    if client_cpu is not None:  # this process's: the client shares the machine's two CPUs
        out["client_cpu_ms_per_request"] = round(client_cpu * 1000 / max(1, len(samples) + failures), 2)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def burst(session: aiohttp.ClientSession, n: int, request: Any) -> tuple[list[float], int]:
    """``n`` requests at once; each one's latency (seconds) and how many failed."""
    start = asyncio.Event()

    async def one(i: int) -> float | None:
        await start.wait()
        t0 = time.perf_counter()
        ok = await request(session, i)
        return time.perf_counter() - t0 if ok else None

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)  # all connected and waiting
    start.set()
    results = await asyncio.gather(*tasks)
    return [r for r in results if r is not None], sum(1 for r in results if r is None)


def review(uid: str, user: str, groups: list[str], namespace: str, resource: str, operation: str,
           obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "mlsec.io", "version": "v1alpha1", "kind": obj["kind"]},
        "resource": {"group": "mlsec.io", "version": "v1alpha1", "resource": resource},
        "requestKind": {"group": "mlsec.io", "version": "v1alpha1", "kind": obj["kind"]},
        "name": obj["metadata"]["name"], "namespace": namespace, "operation": operation,
        "userInfo": {"username": user, "groups": groups}, "object": obj, "oldObject": old,
        "dryRun": False, "options": {}}}


def model(namespace: str, name: str, stage: str = "staging") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": name, "version": "3", "image": f"registry.hospital.com/ml/{name}@{DIGEST}",
                     "stage": stage, "dataClassification": "phi", "owner": "alice", "replicas": 1,
                     "port": 8080}}


def speed_probe() -> float:
    """CPU milliseconds this process takes for a fixed piece of Python work (an AdmissionReview's
    JSON both ways and its SHA-256, 2,000 times): how fast the shared machine runs at the moment.
    The operator's CPU per request moves with it, so a slow phase shows here, not as a regression."""
    doc = json.dumps(review("probe", "bob", ["ml_engineers"], "ns", "modeldeployments", "UPDATE",
                            model("ns", "probe", "production"), model("ns", "probe"))).encode()
    t0 = time.process_time()
    for _ in range(2000):
        hashlib.sha256(json.dumps(json.loads(doc)).encode()).hexdigest()
    return (time.process_time() - t0) * 1000


class Lean:
    """The direct series' client: HTTP/1.1 over TLS on connections opened beforehand, each request
    encoded before its burst, the answer read by Content-Length. Its own CPU per request is a
    fraction of the webhook's; aiohttp's client costs about as much as the server it measures,
    on the same two CPUs and in one event loop that both sends and reads, so a burst measured
    with it is mostly the client's own queue (both are reported)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, n: int) -> None:
        self.conns = [await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx) for _ in range(n)]

    async def burst(self, path: str, bodies: list[bytes]) -> tuple[list[float], int]:
        head = f"POST /{path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
        payloads = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]

        async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                      payload: bytes) -> float | None:
            reader, writer = conn
            t0 = time.perf_counter()
            writer.write(payload)
            headers = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", headers)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            ok = headers.startswith(b"HTTP/1.1 200") and b'"allowed"' in body
            return time.perf_counter() - t0 if ok else None

        results = await asyncio.gather(*(one(c, p) for c, p in zip(self.conns, payloads, strict=True)))
        return [r for r in results if r is not None], sum(1 for r in results if r is None)

    def close(self) -> None:
        for _, writer in self.conns:
            writer.close()


class LeanH2:
    """The direct series over HTTP/2, as the API server calls a webhook (client-go's transport
    multiplexes every call to a host on one connection): one TLS connection, each burst's frames
    encoded before it and written at once, a stream's time taken when its END_STREAM arrives."""

    def __init__(self, port: int, cadata: str) -> None:
        import h2.config
        import h2.connection

        self.port = port
        self.ctx = ssl.create_default_context(cadata=cadata)  # its own: ALPN h2 only
        self.ctx.set_alpn_protocols(["h2"])
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx)
        ssl_obj = self.writer.get_extra_info("ssl_object")
        if ssl_obj is None or ssl_obj.selected_alpn_protocol() != "h2":
            raise SystemExit("the webhook did not negotiate HTTP/2")
        self.conn.initiate_connection()
        self.conn.update_settings({0x4: 2**31 - 1})  # SETTINGS_INITIAL_WINDOW_SIZE: no stalls
        self.conn.increment_flow_control_window(2**31 - 1 - 65535)
        self.writer.write(self.conn.data_to_send())
        # The server's SETTINGS and window before the first burst: a burst is ~150 KB of bodies.
        while self.conn.outbound_flow_control_window < 1 << 20:
            self.conn.receive_data(await self.reader.read(65536))
            self.writer.write(self.conn.data_to_send())

    async def burst(self, path: str, bodies: list[bytes]) -> tuple[list[float], int]:
        import h2.events

        assert self.reader is not None and self.writer is not None
        started: list[int] = []
        for body in bodies:
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, [(":method", "POST"), (":path", f"/{path}"),
                                         (":scheme", "https"), (":authority", f"127.0.0.1:{self.port}"),
                                         ("content-type", "application/json"),
                                         ("content-length", str(len(body)))])
            self.conn.send_data(sid, body, end_stream=True)
            started.append(sid)
        frames = self.conn.data_to_send()
        status: dict[int, bytes] = {}
        data: dict[int, bytes] = {sid: b"" for sid in started}
        done: dict[int, float] = {}
        t0 = time.perf_counter()
        self.writer.write(frames)
        while len(done) < len(started):
            chunk = await self.reader.read(65536)
            now = time.perf_counter()
            if not chunk:
                break
            for ev in self.conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    status[ev.stream_id] = dict(ev.headers).get(b":status", b"")
                elif isinstance(ev, h2.events.DataReceived):
                    data[ev.stream_id] += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done[ev.stream_id] = now
                elif isinstance(ev, h2.events.StreamReset):
                    done[ev.stream_id] = float("nan")
            if out := self.conn.data_to_send():
                self.writer.write(out)
        ok = [done[sid] - t0 for sid in started
              if sid in done and status.get(sid) == b"200" and b'"allowed"' in data[sid]]
        return ok, len(started) - len(ok)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Bench:
    def __init__(self, env: local.LocalEnv, workdir: Path, n: int, rounds: int,
                 only: str = "") -> None:
        self.env, self.workdir, self.n, self.rounds, self.only = env, workdir, n, rounds, only
        cfg = yaml.safe_load(env.kubeconfig.read_text())
        self.server = cfg["clusters"][0]["cluster"]["server"]
        self.api_ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        self.token = next(u["user"]["token"] for u in cfg["users"] if u["name"] == "admin")
        self.port = procs.free_port()
        self.health = procs.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.env.kubectl(*args, check=check, input=input).stdout

    # --- set-up -----------------------------------------------------------------------------
    def start_operator(self, failure_policy: str = "Fail") -> None:
        kubeconfig = local.operator_kubeconfig(self.env, self.workdir / "operator.kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("VAULT_TOKEN", None)
        cmd = [sys.executable, "-m", "mlsec", "run", "--metrics-port", "0", "--health-port", str(self.health),
               "--bind-address", "127.0.0.1", "--webhook-port", str(self.port), "--webhook-failure-policy",
               failure_policy, "--audit-file", str(self.workdir / "audit.jsonl"), "--no-leader-election"]
        log = open(self.workdir / "operator.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)

        procs.wait_for("operator", healthy, 60, self.proc.pid, self.workdir / "operator.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(f":{self.port}/" in self.kubectl("get", kind, "mlsec.io", "-o", "yaml", check=False)
                   for kind in CONFIGS):
                return
            time.sleep(0.5)
        raise SystemExit("the operator did not register its webhooks")

    def stop_operator(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def webhook_ca(self) -> str:
        cfg = yaml.safe_load(self.kubectl("get", "validatingwebhookconfiguration", "mlsec.io", "-o", "yaml"))
        return base64.b64decode(cfg["webhooks"][0]["clientConfig"]["caBundle"]).decode()

    # --- series -------------------------------------------------------------------------------
    async def direct(self, namespace: str) -> list[dict[str, Any]]:
        ctx = ssl.create_default_context(cadata=self.webhook_ca())
        staging, production = model(namespace, "bench"), model(namespace, "bench", "production")
        approval = {"apiVersion": API, "kind": "ModelApproval",
                    "metadata": {"name": "a", "namespace": namespace},
                    "spec": {"modelDeployment": "bench", "version": "3", "imageDigest": DIGEST,
                             "decision": "approve", "approvedBy": "dave"}}
        series = {
            "webhook direct: promotion gate (deny, audited)": (
                "deployment-gate", lambda i: review(f"gate-{i}-{uuid.uuid4()}", "bob", ["ml_engineers"],
                                                    namespace, "modeldeployments", "UPDATE", production,
                                                    staging)),
            "webhook direct: approver stamp (mutate)": (
                "approval-stamp", lambda i: review(f"stamp-{i}-{uuid.uuid4()}", "carol", ["ml_leads"],
                                                   namespace, "modelapprovals", "CREATE", approval, None)),
        }
        out: list[dict[str, Any]] = []
        if self.only != "lean":
            out += await self.through_aiohttp(ctx, series)
        lean, h2 = Lean(self.port, ctx), LeanH2(self.port, self.webhook_ca())
        await lean.open(self.n)
        await h2.open()
        try:
            for name, (path, make) in series.items():
                def bodies(make: Any = make) -> list[bytes]:
                    return [json.dumps(make(i)).encode() for i in range(self.n)]

                for client, label in ((lean, name), (h2, f"{name}, HTTP/2")):
                    probe = speed_probe()
                    await client.burst(path, bodies())  # warm-up
                    samples, failures, rounds = [], 0, []
                    cpu0, client0 = self.cpu(), time.process_time()
                    for _ in range(self.rounds):
                        got, bad = await client.burst(path, bodies())
                        samples += got
                        failures += bad
                        rounds.append(round(pct(got, 99) * 1000, 1) if got else None)
                    out.append(summary(label, samples, failures, self.cpu() - cpu0,
                                       time.process_time() - client0))
                    # The goal's figure is the p99 of all samples; each round's own shows whether a
                    # miss is every burst or one that met a busy moment of the shared machine.
                    out[-1]["round_p99_ms"] = rounds
                    out[-1]["speed_probe_ms"] = round((probe + speed_probe()) / 2, 1)
        finally:
            lean.close()
            h2.close()
        return out

    async def through_aiohttp(self, ctx: ssl.SSLContext,
                              series: dict[str, tuple[str, Any]]) -> list[dict[str, Any]]:
        """The direct series through aiohttp's client, and one request at a time."""
        out = []
        connector = aiohttp.TCPConnector(ssl=ctx, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for name, (path, make) in series.items():
                url = f"https://127.0.0.1:{self.port}/{path}"

                async def post(s: aiohttp.ClientSession, i: int, url: str = url, make: Any = make) -> bool:
                    async with s.post(url, json=make(i)) as resp:
                        body = await resp.json()
                        return resp.status == 200 and "allowed" in body.get("response", {})

                await burst(session, self.n, post)  # warm-up: n connections open, as a steady client has
                samples, failures = [], 0
                cpu0, client0 = self.cpu(), time.process_time()
                for _ in range(self.rounds):
                    got, bad = await burst(session, self.n, post)
                    samples += got
                    failures += bad
                out.append(summary(f"{name}, aiohttp", samples, failures, self.cpu() - cpu0,
                                   time.process_time() - client0))
                samples, failures = [], 0
                cpu0 = self.cpu()
                for _ in range(self.n):  # one at a time: the service time without queueing
                    got, bad = await burst(session, 1, post)
                    samples += got
                    failures += bad
                out.append(summary(name.replace("webhook direct", "  one at a time"), samples, failures,
                                   self.cpu() - cpu0))
        return out

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    async def creates(self, namespace: str, *labels: str,
                      between: list[Any] | None = None) -> list[dict[str, Any]]:
        """One series per label, round by round: ``between[i]`` (a callable) runs after each
        burst of series ``i`` (e.g. removes the webhooks for the next series, restores them
        after it), so every series meets the same moments of the shared machine."""
        ctx = ssl.create_default_context(cadata=self.api_ca)
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.server}/apis/{API}/namespaces/{namespace}/modeldeployments"
        prefix = uuid.uuid4().hex[:6]
        counter = iter(range(10**9))
        errors: list[str] = []

        async def create(s: aiohttp.ClientSession, i: int) -> bool:
            body = model(namespace, f"m-{prefix}-{next(counter)}")
            async with s.post(url, json=body, headers=headers) as resp:
                text = await resp.text()
                if resp.status != 201 and not errors:
                    errors.append(f"{resp.status}: {text[:300]}")
                return resp.status == 201

        samples: list[list[float]] = [[] for _ in labels]
        failures, cpu, client = [0] * len(labels), [0.0] * len(labels), [0.0] * len(labels)
        steps = between or [None] * len(labels)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0)) as session:
            for warm_up in (True, *([False] * self.rounds)):
                for i, _label in enumerate(labels):
                    cpu0, client0 = self.cpu(), time.process_time()
                    got, bad = await burst(session, self.n, create)
                    if not warm_up:
                        samples[i] += got
                        failures[i] += bad
                        cpu[i] += self.cpu() - cpu0
                        client[i] += time.process_time() - client0
                    if steps[i] is not None:
                        steps[i]()
        if errors:
            print(f"{labels[0]}: first failure: {errors[0]}", file=sys.stderr)
        if not all(samples):
            raise SystemExit(f"{', '.join(labels)}: every request of a series failed")
        return [summary(label, samples[i], failures[i], cpu[i], client[i]) for i, label in enumerate(labels)]

    def stamped(self, namespace: str) -> bool:
        """Whether a create in ``namespace`` is stamped with its requester now (dry run)."""
        got = yaml.safe_load(self.kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-",
                                          input=yaml.safe_dump(model(namespace, "probe")),
                                          check=False) or "{}") or {}
        return bool(((got.get("metadata") or {}).get("annotations") or {}).get("mlsec.io/requested-by"))

    def switch_webhooks(self, namespace: str, configs: list[dict[str, Any]], on: bool) -> None:
        """Register (``on``) or remove the webhook configurations, and wait until the API server
        applies the change (the stamp webhook answers a dry-run create, or no longer does)."""
        for cfg in configs:
            if on:
                cfg = {**cfg, "metadata": {"name": "mlsec.io"}}
                self.kubectl("create", "-f", "-", input=yaml.safe_dump(cfg))
            else:
                self.kubectl("delete", cfg["kind"].lower(), "mlsec.io")
        deadline = time.monotonic() + 30
        while self.stamped(namespace) != on:
            if time.monotonic() > deadline:
                raise SystemExit(f"the API server did not {'register' if on else 'drop'} the webhooks")
            time.sleep(0.2)

    def run(self) -> list[dict[str, Any]]:
        saved = yaml.safe_load(self.kubectl("get", NATIVE_BINDINGS, "-l", NATIVE, "-o", "yaml"))["items"]
        gate_ns, api_ns = f"bench-gate-{uuid.uuid4().hex[:6]}", f"bench-api-{uuid.uuid4().hex[:6]}"
        results: list[dict[str, Any]] = []
        # An operator that starts while an earlier run's models are being deleted resumes them
        # all, during the measurement.
        c.wait_clean(self.env)
        try:
            if saved:
                self.kubectl("delete", NATIVE_BINDINGS, "-l", NATIVE)
            self.start_operator()
            for ns in (gate_ns, api_ns):
                self.kubectl("create", "namespace", ns)
                self.kubectl("label", "namespace", ns, f"{c.BENCH_LABEL}=true")
            policy = yaml.safe_load((REPO / "manifests/samples/policy-hospital.yaml").read_text())
            policy["metadata"]["namespace"] = gate_ns
            policy["spec"].pop("vault", None)
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump(policy))
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump(model(gate_ns, "bench")))
            time.sleep(2)  # the operator's indexes see the policy and the model
            results += asyncio.run(self.direct(gate_ns))
            if self.only:
                return results
            # api_ns has no policy: the operator's reconcile of the new objects stays cheap. With
            # and without the webhooks round by round: the difference of the two is the figure.
            configs = [yaml.safe_load(self.kubectl("get", kind, "mlsec.io", "-o", "yaml"))
                       for kind in CONFIGS]
            try:
                results += asyncio.run(self.creates(
                    api_ns, "API create, with the webhooks", "API create, no webhooks",
                    between=[lambda: self.switch_webhooks(api_ns, configs, False),
                             lambda: self.switch_webhooks(api_ns, configs, True)]))
            finally:
                if not self.stamped(api_ns):
                    self.switch_webhooks(api_ns, configs, True)
            # As installed on a cluster that serves MutatingAdmissionPolicy: the native policies
            # bound, the operator's webhooks a second layer (failure policy auto → Ignore), the
            # requester stamped by the API server (no stamp webhook).
            self.stop_operator()
            self.restore(saved)
            self.start_operator("auto")
            self.wait_native_stamp(api_ns)
            self.wait_quiet()  # a restarted operator first resumes the models created above
            results += asyncio.run(self.creates(api_ns, SHIPPED))
        finally:
            self.stop_operator()
            for kind in CONFIGS:
                self.kubectl("delete", kind, "mlsec.io", "--ignore-not-found", check=False)
            # The policy keeps kopf's finalizer once the operator is gone: stripped, or the
            # namespace would stay Terminating.
            c.delete_namespaces(c.admin_kube(self.env), [gate_ns, api_ns])
            self.restore(saved)
        return results

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Bind the native policies again (as saved before the run)."""
        for item in saved:
            meta = item["metadata"]
            item["metadata"] = {k: meta[k] for k in ("name", "labels") if k in meta}
        if saved:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                         input=yaml.safe_dump_all(saved))

    def wait_quiet(self, timeout: float = 300) -> None:
        """Until the operator has used under 5% of a CPU for three seconds in a row."""
        deadline, quiet, last = time.monotonic() + timeout, 0, self.cpu()
        while time.monotonic() < deadline and quiet < 3:
            time.sleep(1)
            now = self.cpu()
            quiet, last = (quiet + 1 if now - last < 0.05 else 0), now
        if quiet < 3:
            raise SystemExit("the restarted operator did not settle")

    def wait_native_stamp(self, namespace: str) -> None:
        """Until the API server stamps the requester itself, with no stamp webhook registered."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            hooks = self.kubectl("get", "mutatingwebhookconfiguration", "mlsec.io", "-o", "yaml")
            if "deployment-stamp" not in hooks and self.stamped(namespace):
                return
            time.sleep(0.5)
        raise SystemExit("the native requester stamp did not take over from the webhook")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("MLSEC_LOCAL_DIR"),
                        help="a running local environment (mlsec local up --dir …)")
    parser.add_argument("-n", type=int, default=100, help="requests sent at once (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per series (default 5)")
    parser.add_argument("--only", choices=["direct", "lean"], default="",
                        help="only the direct series (the operator's own CPU, quick A/B runs); "
                        "lean: only those through the lean clients (HTTP/1.1 and HTTP/2)")
    args = parser.parse_args()
    if not args.dir:
        raise SystemExit("--dir (or $MLSEC_LOCAL_DIR): a running `mlsec local up` environment")
    env = local.LocalEnv.load(Path(args.dir))
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    with tempfile.TemporaryDirectory(prefix="mlsec-bench-") as tmp:
        results = Bench(env, Path(tmp), args.n, args.rounds, args.only).run()
    load = os.getloadavg()[0]
    print(f"\nAdmission webhook latency: {args.rounds} bursts of {args.n} concurrent requests per series "
          f"({os.cpu_count()} CPUs, load average {load:.1f})")
    print(f"{'series':<50}{'n':>6}{'fail':>6}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'max ms':>9}"
          f"{'op CPU ms/req':>15}{'client CPU':>12}")
    for r in results:
        print(f"{r['series']:<50}{r['n']:>6}{r['failures']:>6}{r['p50_ms']:>9}{r['p99_ms']:>9}"
              f"{r['mean_ms']:>9}{r['max_ms']:>9}{r.get('operator_cpu_ms_per_request', '-'):>15}"
              f"{r.get('client_cpu_ms_per_request', '-'):>12}")
    for r in results:
        if "round_p99_ms" in r:
            print(f"  {r['series']}: p99 of each burst {r['round_p99_ms']} ms; "
                  f"speed probe {r['speed_probe_ms']} ms")
    by = {r["series"]: r for r in results}
    if args.only:
        print(json.dumps({"benchmark": "webhook_latency", "concurrency": args.n, "rounds": args.rounds,
                          "load_average": round(load, 1), "results": results}))
        return 0
    without = by["API create, no webhooks"]

    def over(series: str) -> dict[str, float]:
        return {q: round(by[series][q] - without[q], 2) for q in ("p50_ms", "p99_ms")}

    overhead, shipped = over("API create, with the webhooks"), over(SHIPPED)
    print(f"webhook overhead on an API create (webhooks alone, failurePolicy Fail): "
          f"p50 {overhead['p50_ms']} ms, p99 {overhead['p99_ms']} ms")
    print(f"admission overhead on an API create as shipped (native policies, webhooks Ignore): "
          f"p50 {shipped['p50_ms']} ms, p99 {shipped['p99_ms']} ms")
    print(json.dumps({"benchmark": "webhook_latency", "concurrency": args.n, "rounds": args.rounds,
                      "load_average": round(load, 1), "results": results, "create_overhead": overhead,
                      "create_overhead_shipped": shipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
