"""Benchmark: bulk throughput — the operator's write rate against a plain client's, in one run.

    .venv/bin/python -m bench.bulk_throughput --dir /tmp/env-bench [--models 1000]

1. Operator: with ``mlsec run`` running and idle, ``--models`` ModelDeployments (staging, hospital
   policy, ``--per-namespace`` per namespace) are created by 8 client threads. The window runs from
   the first create to the moment the last one is Ready=True; the operator's writes of child
   objects (ServiceAccount, Deployment, Service, PeerAuthentication, DestinationRule,
   AuthorizationPolicy, EnvoyFilter) are counted in the API server's audit log.
2. Plain client, after the operator is stopped: the very same child objects (built by
   mlsec.builders.children.desired_children for the same specs), server-side applied straight to
   the API server in fresh namespaces with the operator's identity (same RBAC and admission) and
   ``--baseline-threads`` threads, no reads, no status, no bookkeeping: the physical limit of this
   API server on this machine at that moment. Owner references are left out (no owner exists
   there, the garbage collector would delete the objects while they are written).

ratio = operator child objects/s ÷ plain client objects/s. Goal ≥ 0.5.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common as c
from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.builders.children import desired_children
from mlsec.clients.kube import Kube

GOAL_RATIO = 0.5
CHILD_RESOURCES = frozenset({"serviceaccounts", "deployments", "services", "peerauthentications",
                             "destinationrules", "authorizationpolicies", "envoyfilters"})


def model_names(n: int, per_namespace: int, namespaces: list[str]) -> list[tuple[str, str]]:
    return [(namespaces[i // per_namespace], f"bulk-{i:05d}") for i in range(n)]


def run_operator(env: Any, kube: Kube, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    count = -(-args.models // args.per_namespace)
    namespaces = [c.setup_namespace(kube, env, "bench-bulk") for _ in range(count)]
    placed = model_names(args.models, args.per_namespace, namespaces)
    watch = c.ReadyWatch(env, lambda: set(namespaces)).start()
    op = c.Operator(env, workdir / "operator", kopf=args.kopf)
    try:
        op.start()
        time.sleep(3)  # let the operator finish its start-up (policies, leader election)
        audit = c.AuditTail(env)
        c.say(f"operator pid {op.pid}: creating {args.models} models in {count} namespaces")
        started = time.monotonic()
        wall_started = time.time()
        cpu_before = c.cpu_seconds(op.pid)
        create_s = c.create_all(kube, [c.model_body(ns, name) for ns, name in placed], threads=8)
        c.say(f"created in {create_s:.1f}s; waiting for Ready")
        ok = watch.wait_count(args.models, timeout=args.timeout,
                              progress=lambda n: c.say(f"  {n}/{args.models} Ready, "
                                                       f"RSS {op.rss_mib():.0f} MiB"))
        window = time.monotonic() - started
        cpu = c.cpu_seconds(op.pid) - cpu_before
        ready = watch.count_ready()
        if not ok:
            c.say(f"only {ready} of {args.models} Ready after {args.timeout:.0f}s")
        time.sleep(2)  # the last writes reach the audit log
        rss = op.rss_mib()
        writes = [e for e in audit.events(set(namespaces)) if c.by_operator(e)
                  and c.stamp(e) <= wall_started + window]
        metrics = op.metrics()
    finally:
        watch.stop()
        op.stop()
    kinds = Counter(c.write_key(e) for e in writes)
    children = sum(n for k, n in kinds.items() if k.split()[0] in ("patch", "create")
                   and k.split()[1] in CHILD_RESOURCES)
    return {"namespaces": namespaces, "placed": placed, "window_s": window, "create_s": create_s,
            "ready": ready, "child_writes": children, "all_writes": len(writes), "cpu_s": cpu,
            "writes_by_kind": dict(kinds.most_common()), "rss_mib": rss,
            "reconciles": c.metric_value(metrics, "mlsec_reconcile_duration_seconds_count",
                                         kind="ModelDeployment")}


def baseline_objects(env: Any, placed: list[tuple[str, str]], namespaces: list[str]) -> list[dict[str, Any]]:
    """The children the operator writes for these models, rebuilt for fresh namespaces."""
    policies: dict[str, MLSecurityPolicy] = {}
    out = []
    for i, (_, name) in enumerate(placed):
        ns = namespaces[i * len(namespaces) // len(placed)]
        if ns not in policies:
            policies[ns] = MLSecurityPolicy.model_validate(c.policy_body(ns, env))
        body = c.model_body(ns, name)
        body["metadata"]["uid"] = f"00000000-0000-0000-0000-{i:012d}"
        for child in desired_children(ModelDeployment.model_validate(body), policies[ns]):
            child["metadata"].pop("ownerReferences", None)
            out.append(child)
    return out


def run_baseline(env: Any, kube: Kube, args: argparse.Namespace, workdir: Path,
                 placed: list[tuple[str, str]]) -> dict[str, Any]:
    count = len({ns for ns, _ in placed})
    namespaces = [c.create_namespace(kube, "bench-base") for _ in range(count)]
    objects = baseline_objects(env, placed, namespaces)
    plain = c.operator_identity_kube(env, workdir, "mlsec-bench-baseline")
    c.say(f"plain client: {len(objects)} objects with {args.baseline_threads} threads")
    started = time.monotonic()
    with ThreadPoolExecutor(args.baseline_threads) as pool:
        list(pool.map(lambda o: c.apply(plain, o), objects))
    seconds = time.monotonic() - started
    return {"namespaces": namespaces, "objects": len(objects), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_env_args(parser)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--per-namespace", type=int, default=100,
                        help="models per namespace (100; each namespace has its own policy)")
    parser.add_argument("--baseline-threads", type=int, default=8,
                        help="parallel requests of the plain client (8: the operator's thread pool)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for Ready")
    parser.add_argument("--kopf", default="", help="kopf settings to override (bench.kopf_variant), "
                        "e.g. execution.max_workers=16")
    args = parser.parse_args(argv)

    env = c.load_env(args.dir)
    c.install_crds(env)
    c.wait_clean(env)
    kube = c.admin_kube(env)
    workdir = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    namespaces: list[str] = []
    load = [c.load_average()]
    try:
        opr = run_operator(env, kube, args, workdir)
        namespaces += opr["namespaces"]
        load.append(c.load_average())
        base = run_baseline(env, kube, args, workdir, opr["placed"])
        namespaces += base["namespaces"]
        load.append(c.load_average())
    finally:
        if not args.keep:
            c.delete_namespaces(kube, namespaces)

    op_rate = opr["child_writes"] / opr["window_s"]
    base_rate = base["objects"] / base["seconds"]
    ratio = op_rate / base_rate
    rows = [
        ("operator (create → all Ready)", opr["child_writes"], opr["window_s"], op_rate,
         f"{opr['ready']}/{args.models} Ready"),
        (f"plain client ({args.baseline_threads} threads, SSA)", base["objects"], base["seconds"],
         base_rate, "-"),
    ]
    print(c.table(f"\nBulk throughput: {args.models} ModelDeployments, {args.per_namespace} per "
                  f"namespace; load {' → '.join(load)}",
                  ["who", "child objects", "seconds", "objects/s", "note"], rows))
    print(f"\nratio operator/plain = {ratio:.2f} (goal ≥ {GOAL_RATIO}: "
          f"{'met' if ratio >= GOAL_RATIO else 'MISSED'}); models/s {opr['ready'] / opr['window_s']:.1f}; "
          f"creating them took {opr['create_s']:.1f}s; operator writes of every kind: "
          f"{opr['all_writes']} ({opr['all_writes'] / max(opr['ready'], 1):.1f} per model); "
          f"RSS after: {opr['rss_mib']:.0f} MiB; operator CPU {opr['cpu_s']:.0f}s "
          f"({opr['cpu_s'] / opr['window_s']:.0%} of one core, "
          f"{1000 * opr['cpu_s'] / max(opr['ready'], 1):.0f} ms per model); "
          f"{opr['reconciles'] / max(opr['ready'], 1):.1f} reconciles per model")
    print("operator writes by verb and resource: " +
          ", ".join(f"{k}: {n}" for k, n in opr["writes_by_kind"].items()))
    c.emit({"bench": "bulk_throughput", "models": args.models, "per_namespace": args.per_namespace,
            "kopf": args.kopf or "as shipped",
            "ready": opr["ready"], "operator_child_writes": opr["child_writes"],
            "operator_window_s": round(opr["window_s"], 2), "operator_objects_per_s": round(op_rate, 1),
            "operator_models_per_s": round(opr["ready"] / opr["window_s"], 2),
            "operator_writes_total": opr["all_writes"], "operator_writes_by_kind": opr["writes_by_kind"],
            "baseline_objects": base["objects"], "baseline_s": round(base["seconds"], 2),
            "baseline_threads": args.baseline_threads, "baseline_objects_per_s": round(base_rate, 1),
            "ratio": round(ratio, 3), "goal": {"ratio": GOAL_RATIO}, "met": ratio >= GOAL_RATIO,
            "rss_mib": round(opr["rss_mib"], 1), "load": load, "operator_cpu_s": round(opr["cpu_s"], 1),
            "operator_cpu_share": round(opr["cpu_s"] / opr["window_s"], 2),
            "reconciles_per_model": round(opr["reconciles"] / max(opr["ready"], 1), 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
