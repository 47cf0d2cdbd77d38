"""Benchmark: Vault writes per model — time of the operator's Vault step, ensure(), per model.

    .venv/bin/python -m bench.vault_writes --dir /tmp/env-bench [--models 200]

mlsec.handlers.vault.ensure() runs against the environment's OpenBao with the operator's own
client (Kubernetes auth as its ServiceAccount, as deployed) for ``--models`` models with two
secrets each: first when nothing exists (reads, then writes the policy and the role), then again
unchanged (reads only: what every reconcile and resync pays), then after OpenBao lost everything
(a dev-mode restart: everything rewritten). p50/p99 per model for each pass. Only the time inside
ensure() is measured (no API server involved); the Vault HTTP requests are counted from
OpenBao's audit log. No goal is set by the issue; the reconcile budget (p99 ≤ 1 s for the whole
reconcile) is the yardstick: the table shows ensure()'s share of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import hvac
import hvac.exceptions

from bench import common as c
from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.audit import AuditLog
from mlsec.builders import vault as build
from mlsec.clients.kube import load_api_client
from mlsec.clients.vault import KubernetesLogin, Vault, token_request
from mlsec.handlers import context
from mlsec.handlers import vault as vault_step
from mlsec.local import env as local

RECONCILE_BUDGET_S = 1.0


def openbao_requests(env: local.LocalEnv, offset: int) -> Counter[str]:
    """Requests in OpenBao's audit log from byte ``offset`` on, by operation and path kind."""
    path = env.dir / "logs" / "openbao-audit.log"
    out: Counter[str] = Counter()
    if not path.exists():
        return out
    with path.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("type") != "response":
                continue
            req = entry.get("request") or {}
            p = str(req.get("path", ""))
            kind = ("policy" if p.startswith("sys/policies/acl/") or p.startswith("sys/policy/")
                    else "role" if "/role/" in p else "login" if "/login" in p else p.split("/")[0])
            out[f"{req.get('operation')} {kind}"] += 1
    return out


def log_size(env: local.LocalEnv) -> int:
    path = env.dir / "logs" / "openbao-audit.log"
    return path.stat().st_size if path.exists() else 0


def timed_pass(models: list[ModelDeployment], pol: MLSecurityPolicy, client: Vault,
               expect: str) -> list[float]:
    out = []
    for md in models:
        t0 = time.perf_counter()
        outcome = vault_step.ensure(md, pol, client)
        out.append(time.perf_counter() - t0)
        if not outcome.ok or (expect and outcome.reason != expect):
            raise SystemExit(f"ensure({md.metadata.name}) gave {outcome.reason}: {outcome.message}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_env_args(parser)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--no-restart", action="store_true",
                        help="skip the pass after an OpenBao restart")
    args = parser.parse_args(argv)

    env = c.load_env(args.dir)
    local.operator_kubeconfig(env, env.dir / "bench-operator.kubeconfig")  # the SA and its RBAC
    admin = load_api_client(str(env.kubeconfig), "admin")
    jwt = token_request(admin, local.OPERATOR_NAMESPACE, local.OPERATOR_SERVICE_ACCOUNT)
    client = Vault(env.vault_addr, KubernetesLogin(local.OPERATOR_VAULT_ROLE, jwt))
    ns = f"bench-vault-{uuid.uuid4().hex[:6]}"  # Vault only: no namespace is needed
    pol = MLSecurityPolicy.model_validate(c.policy_body(ns, vault_addr=env.vault_addr))
    models = []
    for i in range(args.models):
        body = c.model_body(ns, f"v-{i:04d}", vault=True)
        body["metadata"]["uid"] = str(uuid.uuid4())
        models.append(ModelDeployment.model_validate(body))
    audit = AuditLog(env.dir / "bench-vault-audit.jsonl", sink=None)  # the records, not on stdout
    context.audit = lambda: audit  # type: ignore[assignment]
    client.login()

    passes: list[tuple[str, list[float], Counter[str]]] = []
    try:
        for label, expect in (("first (nothing in Vault)", "Written"), ("unchanged", "InSync")):
            offset = log_size(env)
            passes.append((label, timed_pass(models, pol, client, expect), Counter()))
            time.sleep(0.5)
            passes[-1][2].update(openbao_requests(env, offset))
        if not args.no_restart:
            c.say("restarting OpenBao (dev mode: it comes back empty)")
            local.stop_component(env, "openbao")
            local.start_component(env, "openbao")
            offset = log_size(env)
            passes.append(("after OpenBao restart", timed_pass(models, pol, client, "Written"), Counter()))
            time.sleep(0.5)
            passes[-1][2].update(openbao_requests(env, offset))
    finally:
        root = hvac.Client(url=env.vault_addr, token=env.vault_token)
        for md in models:
            name = build.vault_name(md)
            with contextlib.suppress(hvac.exceptions.VaultError):
                root.delete(f"auth/kubernetes/role/{name}")
            with contextlib.suppress(hvac.exceptions.VaultError):
                root.sys.delete_policy(name)

    rows: list[tuple[Any, ...]] = []
    result: dict[str, Any] = {"bench": "vault_writes", "models": args.models, "passes": {}}
    for label, times, requests in passes:
        p50, p99 = c.percentile(times, 50), c.percentile(times, 99)
        per_model = sum(requests.values()) / len(times) if requests else float("nan")
        rows.append((label, len(times), p50 * 1000, p99 * 1000, max(times) * 1000, per_model,
                     f"{p99 / RECONCILE_BUDGET_S:.1%}"))
        result["passes"][label] = {"p50_ms": round(p50 * 1000, 2), "p99_ms": round(p99 * 1000, 2),
                                   "max_ms": round(max(times) * 1000, 2),
                                   "vault_requests_per_model": round(per_model, 2),
                                   "vault_requests": dict(requests)}
    print(c.table(f"\nVault step per model (ensure(), 2 secrets each, OpenBao {env.vault_addr}); "
                  f"load {c.load_average()}",
                  ["pass", "models", "p50 ms", "p99 ms", "max ms", "Vault requests/model",
                   "p99 of 1 s budget"], rows))
    for label, _, requests in passes:
        print(f"  {label}: " + ", ".join(f"{k}: {n}" for k, n in requests.most_common()))
    write_p99 = result["passes"][passes[0][0]]["p99_ms"] / 1000
    result.update({"p99_write_s": write_p99, "p99_insync_s": result["passes"]["unchanged"]["p99_ms"] / 1000,
                   "goal": {"note": "none set; share of the 1 s reconcile budget"},
                   "met": write_p99 <= RECONCILE_BUDGET_S})
    c.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
