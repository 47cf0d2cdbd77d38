"""The real local environment: etcd, kube-apiserver, kube-controller-manager, slapd, OpenBao.

Everything listens on 127.0.0.1 on free ports. The running environment is described by
``<dir>/state.json`` (ports, PIDs, local-only credentials), which ``down``, ``status``, ``env``
and the test fixtures read. Every process is stopped by its PID.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlsec.local import build, pki, postgres, procs, slapd

USERS = ("alice", "bob", "carol", "dave", "erin")
# Groups the API server authenticates each person with (their LDAP groups, so the promotion gate
# has a fallback source of platform roles until LDAP sync runs).
USER_GROUPS = {u: groups for u, (_, groups) in slapd.PEOPLE.items()}
STOP_ORDER = ("operator", "kube-controller-manager", "kube-apiserver", "openbao", "postgres", "slapd",
              "etcd")
VAULT_AUDIENCE = "vault"


def default_dir() -> Path:
    env = os.environ.get("MLSEC_LOCAL_DIR")
    if env:
        return Path(env)
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "mlsec" / "local"


@dataclass
class LocalEnv:
    """What a client needs to use a running environment (read from state.json)."""

    dir: Path
    pids: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    ldap_admin_password: str = ""
    ldap_user_password: str = ""
    vault_token: str = ""
    pg_password: str = ""
    pg_dir: str = ""  # the PostgreSQL cluster (owned by the postgres user, outside ``dir``)
    bins: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0

    # --- derived locations -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def api_server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def ldap_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ports['ldaps']}"

    @property
    def ldap_plain_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ports['ldap']}"

    @property
    def vault_addr(self) -> str:
        return f"http://127.0.0.1:{self.ports['openbao']}"

    @property
    def pg_url(self) -> str:
        return postgres.url(self.ports["postgres"], self.pg_password)

    @property
    def audit_log(self) -> Path:
        return self.dir / "logs" / "kube-audit.log"

    def bin(self, name: str) -> Path:
        return Path(self.bins[name])

    # --- persistence ----------------------------------------------------------------------
    def save(self) -> None:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        path = self.dir / "state.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, directory: Path | None = None) -> LocalEnv:
        directory = directory or default_dir()
        data = json.loads((directory / "state.json").read_text())
        data["dir"] = Path(data["dir"])
        return cls(**data)

    # --- what a shell needs -------------------------------------------------------------
    def exports(self) -> dict[str, str]:
        path_add = os.pathsep.join(sorted({str(self.bin("kubectl").parent), str(self.bin("helm").parent)}))
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "VAULT_ADDR": self.vault_addr,
            "BAO_ADDR": self.vault_addr,
            "VAULT_TOKEN": self.vault_token,
            "MLSEC_LDAP_URL": self.ldap_url,
            "MLSEC_LDAP_CA_FILE": str(self.ca_file),
            "MLSEC_LDAP_BIND_DN": slapd.ADMIN_DN,
            "MLSEC_LDAP_BIND_PASSWORD": self.ldap_admin_password,
            "MLSEC_LDAP_USER_PASSWORD": self.ldap_user_password,
            "MLSEC_LOCAL_DIR": str(self.dir),
            "MLSEC_PG_URL": self.pg_url,
            "PATH": f"{path_add}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # --- probes ------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def api_ready(self) -> bool:
        req = urllib.request.Request(
            f"{self.api_server}/readyz", headers={"Authorization": f"Bearer {self.tokens['admin']}"}
        )
        with urllib.request.urlopen(req, context=self._ssl(), timeout=2) as resp:
            return bool(resp.status == 200)

    def etcd_ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['etcd']}/health", timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")

    def vault_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.vault_addr}/v1/sys/health", timeout=2) as r:
            return bool(r.status == 200)

    def ldap_ready(self) -> bool:
        import ldap3

        from mlsec.clients.ldap import VerifyingTls, tls_context

        # The operator's own TLS check (ldap3's own host name match misses IP SANs on 3.12+).
        tls = VerifyingTls(tls_context(self.ca_file.read_text()))
        server = ldap3.Server(self.ldap_url, use_ssl=True, tls=tls, connect_timeout=2)
        conn = ldap3.Connection(server, slapd.ADMIN_DN, self.ldap_admin_password, receive_timeout=2)
        try:
            return bool(conn.bind())
        finally:
            conn.unbind()

    def pg_ready(self) -> bool:
        return postgres.ready(self.ports["postgres"])

    def kcm_ready(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its serving cert is self-signed; we only ask /healthz
        url = f"https://127.0.0.1:{self.ports['kube-controller-manager']}/healthz"
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)

    def readiness(self) -> dict[str, bool]:
        probes = {
            "etcd": self.etcd_ready, "kube-apiserver": self.api_ready,
            "kube-controller-manager": self.kcm_ready, "slapd": self.ldap_ready,
            "openbao": self.vault_ready, "postgres": self.pg_ready,
        }
        out: dict[str, bool] = {}
        for name, probe in probes.items():
            try:
                out[name] = procs.alive(self.pids.get(name, -1)) and probe()
            except Exception:
                out[name] = False
        return out

    def kubectl(self, *args: str, user: str = "admin", check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin("kubectl")), "--kubeconfig", str(self.kubeconfig), "--context", user, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc


class AlreadyRunning(RuntimeError):
    pass


def _running(directory: Path) -> LocalEnv | None:
    if not (directory / "state.json").exists():
        return None
    try:
        env = LocalEnv.load(directory)
    except (ValueError, TypeError, KeyError):
        return None
    return env if any(procs.alive(p) for p in env.pids.values()) else None


def _kubeconfig(env: LocalEnv) -> dict[str, Any]:
    ca = base64.b64encode(env.ca_file.read_bytes()).decode()
    names = ("admin", *USERS)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlsec-local", "cluster": {"server": env.api_server,
                                                          "certificate-authority-data": ca}}],
        "users": [{"name": n, "user": {"token": env.tokens[n]}} for n in names],
        "contexts": [{"name": n, "context": {"cluster": "mlsec-local", "user": n}} for n in names],
        "current-context": "admin",
    }


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Writes only, metadata only: enough to count who wrote what (tests count idle writes).
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


def _write_pki(env: LocalEnv) -> None:
    d = env.dir / "pki"
    d.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca()
    ca.write(d / "ca.crt", d / "ca.key")
    serving = pki.issue(ca, "kube-apiserver", dns_names=(
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local"), ips=("127.0.0.1", "10.96.0.1"))
    serving.write(d / "apiserver.crt", d / "apiserver.key")
    ldap = pki.issue(ca, "localhost", dns_names=("localhost",), ips=("127.0.0.1",))
    ldap.write(d / "ldap.crt", d / "ldap.key")
    sa = d / "sa.key"
    sa.touch(mode=0o600)
    sa.write_bytes(pki.make_rsa_key_pem())


def _start_etcd(env: LocalEnv) -> None:
    p, peer = env.ports["etcd"], env.ports["etcd-peer"]
    env.pids["etcd"] = procs.spawn("etcd", [
        env.bins["etcd"], "--name", "mlsec", "--data-dir", str(env.dir / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{p}", "--advertise-client-urls", f"http://127.0.0.1:{p}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"mlsec=http://127.0.0.1:{peer}",
        "--unsafe-no-fsync",  # throw-away test data: durability is not worth the latency here
        "--log-level", "warn",
    ], env.dir / "logs")


def _start_apiserver(env: LocalEnv) -> None:
    d = env.dir
    tokens = d / "tokens.csv"
    tokens.touch(mode=0o600)
    lines = [f'{env.tokens["admin"]},admin,admin,"system:masters"']
    for u in USERS:
        groups = ",".join(USER_GROUPS[u]) or "mlsec:people"
        lines.append(f'{env.tokens[u]},{u},{u},"{groups}"')
    tokens.write_text("\n".join(lines) + "\n")
    (d / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
    env.pids["kube-apiserver"] = procs.spawn("kube-apiserver", [
        env.bins["kube-apiserver"],
        f"--etcd-servers=http://127.0.0.1:{env.ports['etcd']}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        # No kubelet or kube-proxy here: the "kubernetes" Service needs no endpoints.
        "--endpoint-reconciler-type=none",
        f"--secure-port={env.ports['kube-apiserver']}",
        f"--cert-dir={d / 'apiserver'}",
        f"--tls-cert-file={d / 'pki/apiserver.crt'}", f"--tls-private-key-file={d / 'pki/apiserver.key'}",
        f"--client-ca-file={d / 'pki/ca.crt'}",
        "--authorization-mode=Node,RBAC",
        f"--token-auth-file={tokens}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={d / 'pki/sa.key'}",
        f"--service-account-signing-key-file={d / 'pki/sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
        "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        f"--audit-policy-file={d / 'audit-policy.yaml'}", f"--audit-log-path={env.audit_log}",
        "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        "--profiling=false", "--v=1",
    ], d / "logs")


def _start_kcm(env: LocalEnv) -> None:
    kc = env.dir / "kcm.kubeconfig"
    cfg = _kubeconfig(env)
    kc.touch(mode=0o600)
    kc.write_text(yaml.safe_dump(cfg))
    env.pids["kube-controller-manager"] = procs.spawn("kube-controller-manager", [
        env.bins["kube-controller-manager"], f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--leader-elect=false", "--bind-address=127.0.0.1",
        f"--secure-port={env.ports['kube-controller-manager']}",
        f"--cert-dir={env.dir / 'kcm'}",
        "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller",
        "--concurrent-gc-syncs=5", "--v=1",
    ], env.dir / "logs")


def _start_slapd(env: LocalEnv) -> None:
    paths = slapd.SlapdPaths(env.dir / "slapd")
    pk = env.dir / "pki"
    slapd.write_config(paths, env.ldap_admin_password, pk / "ca.crt", pk / "ldap.crt", pk / "ldap.key")
    urls = f"ldap://127.0.0.1:{env.ports['ldap']}/ ldaps://127.0.0.1:{env.ports['ldaps']}/"
    # -d 0 keeps slapd in the foreground, so the PID we hold is the server's.
    env.pids["slapd"] = procs.spawn("slapd", [slapd.slapd_bin(), "-f", str(paths.conf), "-h", urls,
                                              "-d", "0"], env.dir / "logs")


def _seed_ldap(env: LocalEnv) -> None:
    import ldap3

    server = ldap3.Server(env.ldap_plain_url, connect_timeout=5)
    with ldap3.Connection(server, slapd.ADMIN_DN, env.ldap_admin_password, auto_bind=True) as conn:
        for dn, attrs in slapd.seed_entries(env.ldap_user_password):
            object_class = attrs.pop("objectClass")
            if not conn.add(dn, object_class, attrs):
                raise RuntimeError(f"seeding LDAP failed at {dn}: {conn.result['description']}")


def _start_openbao(env: LocalEnv) -> None:
    # OpenBao refuses audit devices over the API unless told otherwise; the local environment lets
    # tests switch the device off and on (issue 12), a production server would declare it in HCL.
    config = env.dir / "openbao.hcl"
    config.write_text("unsafe_allow_api_audit_creation = true\n")
    env.pids["openbao"] = procs.spawn("openbao", [
        env.bins["bao"], "server", "-dev", f"-config={config}", f"-dev-root-token-id={env.vault_token}",
        f"-dev-listen-address=127.0.0.1:{env.ports['openbao']}", "-log-level=warn",
    ], env.dir / "logs", env={k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))})


OPERATOR_NAMESPACE = "mlsec-system"
OPERATOR_SERVICE_ACCOUNT = "mlsec-operator"
OPERATOR_VAULT_ROLE = "mlsec-operator"  # also the name of its Vault policy


def operator_vault_policy(k8s_mount: str = "kubernetes", transit_mount: str = "transit",
                          ldap_mount: str = "ldap") -> str:
    """What the operator itself may do in Vault: manage mlsec-* model policies, roles and keys."""
    return f"""# mlsec-operator: per-model ACL policies and Kubernetes auth roles (mlsec-<namespace>-<model>).
