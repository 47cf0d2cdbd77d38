"""`make demo`: the hospital scenario end to end on the real local environment.

Brings the environment up (or reuses a running one), installs the CRDs and admission policies,
applies the hospital policy with LDAP and Vault pointing at the local slapd and OpenBao, starts
the operator as its own ServiceAccount, and walks a model from staging to production:
bob's promotion is refused until carol (ML lead) and dave (compliance) approve. The
environment and the operator stay up afterwards; `mlsec local down` stops everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mlsec.local import env as local
from mlsec.local import procs, slapd

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "radiology-ml"
MODEL = "mri-classifier"


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def show(cmd: str, out: str) -> None:
    print(f"$ {cmd}")
    print(out.rstrip() if out.strip() else "(no output)", flush=True)


def wait(what: str, check: Callable[[], object], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(1)
    raise SystemExit(f"demo: timed out waiting for {what}")


class Demo:
    def __init__(self, env: local.LocalEnv) -> None:
        self.env = env
        bin_dir = str(Path(sys.executable).parent)
        self.path = f"{bin_dir}{os.pathsep}{env.exports()['PATH']}"  # kubectl finds `kubectl mlsec`

    def kubectl(self, *args: str, user: str = "admin", input: str | None = None,
                check: bool = True, echo: bool = True) -> subprocess.CompletedProcess[str]:
        kubectl = str(self.env.bin("kubectl"))
        # kubectl accepts no flags before a plugin's name: the plugin takes --context itself.
        cmd = ([kubectl, *args, "--context", user] if args[0] == "mlsec"
               else [kubectl, "--context", user, *args])
        proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=120,
                              env={**os.environ, "PATH": self.path, "KUBECONFIG": str(self.env.kubeconfig)})
        if echo:
            shown = " ".join(a for a in args)
            show(f"kubectl --context {user} {shown}", proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise SystemExit(f"demo: kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def get(self, *args: str) -> dict[str, Any]:
        out = self.kubectl("get", *args, "-o", "json", echo=False, check=False).stdout
        return json.loads(out) if out.strip() else {}

    def condition(self, type_: str) -> str | None:
        return _cond(self.get("mld", MODEL, "-n", NAMESPACE), type_)

    # --- steps ---------------------------------------------------------------------------------
    def install(self) -> None:
        say("CRDs and native admission policies (kubectl apply --server-side -f crds/)")
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), echo=False)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l",
                     "app.kubernetes.io/part-of=mlsec-operator")

    def policy(self) -> None:
        say(f"The hospital MLSecurityPolicy in {NAMESPACE} (LDAP: local slapd, Vault: local OpenBao)")
        self.kubectl("create", "namespace", NAMESPACE, check=False, echo=False)
        secrets = [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ldap-bind", "namespace": NAMESPACE},
             "stringData": {"password": self.env.ldap_admin_password}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ldap-ca", "namespace": NAMESPACE},
             "stringData": {"ca.crt": self.env.ca_file.read_text()}},
        ]
        doc = yaml.safe_load((REPO / "manifests/samples/policy-hospital.yaml").read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        ldap = doc["spec"]["ldap"]
        ldap.update({"url": self.env.ldap_url, "startTLS": False, "bindDN": slapd.ADMIN_DN,
                     "caSecretRef": {"name": "ldap-ca", "key": "ca.crt"},
                     "bindPasswordSecretRef": {"name": "ldap-bind", "key": "password"},
                     "userSearchBase": slapd.USERS_OU, "groupSearchBase": slapd.GROUPS_OU,
                     "syncInterval": "1m"})
        doc["spec"]["roleMappings"] = [
            {"ldapGroup": slapd.group_dn(g), "platformRole": r} for g, r in (
                ("data_scientists", "model_developer"), ("ml_engineers", "model_deployer"),
                ("ml_leads", "model_approver"), ("compliance", "compliance_reviewer"))]
        if "vault" in doc["spec"]:
            doc["spec"]["vault"]["address"] = self.env.vault_addr
        self.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all([*secrets, doc]))
        import hvac

        root = hvac.Client(url=self.env.vault_addr, token=self.env.vault_token)
        root.secrets.kv.v2.create_or_update_secret(
            path=f"ml-models/{MODEL}", secret={"learning_rate": "0.001", "threshold": "0.87"})

    def operator(self) -> str:
        say("The operator, as its own ServiceAccount mlsec-system/mlsec-operator")
        kubeconfig = local.operator_kubeconfig(self.env)
        audit = self.env.dir / "audit.jsonl"
        health = procs.free_port()
        cmd = [sys.executable, "-m", "mlsec", "run", "--bind-address", "127.0.0.1",
               "--metrics-port", str(procs.free_port()), "--health-port", str(health),
               "--webhook-port", str(procs.free_port()), "--audit-file", str(audit)]
        old = self.env.pids.get("operator")
        if old and procs.alive(old):
            procs.stop(old)
        environ = {**os.environ, "KUBECONFIG": str(kubeconfig), "VAULT_ADDR": self.env.vault_addr}
        environ.pop("VAULT_TOKEN", None)
        self.env.pids["operator"] = procs.spawn("operator", cmd, self.env.dir / "logs", env=environ)
        self.env.save()
        url = f"http://127.0.0.1:{health}/healthz"
        wait("the operator's /healthz", lambda: urllib.request.urlopen(url, timeout=2).status == 200)
        print(f"operator PID {self.env.pids['operator']}, log {self.env.dir / 'logs/operator.log'}, "
              f"audit trail {audit}")
        return str(audit)

    def scenario(self, audit: str) -> None:
        say("LDAP → RBAC: RoleBindings from group membership")
        managed = "app.kubernetes.io/managed-by=mlsec-operator"
        wait("RoleBindings from LDAP", lambda: len(self.get("rolebindings", "-n", NAMESPACE, "-l", managed)
                                                   .get("items", [])) >= 4)
        self.kubectl("get", "rolebindings", "-n", NAMESPACE, "-l", managed,
                     "-o", "custom-columns=BINDING:.metadata.name,USERS:.subjects[*].name")

        say("alice (data scientist) deploys mri-classifier v3 at staging")
        doc = yaml.safe_load((REPO / "manifests/samples/modeldeployment-mri-classifier.yaml").read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        self.kubectl("apply", "-f", "-", user="alice", input=yaml.safe_dump(doc))
        wait("mri-classifier Ready", lambda: self.condition("Ready") == "True")
        self.kubectl("get", "mld", "-n", NAMESPACE)

        say("bob (ML engineer) tries to promote it to production: refused, and told what is missing")
        self.kubectl("mlsec", "promote", MODEL, "--to", "production", "-n", NAMESPACE, user="bob",
                     check=False)

        say("carol (ML lead) and dave (compliance) approve this exact version and image digest")
        wait("the ledger", lambda: self.get("promotionledger", "promotion-ledger", "-n", NAMESPACE))
        for user in ("carol", "dave"):
            self.kubectl("mlsec", "approve", MODEL, "--version", "3", "-n", NAMESPACE,
                         "--comment", f"reviewed by {user}", user=user)
        wait("approvals counted", lambda: self.condition("PromotionApproved") == "True")
        self.kubectl("get", "mla", "-n", NAMESPACE)

        say("bob promotes again: allowed")
        self.kubectl("mlsec", "promote", MODEL, "--to", "production", "-n", NAMESPACE, user="bob")
        wait("production rollout", lambda: (self.get("deployment", MODEL, "-n", NAMESPACE)["spec"]["template"]
                                            ["metadata"]["labels"]["mlsec.io/stage"] == "production"))
        self.kubectl("mlsec", "status", MODEL, "-n", NAMESPACE, user="bob")

        say("What the operator built")
        self.kubectl("get", "mld", "-n", NAMESPACE, "-o", "wide")
        self.kubectl("get", "serviceaccount,deployment,service,peerauthentication,destinationrule,"
                     "authorizationpolicy,envoyfilter", "-n", NAMESPACE, "-l",
                     "app.kubernetes.io/managed-by=mlsec-operator")
        import hvac

        role = f"mlsec-{NAMESPACE}-{MODEL}"
        client = hvac.Client(url=self.env.vault_addr, token=self.env.vault_token)
        try:
            data = client.auth.kubernetes.read_role(role)
            data = data.get("data", data)
            show(f"bao read auth/kubernetes/role/{role}",
                 yaml.safe_dump({k: data[k] for k in ("bound_service_account_names",
                                                     "bound_service_account_namespaces", "token_policies",
                                                     "token_ttl") if k in data}))
            rules = client.sys.read_policy(role)
            show(f"bao policy read {role}", rules.get("data", rules).get("rules", ""))
        except Exception as exc:
            print(f"(Vault role not readable: {exc})")

        say("The audit trail (hash-chained JSON lines)")
        lines = Path(audit).read_text().splitlines()
        for line in lines:
            rec = json.loads(line)
            if rec["event_type"].startswith(("PROMOTION", "APPROVAL", "RBAC", "VAULT")):
                print(f"{rec['timestamp']} {rec['event_type']:<20} {rec['actor'].get('user_id') or '-':<8}"
                      f" {rec['resource'].get('name') or '-'}: {(rec['result'].get('reason') or '')[:90]}")
        proc = subprocess.run([sys.executable, "-m", "mlsec", "audit", "verify", audit],
                              capture_output=True, text=True)
        show(f"mlsec audit verify {audit}", proc.stdout + proc.stderr)


def _cond(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def main() -> int:
    directory = local.default_dir()
    try:
        env = local.LocalEnv.load(directory)
        ready = env.readiness()
        if not all(ready.values()):
            raise FileNotFoundError
        say(f"Reusing the running local environment in {directory}")
    except (FileNotFoundError, ValueError, KeyError):
        local.down(directory)
        say("Starting the local environment (first run builds the control plane: ~6 min)")
        env = local.up(directory)
    demo = Demo(env)
    demo.install()
    demo.policy()
    audit = demo.operator()
    demo.scenario(audit)
    exports = env.exports()
    say("Explore")
    print(f"""  eval "$({sys.executable} -m mlsec local env)"
  kubectl get mld,mla,mlpol -n {NAMESPACE}
  kubectl --context carol mlsec status {MODEL} -n {NAMESPACE}
  kubectl get promotionledger promotion-ledger -n {NAMESPACE} -o yaml
  VAULT_ADDR={exports['VAULT_ADDR']} bao policy list
  {sys.executable} -m mlsec local down      # stops everything, the operator included""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
