"""Benchmark: reconcile latency — apply → Ready=True with the current observedGeneration.

    .venv/bin/mlsec local up --dir /tmp/env-bench
    .venv/bin/python -m bench.reconcile_latency --dir /tmp/env-bench [--rate 10 --duration 60]

A pool of ModelDeployments (staging, hospital policy) is created and reconciled first (those
creates are reported apart). Then, at ``--rate`` changes per second for ``--duration`` seconds,
a user server-side applies a new release of one model of the pool (round robin: new version and
image digest, so every change rewrites the Deployment). A watch records when each generation is
first seen Ready=True with status.observedGeneration at least that generation; the latency of a
change is that moment minus the moment its apply was sent. Goal: p99 ≤ 1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common as c

GOAL_P99 = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_env_args(parser)
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second (10)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of changes (60)")
    parser.add_argument("--pool", type=int, default=20, help="models changed in turn (20)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait for the last changes before counting them lost")
    args = parser.parse_args(argv)

    env = c.load_env(args.dir)
    c.install_crds(env)
    kube = c.admin_kube(env)
    ns = c.setup_namespace(kube, env, "bench-lat")
    workdir = Path(tempfile.mkdtemp(prefix="bench-lat-"))
    watch = c.ReadyWatch(env, lambda: {ns}).start()
    op = c.Operator(env, workdir)
    load_before = c.load_average()
    try:
        op.start()
        names = [f"lat-{i:03d}" for i in range(args.pool)]
        c.say(f"operator pid {op.pid}; creating {args.pool} models in {ns}")
        created: dict[str, float] = {}
        for name in names:
            created[name] = time.monotonic()
            c.apply(kube, c.model_body(ns, name))
        if not watch.wait_count(len(names), timeout=120):
            raise SystemExit(f"only {watch.count_ready()} of {len(names)} models became Ready; "
                             f"see {op.log_file}")
        create_lat = [watch.ready_at[(ns, n, 1)] - created[n] for n in names]

        total = int(args.rate * args.duration)
        c.say(f"{total} changes at {args.rate}/s for {args.duration:.0f}s")
        sent: list[tuple[str, int, float]] = []  # (name, generation, sent at)
        version = {n: 3 for n in names}
        started = time.monotonic()
        for i in range(total):
            due = started + i / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            name = names[i % len(names)]
            version[name] += 1
            body: dict[str, Any] = c.model_body(ns, name, version=str(version[name]))
            t0 = time.monotonic()
            out = c.apply(kube, body)
            sent.append((name, int(out["metadata"]["generation"]), t0))
        send_seconds = time.monotonic() - started
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            if all((ns, n, g) in watch.ready_at for n, g, _ in sent):
                break
            time.sleep(0.2)
        latencies, lost = [], 0
        for name, gen, t0 in sent:
            at = watch.ready_at.get((ns, name, gen))
            if at is None:
                lost += 1
            else:
                latencies.append(at - t0)
        metrics = op.metrics()
    finally:
        watch.stop()
        op.stop()
        if not args.keep:
            c.delete_namespaces(kube, [ns])
    load_after = c.load_average()

    # Changes never seen Ready count as infinitely slow for the percentiles.
    ranked = latencies + [float("inf")] * lost
    p50, p90, p99 = (c.percentile(ranked, p) for p in (50, 90, 99))
    reconciles = c.metric_value(metrics, "mlsec_reconcile_duration_seconds_count", kind="ModelDeployment")
    rec_sum = c.metric_value(metrics, "mlsec_reconcile_duration_seconds_sum", kind="ModelDeployment")
    rows = [
        ("creates (warm-up)", len(create_lat), "-", c.percentile(create_lat, 50),
         c.percentile(create_lat, 99), max(create_lat), "-"),
        ("changes", len(sent), f"{len(sent) / send_seconds:.2f}/s", p50, p99, max(ranked), lost),
    ]
    print(c.table(f"\nReconcile latency: apply → Ready=True (current observedGeneration); "
                  f"{args.pool} models, load {load_before} → {load_after}",
                  ["what", "n", "rate", "p50 s", "p99 s", "max s", "lost"], rows))
    mean_reconcile = rec_sum / reconciles if reconciles else float("nan")
    print(f"\nreconciles run by the operator: {reconciles:.0f}, mean {mean_reconcile * 1000:.1f} ms; "
          f"p90 {p90:.3f} s; goal p99 ≤ {GOAL_P99} s: {'met' if p99 <= GOAL_P99 else 'MISSED'}")
    c.emit({"bench": "reconcile_latency", "changes": len(sent), "rate": round(len(sent) / send_seconds, 2),
            "duration_s": args.duration, "pool": args.pool,
            "p50_s": round(p50, 4), "p90_s": round(p90, 4), "p99_s": round(p99, 4),
            "max_s": round(max(ranked), 4) if ranked else None, "lost": lost,
            "create_p50_s": round(c.percentile(create_lat, 50), 4),
            "create_p99_s": round(c.percentile(create_lat, 99), 4),
            "reconciles": int(reconciles), "mean_reconcile_ms": round(mean_reconcile * 1000, 1),
            "goal": {"p99_s": GOAL_P99}, "met": p99 <= GOAL_P99,
            "load": [load_before, load_after]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
