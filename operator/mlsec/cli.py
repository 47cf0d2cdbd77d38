"""The ``mlsec`` command: the operator, the local environment, CRD generation, audit checks."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def _local(args: argparse.Namespace) -> int:
    from mlsec.local import env as local

    directory = Path(args.dir) if args.dir else None
    if args.action == "up":
        try:
            e = local.up(directory)
        except local.AlreadyRunning as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"Local environment is up in {e.dir}.\n"
              f"  eval \"$(mlsec local env)\"   # then: kubectl get ns, kubectl --context alice …\n"
              f"  mlsec local down              # stop everything")
        return 0
    if args.action == "build":
        from mlsec.local import build

        for name, path in build.ensure_all().items():
            print(f"{name:26} {path}")
        return 0
    if args.action == "down":
        stopped = local.down(directory)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    try:
        e = local.LocalEnv.load(directory)
    except FileNotFoundError:
        print("no local environment: run `mlsec local up`", file=sys.stderr)
        return 1
    if args.action == "env":
        for k, v in e.exports().items():
            print(f"export {k}={shlex.quote(v)}")
        return 0
    ready = e.readiness()
    for name, ok in ready.items():
        print(f"{name:26} {'ready' if ok else 'NOT READY'}")
    return 0 if ready and all(ready.values()) else 1


def _crds(args: argparse.Namespace) -> int:
    from mlsec.api import crdgen

    written = crdgen.write_crds(Path(args.dir))
    for path in written:
        print(path)
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from mlsec.local import manifests

    root = Path(args.root)
    if args.check:
        problems = manifests.check(root)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("run `mlsec manifests` (make manifests) and commit the result", file=sys.stderr)
        return 1 if problems else 0
    for path in manifests.write(root):
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    from mlsec.clients import rest

    rest.keep_kubernetes_package_out()  # before kopf is imported
    from mlsec.handlers import main as operator_main
    from mlsec.handlers import settings

    given = {k.removeprefix("vault_"): v for k, v in vars(args).items()
             if k.startswith("vault_") and v is not None}
    settings.CONFIG.vault = settings.VaultSettings(**given)
    settings.CONFIG.webhook = settings.WebhookSettings(
        host=args.webhook_host, service=args.webhook_service, cert_dir=args.webhook_cert_dir,
        failure_policy=args.webhook_failure_policy, timeout_seconds=args.webhook_timeout,
        operator_identity=args.webhook_operator_identity)
    return operator_main.run(args)


def _webhook_flags(run: argparse.ArgumentParser) -> None:
    """How the admission webhook is served and registered (with --webhook-port)."""
    env = os.environ.get
    g = run.add_argument_group("admission webhook", "served by every replica with --webhook-port N")
    g.add_argument("--webhook-host", default=env("MLSEC_WEBHOOK_HOST"),
                   help="name or IP the API server reaches the webhook at (URL and certificate); "
                   "default: the bind address ($MLSEC_WEBHOOK_HOST)")
    g.add_argument("--webhook-service", default=env("MLSEC_WEBHOOK_SERVICE"),
                   help="namespace/name[:port] of the Service in front of the replicas: register "
                   "the Service instead of a URL ($MLSEC_WEBHOOK_SERVICE)")
    g.add_argument("--webhook-cert-dir", default=env("MLSEC_WEBHOOK_CERT_DIR"),
                   help="serve tls.crt/tls.key from here, ca.crt as the caBundle (re-read on change); "
                   "default: generate a CA and certificate at start-up ($MLSEC_WEBHOOK_CERT_DIR)")
    g.add_argument("--webhook-failure-policy", choices=["auto", "Fail", "Ignore"],
                   default=env("MLSEC_WEBHOOK_FAILURE_POLICY", "auto"),
                   help="auto (default): Ignore when the cluster serves MutatingAdmissionPolicy "
                   "(the native policies hold the gate), else Fail")
    g.add_argument("--webhook-timeout", type=int, default=5, choices=range(1, 31), metavar="1-30",
                   help="timeoutSeconds of the webhooks (default 5)")
    g.add_argument("--webhook-operator-identity", default=env("MLSEC_WEBHOOK_OPERATOR_IDENTITY"),
                   help="user name allowed to write status (default: asked from the API server)")


def _vault_flags(run: argparse.ArgumentParser) -> None:
    """How the operator reaches Vault; each flag falls back to an environment variable."""
    env = os.environ.get
    g = run.add_argument_group("Vault", "the operator's own connection to Vault or OpenBao")
    g.add_argument("--vault-addr", default=env("VAULT_ADDR"),
                   help="the Vault the operator writes to; policies must name it ($VAULT_ADDR)")
    g.add_argument("--vault-addr-alias", dest="vault_addr_aliases", action="append",
                   default=[a for a in env("MLSEC_VAULT_ADDR_ALIASES", "").split(",") if a],
                   help="another address of the same Vault that policies may name (repeatable; "
                   "$MLSEC_VAULT_ADDR_ALIASES, comma-separated)")
    g.add_argument("--vault-auth", choices=["kubernetes", "token"],
                   default=env("MLSEC_VAULT_AUTH", "kubernetes"),
                   help="kubernetes: log in with the operator's ServiceAccount (default); "
                   "token: a token from --vault-token-file ($MLSEC_VAULT_AUTH)")
    g.add_argument("--vault-auth-mount", default=env("MLSEC_VAULT_AUTH_MOUNT"),
                   help="Kubernetes auth mount to log in through (default kubernetes)")
    g.add_argument("--vault-role", default=env("MLSEC_VAULT_ROLE"),
                   help="the operator's Vault role (default mlsec-operator)")
    g.add_argument("--vault-jwt-file", default=env("MLSEC_VAULT_JWT_FILE"),
                   help="projected ServiceAccount token, audience vault "
                   "(default /var/run/secrets/vault/token)")
    g.add_argument("--vault-service-account", default=env("MLSEC_VAULT_SERVICE_ACCOUNT"),
                   help="namespace/name to request a token for when the JWT file does not exist "
                   "(local runs; default mlsec-system/mlsec-operator)")
    g.add_argument("--vault-audience", default=env("MLSEC_VAULT_AUDIENCE"),
                   help="audience of that token (default vault)")
    g.add_argument("--vault-token-file", default=env("MLSEC_VAULT_TOKEN_FILE"),
                   help="file holding a Vault token, for --vault-auth token")
    g.add_argument("--vault-ca-file", default=env("VAULT_CACERT"),
                   help="CA bundle to verify Vault's certificate ($VAULT_CACERT)")
    g.add_argument("--vault-timeout", type=float, default=None, help="seconds per request (5)")
    g.add_argument("--vault-resync-seconds", type=float, default=None,
                   help="how often each model's Vault role and policy are compared (300; 0: off)")


def _audit(args: argparse.Namespace) -> int:
    from mlsec.audit import verify

    return verify.main([args.file])


def _vault(args: argparse.Namespace) -> int:
    """``mlsec vault delete-transit-key NS MODEL``: remove a retained transit key on purpose.

    The operator keeps a pii/phi model's key when the model is deleted (data encrypted with it
    must stay readable) and its own Vault policy cannot delete keys. A Vault administrator runs
    this with their token (VAULT_ADDR, VAULT_TOKEN): it allows deletion on the key, then deletes
    it. Everything encrypted with the key becomes unreadable for good.
    """
    import hvac
    import hvac.exceptions

    from mlsec.builders.vault import NAME_PREFIX

    name = f"{NAME_PREFIX}-{args.namespace}-{args.model}"
    addr, token = os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR"), os.environ.get("VAULT_TOKEN")
    if not addr or not token:
        print("VAULT_ADDR and VAULT_TOKEN (a Vault administrator's token) are required", file=sys.stderr)
        return 2
    path = f"{args.mount}/keys/{name}"
    if not args.yes:
        print(f"would delete transit key {path}: data encrypted with it can never be decrypted "
              "again; repeat with --yes to delete it", file=sys.stderr)
        return 1
    client = hvac.Client(url=addr, token=token)
    try:
        if client.read(path) is None:  # hvac answers a 404 on read with None
            raise hvac.exceptions.InvalidPath()
        client.write_data(f"{path}/config", data={"deletion_allowed": True})
        client.delete(path)
    except hvac.exceptions.InvalidPath:
        print(f"no transit key {path}", file=sys.stderr)
        return 1
    except hvac.exceptions.VaultError as exc:
        print(f"cannot delete {path}: {type(exc).__name__}: {'; '.join(map(str, exc.errors or []))}",
              file=sys.stderr)
        return 1
    print(f"deleted transit key {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlsec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="the real local environment (kube-apiserver, slapd, OpenBao)")
    local.add_argument("action", choices=["up", "down", "env", "status", "build"])
    local.add_argument("--dir", help="state directory (default: $MLSEC_LOCAL_DIR or ~/.local/state/mlsec)")
    local.set_defaults(func=_local)

    crds = sub.add_parser("crds", help="regenerate the CRDs (and admission policies) from the models")
    crds.add_argument("dir", nargs="?", default="crds")
    crds.set_defaults(func=_crds)

    mf = sub.add_parser("manifests", help="regenerate crds/, the Helm chart's generated files and "
                        "manifests/install.yaml")
    mf.add_argument("--root", default=".", help="repository root (default: .)")
    mf.add_argument("--check", action="store_true", help="write nothing; exit 1 when anything drifted")
    mf.set_defaults(func=_manifests)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", help="watch only these namespaces")
    run.add_argument("--metrics-port", type=int, default=8080)
    run.add_argument("--health-port", type=int, default=8081)
    run.add_argument("--webhook-port", type=int, default=0, help="0: no admission webhook server")
    run.add_argument("--audit-file", help="append the hash-chained audit log here too")
    run.add_argument("--bind-address", default="0.0.0.0",
                     help="address of the metrics, health and webhook servers")
    run.add_argument("--no-leader-election", dest="leader_election", action="store_false",
                     help="reconcile without electing a leader (a single replica only)")
    run.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "mlsec-system"),
                     help="namespace of the leader-election Lease")
    run.add_argument("--verbose", action="store_true")
    _vault_flags(run)
    _webhook_flags(run)
    run.set_defaults(func=_run)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain of an audit file")
    verify.add_argument("file")
    verify.set_defaults(func=_audit)

    vault = sub.add_parser("vault", help="Vault administration of what the operator keeps")
    vault_sub = vault.add_subparsers(dest="vault_command", required=True)
    dtk = vault_sub.add_parser(
        "delete-transit-key", help="delete the transit key the operator kept after a pii/phi model "
        "was deleted (needs VAULT_ADDR and an administrator's VAULT_TOKEN; irreversible)")
    dtk.add_argument("namespace")
    dtk.add_argument("model", help="the ModelDeployment's name")
    dtk.add_argument("--mount", default="transit", help="transit mount (default: transit)")
    dtk.add_argument("--yes", action="store_true", help="really delete (without: say what would go)")
    dtk.set_defaults(func=_vault)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
