"""Run every benchmark and print their figures against the goals (``make bench``).

    .venv/bin/python -m bench [--dir DIR] [--only latency,bulk,...] [--idle-duration 600]
                              [--ldap-result FILE | --with-ldap]

Uses the running local environment in ``--dir`` ($MLSEC_LOCAL_DIR), or starts one in a temporary
directory and stops it at the end. Each benchmark runs as its own process (``python -m
bench.<name>``), its output is passed through, and its last line (JSON) is collected; then a
summary table of every figure against its goal and, last, one JSON line with everything.

The LDAP sync figures come from bench/ldap_sync.py (10,000 users; slow to load into slapd): give
its saved output with ``--ldap-result FILE`` or run it with ``--with-ldap``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlsec.local import env as local

REPO = Path(__file__).resolve().parents[1]
# Light first, heavy last (the machine is shared: the long ones are the noisiest).
BENCHES = ["vault", "latency", "bulk", "idle", "memory"]
MODULES = {"latency": "bench.reconcile_latency", "bulk": "bench.bulk_throughput",
           "memory": "bench.memory", "idle": "bench.idle_writes", "vault": "bench.vault_writes"}

Row = tuple[str, str, str, str]  # figure, value, goal, verdict


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def _num(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def rows_latency(r: dict[str, Any]) -> list[Row]:
    met = r.get("met")
    return [
        ("reconcile latency p50 (apply → Ready)", _num(r.get("p50_s"), " s"), "-", "-"),
        ("reconcile latency p99", _num(r.get("p99_s"), " s"), "≤ 1 s", _verdict(met)),
        ("  changes sent / lost", f"{r.get('changes')} at {r.get('rate')}/s / {r.get('lost')}", "0 lost",
         _verdict(r.get("lost") == 0)),
    ]


def rows_bulk(r: dict[str, Any]) -> list[Row]:
    return [
        ("bulk: operator child objects/s", _num(r.get("operator_objects_per_s"), "", 1), "-", "-"),
        ("bulk: plain client objects/s (same run)", _num(r.get("baseline_objects_per_s"), "", 1), "-", "-"),
        ("bulk: ratio operator/plain", _num(r.get("ratio"), "", 2), "≥ 0.5", _verdict(r.get("met"))),
    ]


def rows_memory(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for level in r.get("levels", []):
        goal, met = ("≤ 100 MiB", r.get("met")) if level["models"] == r.get("top_models") else ("-", None)
        out.append((f"operator RSS, {level['models']} models ({level['phase']})",
                    _num(level["rss_mib"], " MiB", 1), goal, _verdict(met)))
    return out


def rows_idle(r: dict[str, Any]) -> list[Row]:
    return [(f"idle writes, {r.get('objects')} objects, {r.get('duration_s', 0):.0f} s",
             str(r.get("writes")), "0", _verdict(r.get("met")))]


def rows_vault(r: dict[str, Any]) -> list[Row]:
    passes = r.get("passes", {})
    out: list[Row] = []
    order = ["first", "unchanged", "after"]  # the JSON line has its keys sorted
    for label, p in sorted(passes.items(), key=lambda kv: next(
            (i for i, w in enumerate(order) if kv[0].startswith(w)), len(order))):
        out.append((f"Vault ensure() per model p99, {label}", _num(p.get("p99_ms"), " ms", 1),
                    "≤ 1 s budget" if label.startswith("first") else "-",
                    _verdict(r.get("met")) if label.startswith("first") else "-"))
    return out


def rows_ldap(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for step in r.get("steps", []):
        out.append((f"LDAP sync {r.get('users')} users: {step['step']}", _num(step["seconds"], " s", 2),
                    "0 writes" if step["step"].startswith("unchanged") else "-",
                    _verdict(step["api_writes"] == 0) if step["step"].startswith("unchanged") else "-"))
    return out


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "latency": rows_latency, "bulk": rows_bulk, "memory": rows_memory, "idle": rows_idle,
    "vault": rows_vault, "ldap": rows_ldap,
}


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
    return None


def run(module: str, args: list[str]) -> tuple[dict[str, Any] | None, float]:
    cmd = [sys.executable, "-m", module, *args]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    result = last_json(proc.stdout) if proc.returncode == 0 else None
    if result is None:
        print(f"!!! {module} failed (exit {proc.returncode})", flush=True)
    return result, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=os.environ.get("MLSEC_LOCAL_DIR"))
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--idle-duration", type=float, default=600.0, help="seconds observed idle (600)")
    parser.add_argument("--memory-levels", default="0,1000,5000")
    parser.add_argument("--ldap-result", type=Path, help="saved output of bench/ldap_sync.py")
    parser.add_argument("--with-ldap", action="store_true", help="run bench/ldap_sync.py too")
    args = parser.parse_args(argv)
    chosen = [b for b in args.only.split(",") if b]
    unknown = set(chosen) - set(MODULES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    started_env: Path | None = None
    directory = args.dir
    if directory is None or not (Path(directory) / "state.json").exists():
        directory = Path(tempfile.mkdtemp(prefix="mlsec-bench-env-"))
        print(f"starting a local environment in {directory}", flush=True)
        local.up(directory)
        started_env = directory
    common = ["--dir", str(directory)]
    extra = {"idle": ["--duration", str(args.idle_duration)], "memory": ["--levels", args.memory_levels]}
    results: dict[str, dict[str, Any] | None] = {}
    seconds: dict[str, float] = {}
    try:
        for name in [b for b in BENCHES if b in chosen]:
            results[name], seconds[name] = run(MODULES[name], [*common, *extra.get(name, [])])
        if args.with_ldap:
            cmd = [sys.executable, str(REPO / "bench" / "ldap_sync.py"), *common]
            proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
            sys.stdout.write(proc.stdout)
            results["ldap"] = last_json(proc.stdout)
        elif args.ldap_result:
            results["ldap"] = last_json(args.ldap_result.read_text())
    finally:
        if started_env is not None:
            local.down(started_env)

    rows: list[Row] = []
    for name, result in results.items():
        if result is None:
            rows.append((f"{name}: failed, see its output above", "-", "-", "MISSED"))
        else:
            rows.extend(ROWS[name](result))
    if "ldap" not in results:
        rows.append(("LDAP sync (bench/ldap_sync.py)", "not run", "-", "-"))
    widths = [max(len(r[i]) for r in [("figure", "value", "goal", "verdict"), *rows]) for i in range(4)]
    print("\n\nSummary: every figure against its goal "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())})\n")
    for n, row in enumerate([("figure", "value", "goal", "verdict"), *rows]):
        print("  ".join(cell.ljust(w) if i in (0, 3) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    verdicts = [r[3] for r in rows if r[3] != "-"]
    print(json.dumps({"bench": "all", "results": results,
                      "seconds": {k: round(v) for k, v in seconds.items()},
                      "met": bool(verdicts) and all(v == "met" for v in verdicts)}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
