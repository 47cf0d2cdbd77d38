"""Benchmark: operator memory (VmRSS from /proc/<pid>/status) at 0, 1,000 and 5,000 ModelDeployments.

    .venv/bin/python -m bench.memory --dir /tmp/env-bench [--levels 0,1000,5000]

One ``mlsec run`` process: RSS is sampled when it is idle with no model, then models are added
(staging, hospital policy, ``--per-namespace`` per namespace) up to each level; once all are
Ready and ``--settle`` seconds have passed, RSS is sampled again (median of five samples a second
apart) with VmHWM (the peak so far). Finally the operator is restarted with every model in place
and sampled once its start-up pass (a resume reconcile per model) is done: the memory a
restarted replica needs. Goal: ≤ 100 MiB at 5,000.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common as c

GOAL_MIB = 100.0


def vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_by_mapping(pid: int) -> dict[str, float]:
    """VmRSS split by mapping, from /proc/<pid>/smaps (MiB): file-backed pages (the interpreter,
    shared libraries), glibc's main heap ([heap]) and other anonymous memory (Python's
    small-object arenas, glibc's second arena and large blocks, thread stacks). The objects dump
    ($MLSEC_BENCH_OBJECTS) splits the anonymous part further."""
    out = {"files": 0.0, "heap": 0.0, "anon": 0.0}
    where = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            where = fields[5] if len(fields) > 5 else ""
        elif fields[0] == "Rss:":
            kind = "files" if where.startswith("/") else "heap" if where == "[heap]" else "anon"
            out[kind] += int(fields[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


def sample(op: c.Operator, settle: float) -> tuple[float, float, float]:
    """(VmRSS median of 5, VmHWM, RssAnon): RssAnon is the heap, the rest of VmRSS is file-backed
    (the interpreter, shared libraries such as OpenSSL)."""
    time.sleep(settle)
    values = []
    for _ in range(5):
        values.append(op.rss_mib())
        time.sleep(1)
    return statistics.median(values), vm(op.pid, "VmHWM"), vm(op.pid, "RssAnon")


def dump_objects(op: c.Operator, label: str) -> None:
    """With $MLSEC_BENCH_OBJECTS=FILE (SIGUSR2) or $MLSEC_BENCH_TRACEMALLOC=FILE (SIGUSR1) (the
    operator then runs as bench.kopf_variant): have it write what holds its memory, kept as
    FILE.<label>."""
    for variable, sig in (("MLSEC_BENCH_OBJECTS", signal.SIGUSR2),
                          ("MLSEC_BENCH_TRACEMALLOC", signal.SIGUSR1)):
        target = os.environ.get(variable)
        if not target:
            continue
        path = Path(target)
        path.unlink(missing_ok=True)
        os.kill(op.pid, sig)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (path.exists() and path.read_text().endswith("\n")):
            time.sleep(1)
        if path.exists():
            path.replace(path.with_name(f"{path.name}.{label}"))
            snapshot = path.with_name(f"{path.name}.snapshot")  # tracemalloc's, to compare levels
            if snapshot.exists():
                snapshot.replace(path.with_name(f"{path.name}.{label}.snapshot"))
            c.say(f"what holds the operator's memory at {label}: {path.name}.{label}")


def wait_reconciled(op: c.Operator, n: int, timeout: float) -> float:
    """Seconds until the operator has run ``n`` ModelDeployment reconciles (its resume pass)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        done = c.metric_value(op.metrics(), "mlsec_reconcile_duration_seconds_count", kind="ModelDeployment")
        if done >= n:
            break
        time.sleep(1)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_env_args(parser)
    parser.add_argument("--levels", default="0,1000,5000", help="model counts to sample at")
    parser.add_argument("--per-namespace", type=int, default=100)
    parser.add_argument("--settle", type=float, default=15.0, help="idle seconds before sampling")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait per level")
    parser.add_argument("--kopf", default="", help="kopf settings to override (bench.kopf_variant)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the operator's environment only (e.g. an allocator: "
                             "LD_PRELOAD=…, PYTHONMALLOC=malloc)")
    args = parser.parse_args(argv)
    environ = dict(item.split("=", 1) for item in args.operator_env)
    levels = [int(x) for x in args.levels.split(",")]

    env = c.load_env(args.dir)
    c.install_crds(env)
    c.wait_clean(env)
    kube = c.admin_kube(env)
    workdir = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    namespaces: list[str] = []
    watch = c.ReadyWatch(env, lambda: set(namespaces)).start()
    op = c.Operator(env, workdir / "operator", kopf=args.kopf, environ=environ)
    rows: list[dict[str, Any]] = []
    have = 0
    try:
        op.start()
        for level in levels:
            started = time.monotonic()
            bodies = []
            while have < level:
                if have % args.per_namespace == 0:
                    ns = c.setup_namespace(kube, env, "bench-mem")
                    namespaces.append(ns)
                bodies.append(c.model_body(namespaces[-1], f"mem-{have:05d}"))
                have += 1
            if bodies:
                c.say(f"adding {len(bodies)} models (to {level})")
                c.create_all(kube, bodies)
                def progress(n: int, level: int = level) -> None:
                    parts = rss_by_mapping(op.pid)
                    c.say(f"  {n}/{level} Ready, RSS {op.rss_mib():.0f} MiB: "
                          + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))

                if not watch.wait_count(level, timeout=args.timeout, progress=progress):
                    c.say(f"only {watch.count_ready()} of {level} Ready")
            seconds = time.monotonic() - started
            rss, hwm, anon = sample(op, args.settle)
            parts = rss_by_mapping(op.pid)
            c.say(f"{level} models: RSS {rss:.1f} MiB (peak {hwm:.1f}): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
            dump_objects(op, f"growing-{level}")
            rows.append({"models": level, "namespaces": len(namespaces), "ready": watch.count_ready(),
                         "rss_mib": round(rss, 1), "peak_mib": round(hwm, 1), "anon_mib": round(anon, 1),
                         "seconds": round(seconds, 1), "phase": "growing", "by_mapping": parts})
        op.stop()
        c.say(f"restarting the operator with {have} models in place")
        op = c.Operator(env, workdir / "restarted", kopf=args.kopf, environ=environ)
        started = time.monotonic()
        op.start()
        took = wait_reconciled(op, have, args.timeout)
        rss, hwm, anon = sample(op, args.settle)
        parts = rss_by_mapping(op.pid)
        c.say(f"restarted with {have}: RSS {rss:.1f} MiB (peak {hwm:.1f}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
        dump_objects(op, f"restarted-{have}")
        rows.append({"models": have, "namespaces": len(namespaces), "ready": watch.count_ready(),
                     "rss_mib": round(rss, 1), "peak_mib": round(hwm, 1), "anon_mib": round(anon, 1),
                     "seconds": round(time.monotonic() - started - args.settle - 5, 1),
                     "resume_s": round(took, 1), "phase": "restarted", "by_mapping": parts})
    finally:
        watch.stop()
        op.stop()
        if not args.keep:
            c.delete_namespaces(kube, namespaces)

    top = max((r for r in rows if r["phase"] == "growing"), key=lambda r: r["models"])
    worst = max(r["rss_mib"] for r in rows if r["models"] == top["models"])
    met = worst <= GOAL_MIB
    print(c.table(f"\nOperator memory (VmRSS, median of 5 samples after {args.settle:.0f}s idle); "
                  f"{args.per_namespace} models per namespace",
                  ["phase", "models", "namespaces", "RSS MiB", "of it anon MiB", "peak MiB", "seconds"],
                  [(r["phase"], r["models"], r["namespaces"], r["rss_mib"], r["anon_mib"], r["peak_mib"],
                    r["seconds"]) for r in rows]))
    print(f"\ngoal ≤ {GOAL_MIB:.0f} MiB at {top['models']}: {'met' if met else 'MISSED'} ({worst:.1f} MiB)")
    c.emit({"bench": "memory", "levels": rows, "per_namespace": args.per_namespace,
            "rss_at_top_mib": worst, "top_models": top["models"],
            "goal": {"rss_mib": GOAL_MIB, "models": 5000}, "met": met})
    return 0


if __name__ == "__main__":
    sys.exit(main())
