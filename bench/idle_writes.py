"""Benchmark: writes by an idle operator — 1,000 reconciled objects, nothing changes, count writes.

    .venv/bin/python -m bench.idle_writes --dir /tmp/env-bench [--objects 1000 --duration 600]

``--objects`` ModelDeployments (staging, hospital policy, ``--per-namespace`` per namespace) are
created and reconciled; once all are Ready and then ``--quiet`` seconds pass without any write of
the operator in those namespaces (how long that took is reported: the tail of its work), every
write request in the API server's audit log during ``--duration`` seconds that carries one of the
operator's user agents (mlsec-operator, kopf) or field managers is counted, in the benchmark's
namespaces and cluster-wide (the leader Lease renewal, a write by design, is shown apart).
Goal: 0 in the benchmark's namespaces.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import common as c

GOAL = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_env_args(parser)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--per-namespace", type=int, default=100)
    parser.add_argument("--duration", type=float, default=600.0, help="idle seconds observed (600)")
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="seconds without a write of the operator before counting starts")
    parser.add_argument("--max-tail", type=float, default=1800.0,
                        help="give up when the operator still writes this long after all were Ready")
    args = parser.parse_args(argv)

    env = c.load_env(args.dir)
    c.install_crds(env)
    c.wait_clean(env)
    kube = c.admin_kube(env)
    namespaces: list[str] = []
    bodies = []
    for i in range(args.objects):
        if i % args.per_namespace == 0:
            ns = c.setup_namespace(kube, env, "bench-idle")
            namespaces.append(ns)
        bodies.append(c.model_body(namespaces[-1], f"idle-{i:05d}"))
    watch = c.ReadyWatch(env, lambda: set(namespaces)).start()
    op = c.Operator(env, Path(tempfile.mkdtemp(prefix="bench-idle-")))
    try:
        op.start()
        c.create_all(kube, bodies)
        if not watch.wait_count(args.objects, timeout=3600,
                                progress=lambda n: c.say(f"  {n}/{args.objects} Ready")):
            raise SystemExit(f"only {watch.count_ready()} of {args.objects} became Ready")
        # Ready is not the end of the operator's work (kopf's own create handling, the ledger):
        # idleness starts once ``--quiet`` seconds passed without any write of the operator here.
        ready_at = time.monotonic()
        tail = c.AuditTail(env)
        quiet_since, tail_writes = time.monotonic(), 0
        while time.monotonic() - quiet_since < args.quiet:
            if time.monotonic() - ready_at > args.max_tail:
                raise SystemExit(f"the operator still writes {args.max_tail:.0f}s after all were Ready")
            time.sleep(2)
            new = [e for e in tail.events(set(namespaces)) if c.by_operator(e)]
            if len(new) > tail_writes:
                tail_writes, quiet_since = len(new), time.monotonic()
        tail_seconds = time.monotonic() - ready_at - args.quiet
        audit = c.AuditTail(env)
        c.say(f"all Ready; the operator's last write {tail_seconds:.0f}s after that ({tail_writes} writes); "
              f"observing {args.duration:.0f}s of idleness")
        time.sleep(args.duration)
        everything = [e for e in audit.events() if c.by_operator(e)]
        still_ready = sum(c.is_ready(o) for ns in namespaces for o in kube.list(c.API, c.KIND, ns))
    finally:
        watch.stop()
        op.stop()
        if not args.keep:
            c.delete_namespaces(kube, namespaces)

    ours = set(namespaces)
    inside = [e for e in everything if (e.get("objectRef") or {}).get("namespace") in ours]
    lease = [e for e in everything if (e.get("objectRef") or {}).get("resource") == "leases"]
    other = [e for e in everything if e not in inside and e not in lease]
    rows = [(where, len(items), ", ".join(f"{k}: {n}" for k, n in
                                          Counter(c.write_key(e) for e in items).most_common(6)) or "-")
            for where, items in (("benchmark namespaces", inside),
                                 ("leader Lease (by design)", lease),
                                 ("elsewhere", other))]
    print(c.table(f"\nIdle writes: {args.objects} ModelDeployments ({still_ready} Ready at the end), "
                  f"{args.duration:.0f}s observed",
                  ["where", "writes", "what"], rows))
    met = len(inside) == GOAL
    print(f"\nafter every model was Ready the operator went on writing for {tail_seconds:.0f}s "
          f"({tail_writes} writes) before the observed idle period")
    print(f"goal {GOAL} writes in the benchmark's namespaces: {'met' if met else 'MISSED'}")
    for e in inside[:10]:
        print(f"  {e.get('requestReceivedTimestamp')} {e.get('verb')} {e.get('requestURI')} "
              f"({e.get('userAgent')})")
    c.emit({"bench": "idle_writes", "objects": args.objects, "duration_s": args.duration,
            "writes": len(inside), "lease_renewals": len(lease), "other_writes": len(other),
            "writes_by_kind": dict(Counter(c.write_key(e) for e in inside)),
            "still_ready": still_ready, "tail_after_ready_s": round(tail_seconds, 1),
            "tail_writes": tail_writes, "goal": {"writes": GOAL}, "met": met})
    return 0


if __name__ == "__main__":
    sys.exit(main())