path "sys/policies/acl/mlsec-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

path "auth/{k8s_mount}/role/mlsec-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

# People's access (spec.vault.ldapAuthMount): mlsec-<namespace>-<role> policies (above) and the
# LDAP auth group entries that carry them; mlsec only adds and removes its own names there.
path "sys/policies/acl" {{
  capabilities = ["list"]
}}

path "auth/{ldap_mount}/groups" {{
  capabilities = ["list"]
}}

path "auth/{ldap_mount}/groups/*" {{
  capabilities = ["create", "read", "update", "list"]
}}

# Transit keys of pii/phi models: created, never deleted (encrypted data must stay readable).
path "{transit_mount}/keys/mlsec-*" {{
  capabilities = ["create", "read", "update"]
}}

# vault.requireAuditDevice: listing the audit devices needs sudo.
path "sys/audit" {{
  capabilities = ["read", "sudo"]
}}

# Its own policy and role match the globs above: the operator must not widen its own rights.
path "sys/policies/acl/{OPERATOR_VAULT_ROLE}" {{
  capabilities = ["deny"]
}}

path "auth/{k8s_mount}/role/{OPERATOR_VAULT_ROLE}" {{
  capabilities = ["deny"]
}}
"""


def _configure_openbao(env: LocalEnv) -> None:
    """Play the Vault administrator: kubernetes auth against our API server, a file audit device,
    and the operator's own identity (ServiceAccount mlsec-system/mlsec-operator, its Vault policy
    and Kubernetes auth role)."""
    import hvac

    client = hvac.Client(url=env.vault_addr, token=env.vault_token)
    methods = client.sys.list_auth_methods()["data"]
    if "kubernetes/" not in methods:
        client.sys.enable_auth_method("kubernetes")
    _configure_openbao_people(env, client, "ldap/" in methods)
    client.auth.kubernetes.configure(
        kubernetes_host=env.api_server,
        kubernetes_ca_cert=env.ca_file.read_text(),
        token_reviewer_jwt=env.tokens["admin"],
        disable_local_ca_jwt=True,
    )
    audit = env.dir / "logs" / "openbao-audit.log"
    if "file/" not in client.sys.list_enabled_audit_devices()["data"]:
        client.sys.enable_audit_device("file", options={"file_path": str(audit)})
    env.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": OPERATOR_SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}},
    ]))
    client.sys.create_or_update_acl_policy(OPERATOR_VAULT_ROLE, operator_vault_policy())
    client.write_data(f"auth/kubernetes/role/{OPERATOR_VAULT_ROLE}", data={
        "bound_service_account_names": [OPERATOR_SERVICE_ACCOUNT],
        "bound_service_account_namespaces": [OPERATOR_NAMESPACE],
        "audience": VAULT_AUDIENCE, "alias_name_source": "serviceaccount_uid",
        "token_policies": [OPERATOR_VAULT_ROLE], "token_ttl": "15m", "token_max_ttl": "1h",
    })


def _configure_openbao_people(env: LocalEnv, client: Any, ldap_enabled: bool) -> None:
    """Issue 12: LDAP auth against our slapd (ldaps, our CA), the database engine on our
    PostgreSQL with role mri-preprocessing-role, and transit."""
    if not ldap_enabled:
        client.sys.enable_auth_method("ldap")
    client.write_data("auth/ldap/config", data={
        "url": env.ldap_url, "certificate": env.ca_file.read_text(), "insecure_tls": False,
        "binddn": slapd.ADMIN_DN, "bindpass": env.ldap_admin_password,
        "userdn": slapd.USERS_OU, "userattr": "uid", "groupdn": slapd.GROUPS_OU,
        "groupfilter": "(&(objectClass=groupOfNames)(member={{.UserDN}}))", "groupattr": "cn",
        "token_ttl": "1h",
    })
    engines = client.sys.list_mounted_secrets_engines()["data"]
    if "transit/" not in engines:
        client.sys.enable_secrets_engine("transit", path="transit")
    if "database/" not in engines:
        client.sys.enable_secrets_engine("database", path="database")
    client.write_data("database/config/postgresql", data={
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:"
                          f"{env.ports['postgres']}/{postgres.DATABASE}?sslmode=disable",
        "username": postgres.SUPERUSER, "password": env.pg_password,
        "allowed_roles": [postgres.DB_ROLE], "password_authentication": "scram-sha-256",
    })
    client.write_data(f"database/roles/{postgres.DB_ROLE}", data={
        "db_name": "postgresql", "creation_statements": postgres.CREATION_STATEMENTS,
        "default_ttl": "1h", "max_ttl": "24h",
    })


def _postgres_setup(env: LocalEnv, timeout: float) -> None:
    root, current = postgres.make_cluster(env.pg_password)
    env.pg_dir = str(root)
    env.pids["postgres"] = postgres.start(root, env.ports["postgres"], env.dir / "logs")
    procs.wait_for("postgres", lambda: postgres.ready(env.ports["postgres"]), timeout,
                   env.pids["postgres"], env.dir / "logs" / "postgres.log")
    postgres.set_password(env.ports["postgres"], current, env.pg_password)


def _apply_crds(env: LocalEnv) -> None:
    """The Istio CRDs and the OpenReports CRDs (Report, ClusterReport: where the compliance
    reports go; clusters running Kyverno have them already, the chart installs them on request)."""
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", env.bins["istio-crds"])
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", env.bins["openreports-crds"])
    env.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


def up(directory: Path | None = None, *, timeout: float = 90.0) -> LocalEnv:
    directory = (directory or default_dir()).absolute()
    running = _running(directory)
    if running:
        raise AlreadyRunning(f"a local environment is already running in {directory} "
                             f"(PIDs {sorted(running.pids.values())}); `mlsec local down` first")
    bins = {k: str(v) for k, v in build.ensure_all().items()}
    started = time.monotonic()
    if directory.exists():
        for child in directory.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    (directory / "logs").mkdir(parents=True)
    directory.chmod(0o700)
    env = LocalEnv(
        dir=directory, bins=bins, started_at=time.time(),
        ports={n: procs.free_port() for n in (
            "etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "ldap", "ldaps", "openbao",
            "postgres")},
        tokens={u: secrets.token_urlsafe(24) for u in ("admin", *USERS)},
        ldap_admin_password=secrets.token_urlsafe(18),
        ldap_user_password=secrets.token_urlsafe(12),
        vault_token=f"root-{secrets.token_hex(12)}",
        pg_password=secrets.token_urlsafe(18),
    )
    _write_pki(env)
    env.kubeconfig.touch(mode=0o600)
    env.kubeconfig.write_text(yaml.safe_dump(_kubeconfig(env)))
    logs = directory / "logs"
    pool = ThreadPoolExecutor(3)
    try:
        pg_done = pool.submit(_postgres_setup, env, timeout)
        _start_etcd(env)
        _start_slapd(env)
        _start_openbao(env)
        env.save()
        procs.wait_for("etcd", env.etcd_ready, timeout, env.pids["etcd"], logs / "etcd.log")
        _start_apiserver(env)
        env.save()
        with pool:
            ldap_done = pool.submit(_ldap_setup, env, timeout)
            procs.wait_for("kube-apiserver", env.api_ready, timeout, env.pids["kube-apiserver"],
                           logs / "kube-apiserver.log")
            _start_kcm(env)
            env.save()
            crds_done = pool.submit(_apply_crds, env)
            procs.wait_for("openbao", env.vault_ready, timeout, env.pids["openbao"], logs / "openbao.log")
            pg_done.result()
            env.save()
            _configure_openbao(env)
            procs.wait_for("kube-controller-manager", env.kcm_ready, timeout,
                           env.pids["kube-controller-manager"], logs / "kube-controller-manager.log")
            ldap_done.result()
            crds_done.result()
    except BaseException:
        pool.shutdown(wait=True)
        env.save()
        down(directory)
        raise
    env.save()
    build._say(f"local environment ready in {time.monotonic() - started:.1f}s ({directory})")
    return env


def _ldap_setup(env: LocalEnv, timeout: float) -> None:
    logs = env.dir / "logs"
    procs.wait_for("slapd", env.ldap_ready, timeout, env.pids["slapd"], logs / "slapd.log")
    _seed_ldap(env)


def down(directory: Path | None = None) -> list[str]:
    """Stop every process of the environment by PID; return the names stopped."""
    directory = (directory or default_dir()).absolute()
    if not (directory / "state.json").exists():
        return []
    env = LocalEnv.load(directory)
    stopped = []
    for name in (*STOP_ORDER, *(n for n in env.pids if n not in STOP_ORDER)):
        pid = env.pids.get(name)
        if pid and procs.alive(pid):
            procs.stop(pid)
            stopped.append(name)
    if env.pg_dir:
        postgres.remove(env.pg_dir)
        env.pg_dir = ""
    env.pids = {}
    env.save()
    return stopped


def stop_component(env: LocalEnv, name: str) -> None:
    """Stop one component (fault tests: LDAP, Vault or API server outages)."""
    pid = env.pids.get(name)
    if pid and procs.alive(pid):
        procs.stop(pid)
    env.save()


def start_component(env: LocalEnv, name: str, timeout: float = 60.0) -> None:
    """Start a stopped component again on the same port, with the same data where it has any.

    OpenBao runs in dev mode (in-memory storage): a restart brings back an empty server, which is
    configured again as at ``up`` — the operator must rewrite what it manages (level-based).
    """
    logs = env.dir / "logs"
    if name == "slapd":
        _start_slapd(env)
        procs.wait_for("slapd", env.ldap_ready, timeout, env.pids["slapd"], logs / "slapd.log")
    elif name == "openbao":
        _start_openbao(env)
        procs.wait_for("openbao", env.vault_ready, timeout, env.pids["openbao"], logs / "openbao.log")
        _configure_openbao(env)
    elif name == "kube-apiserver":
        _start_apiserver(env)
        procs.wait_for("kube-apiserver", env.api_ready, timeout, env.pids["kube-apiserver"],
                       logs / "kube-apiserver.log")
    else:
        raise ValueError(f"cannot restart {name}")
    env.save()


def operator_kubeconfig(env: LocalEnv, path: Path | None = None, duration: str = "24h") -> Path:
    """A kubeconfig for the operator's own ServiceAccount with its generated least-privilege RBAC
    (mlsec.config.rbac): the identity the admission policies trust to write the ledger."""
    from mlsec.config import rbac

    env.kubectl("create", "namespace", rbac.NAMESPACE, check=False)
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                input=yaml.safe_dump_all(rbac.manifests()))
    token = env.kubectl("create", "token", rbac.NAME, "-n", rbac.NAMESPACE,
                        f"--duration={duration}").stdout.strip()
    cfg = yaml.safe_load(env.kubeconfig.read_text())
    cfg["users"] = [{"name": "operator", "user": {"token": token}}]
    cfg["contexts"] = [{"name": "operator", "context": {"cluster": "mlsec-local", "user": "operator"}}]
    cfg["current-context"] = "operator"
    path = path or env.dir / "operator.kubeconfig"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(cfg))
    return path
