"""Benchmark: LDAP → RBAC sync of 10,000 users in 200 groups against the real local environment.

    .venv/bin/mlsec local up --dir /tmp/env-bench          # or reuse any running environment
    .venv/bin/python bench/ldap_sync.py --dir /tmp/env-bench

Loads the users and groups into the environment's slapd (ldap3, once; reused on later runs), then
runs the operator's own sync (mlsec.handlers.rbac.sync_namespace, real LDAPS and real API server,
no operator process) three times: first sync, unchanged second sync, and a sync after one user
left one group. Prints a table and, last, one JSON line. Not part of `make test`.

The policy maps five "role" groups; each holds 40 of the 200 generated groups as nested members
(roleMappings allow at most 64 entries), so nested resolution is exercised at full size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import ldap3

from mlsec.api import PlatformRole
from mlsec.audit import AuditLog
from mlsec.clients.kube import Kube, load_api_client
from mlsec.handlers import context, rbac
from mlsec.local import env as local
from mlsec.local import slapd

ROLES = [r.value for r in PlatformRole]
REPO = Path(__file__).resolve().parents[1]


class CountingKube(Kube):
    """The operator's client, counting API calls by verb and kind."""

    def __init__(self, kubeconfig: Path, context_name: str = "admin") -> None:
        super().__init__(load_api_client(str(kubeconfig), context_name))
        self.calls: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def apply(self, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self._count(f"apply {obj['kind']}")
        return super().apply(obj, **kw)

    def apply_status(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self._count("apply status")
        return super().apply_status(*args, **kw)

    def delete(self, api_version: str, kind: str, *args: Any) -> bool:
        self._count(f"delete {kind}")
        return super().delete(api_version, kind, *args)

    def get(self, api_version: str, kind: str, *args: Any) -> dict[str, Any] | None:
        self._count(f"get {kind}")
        return super().get(api_version, kind, *args)

    def list(self, api_version: str, kind: str, *args: Any, **kw: Any) -> list[dict[str, Any]]:
        self._count(f"list {kind}")
        return super().list(api_version, kind, *args, **kw)

    def take(self) -> dict[str, int]:
        out, self.calls = self.calls, {}
        return out


def writes(calls: dict[str, int]) -> int:
    return sum(n for k, n in calls.items() if k.split()[0] in ("apply", "delete", "create", "patch"))


# --- directory ---------------------------------------------------------------------------------


def _ou(name: str) -> str:
    return f"ou={name},{slapd.BASE}"


def load_directory(env: local.LocalEnv, users: int, groups: int, per_user: int) -> tuple[str, str, float]:
    """Create (once) ``users`` users and ``groups`` groups; return (user base, group base, seconds)."""
    tag = f"bench-{users}-{groups}-{per_user}"
    user_base, group_base = _ou(f"{tag}-users"), _ou(f"{tag}-groups")
    server = ldap3.Server(env.ldap_plain_url, connect_timeout=5)  # loading local test data only
    conn = ldap3.Connection(server, slapd.ADMIN_DN, env.ldap_admin_password, auto_bind=True)
    started = time.perf_counter()
    conn.search(group_base, "(cn=bench-role-*)", attributes=["cn"])
    if len(conn.entries) == len(ROLES):
        print(f"reusing {users} users / {groups} groups already in slapd ({tag})", file=sys.stderr)
        return user_base, group_base, 0.0
    for ou in (user_base, group_base):
        conn.add(ou, ["organizationalUnit"], {"ou": ou.split(",")[0][3:]})
    for i in range(users):
        uid = f"u{i:05d}"
        ok = conn.add(f"uid={uid},{user_base}", ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": uid})
        if not ok and conn.result["description"] != "entryAlreadyExists":
            raise RuntimeError(f"adding {uid}: {conn.result}")
        if i and i % 2000 == 0:
            print(f"  {i} users ({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    members: dict[int, list[str]] = {g: [] for g in range(groups)}
    for i in range(users):
        for k in range(per_user):
            members[(i * 7 + k * 31) % groups].append(f"uid=u{i:05d},{user_base}")
    for g, dns in members.items():
        conn.add(f"cn=bench-g{g:03d},{group_base}", ["groupOfNames"],
                 {"cn": f"bench-g{g:03d}", "member": dns or [slapd.ADMIN_DN]})
    for r, role in enumerate(ROLES):
        nested = [f"cn=bench-g{g:03d},{group_base}" for g in range(groups) if g % len(ROLES) == r]
        conn.add(f"cn=bench-role-{role},{group_base}", ["groupOfNames"],
                 {"cn": f"bench-role-{role}", "member": nested})
    conn.unbind()
    return user_base, group_base, time.perf_counter() - started


# --- policy ------------------------------------------------------------------------------------


def create_policy(kube: Kube, env: local.LocalEnv, namespace: str, user_base: str,
                  group_base: str) -> None:
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    env.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l",
                "app.kubernetes.io/part-of=mlsec-operator")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for name, key, value in (("ldap-bind", "password", env.ldap_admin_password.encode()),
                             ("ldap-ca", "ca.crt", env.ca_file.read_bytes())):
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                    "data": {key: base64.b64encode(value).decode()}})
    kube.create({
        "apiVersion": "mlsec.io/v1alpha1", "kind": "MLSecurityPolicy",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {
            "ldap": {"url": env.ldap_url, "caSecretRef": {"name": "ldap-ca", "key": "ca.crt"},
                     "bindDN": slapd.ADMIN_DN,
                     "bindPasswordSecretRef": {"name": "ldap-bind", "key": "password"},
                     "userSearchBase": user_base, "groupSearchBase": group_base, "syncInterval": "5m"},
            "roleMappings": [{"ldapGroup": f"cn=bench-role-{r},{group_base}", "platformRole": r}
                             for r in ROLES],
            "promotion": {"production": {"requiredApprovals": [
                {"platformRole": "model_approver", "count": 1}]}},
        },
    })


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=os.environ.get("MLSEC_LOCAL_DIR"),
                        help="directory of a running local environment (default: MLSEC_LOCAL_DIR)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--groups-per-user", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark namespace")
    args = parser.parse_args()

    env = local.LocalEnv.load(args.dir)

    user_base, group_base, load_seconds = load_directory(env, args.users, args.groups, args.groups_per_user)
    admin = CountingKube(env.kubeconfig)  # sets up and removes the namespace, as a person would
    # The sync as the operator's ServiceAccount: its RBAC, and the only identity whose status
    # writes the API server admits (ValidatingAdmissionPolicy mlsec-status-guard).
    operator_config = local.operator_kubeconfig(env, env.dir / "bench-ldap-operator.kubeconfig")
    kube = CountingKube(operator_config, "operator")
    context.kube = lambda: kube  # type: ignore[method-assign,assignment]
    audit = AuditLog(env.dir / "bench-ldap-audit.jsonl", sink=None)
    context.audit = lambda: audit  # type: ignore[method-assign,assignment]

    namespace = f"bench-ldap-{uuid.uuid4().hex[:6]}"
    create_policy(admin, env, namespace, user_base, group_base)
    kube.take()
    rows: list[dict[str, Any]] = []
    try:
        for label in ("first sync", "unchanged second sync", "one user left one group"):
            if label.startswith("one user"):
                _drop_one_membership(env, group_base, user_base)
            body = kube.get("mlsec.io/v1alpha1", "MLSecurityPolicy", namespace, "default")
            assert body is not None
            kube.take()
            started = time.perf_counter()
            report = rbac.sync_namespace(namespace, body)
            seconds = time.perf_counter() - started
            if report is None:
                status = kube.get("mlsec.io/v1alpha1", "MLSecurityPolicy", namespace, "default")
                raise SystemExit(f"sync failed: {json.dumps((status or {}).get('status'))}")
            calls = kube.take()
            rows.append({
                "step": label, "seconds": round(seconds, 3), "ldap_seconds": round(report.ldap_seconds, 3),
                "rbac_writes": len(report.written) + len(report.deleted), "api_writes": writes(calls),
                "api_reads": sum(calls.values()) - writes(calls), "users": report.users,
                "groups": report.groups, "calls": calls,
            })
        sizes = {b["metadata"]["name"]: len(json.dumps(b)) for b in
                 kube.list("rbac.authorization.k8s.io/v1", "RoleBinding", namespace)}
    finally:
        _restore_membership(env, group_base, user_base)
        if not args.keep:
            admin.delete("v1", "Namespace", None, namespace)
        audit.close()

    print(f"\nLDAP → RBAC sync: {args.users} users, {args.groups} groups (+5 role groups nesting them), "
          f"{args.groups_per_user} groups per user; load {load_seconds:.1f}s\n")
    print(f"{'step':<26}{'total s':>9}{'LDAP s':>9}{'RBAC writes':>13}{'API writes':>12}{'API reads':>11}"
          f"{'users':>8}")
    for r in rows:
        print(f"{r['step']:<26}{r['seconds']:>9.2f}{r['ldap_seconds']:>9.2f}{r['rbac_writes']:>13}"
              f"{r['api_writes']:>12}{r['api_reads']:>11}{r['users']:>8}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nRoleBinding sizes (bytes): {sizes}; peak RSS {peak_mib:.0f} MiB")
    print(json.dumps({"bench": "ldap_sync", "users": args.users, "groups": args.groups,
                      "groups_per_user": args.groups_per_user, "load_seconds": round(load_seconds, 1),
                      "steps": rows, "rolebinding_bytes": sizes, "peak_rss_mib": round(peak_mib)}))
    return 0


def _drop_one_membership(env: local.LocalEnv, group_base: str, user_base: str) -> None:
    with ldap3.Connection(ldap3.Server(env.ldap_plain_url), slapd.ADMIN_DN, env.ldap_admin_password,
                          auto_bind=True) as conn:
        conn.modify(f"cn=bench-g000,{group_base}",
                    {"member": [(ldap3.MODIFY_DELETE, [f"uid=u00000,{user_base}"])]})


def _restore_membership(env: local.LocalEnv, group_base: str, user_base: str) -> None:
    with ldap3.Connection(ldap3.Server(env.ldap_plain_url), slapd.ADMIN_DN, env.ldap_admin_password,
                          auto_bind=True) as conn:
        conn.modify(f"cn=bench-g000,{group_base}",
                    {"member": [(ldap3.MODIFY_ADD, [f"uid=u00000,{user_base}"])]})


if __name__ == "__main__":
    sys.exit(main())
