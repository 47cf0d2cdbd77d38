"""kubectl mlsec: approve, inspect and promote model releases as yourself, and verify audit files.

    kubectl mlsec approve MODEL --version V [--reject] [--comment TEXT] [-n NS]
    kubectl mlsec status MODEL [-n NS]
    kubectl mlsec promote MODEL --to production [-n NS] [--wait SECONDS]
    kubectl mlsec audit verify FILE

Every request is made with the current kubeconfig context (``--context``, ``--kubeconfig`` and
$KUBECONFIG are honoured), so the API server authenticates *you*: an approval records whoever
creates it, a promotion whoever requests it. Exit codes: 0 done, 1 refused or failed (the API
server's reason is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from mlsec import API_VERSION, plugin_report
from mlsec.api.deployment import REQUESTED_BY, image_digest

MODELS = f"/apis/{API_VERSION}/namespaces/{{ns}}/modeldeployments"
APPROVALS = f"/apis/{API_VERSION}/namespaces/{{ns}}/modelapprovals"
_WARNING = re.compile(r'^\d{3} \S+ "(.*)"$')


class Refused(Exception):
    """The API server refused (or could not serve) a request: its message, for the user."""


class Client:
    """Raw API calls as the current context, returning JSON and the API warnings."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        import kubernetes  # only for commands that talk to the cluster: it is slow to import

        from mlsec.clients.kube import load_api_client

        try:
            self.api = load_api_client(kubeconfig, context)
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise Refused(f"cannot load the kubeconfig: {exc}") from None
        self.namespace = namespace or _context_namespace(kubeconfig, context) or "default"
        self.warnings: list[str] = []

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> dict[str, Any]:
        from kubernetes.client.rest import ApiException

        try:
            resp = self.api.call_api(
                path, method, header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"], _return_http_data_only=True,
                _preload_content=False, _request_timeout=(5, 30))
        except ApiException as exc:
            raise Refused(_api_message(exc)) from None
        except OSError as exc:  # connection refused, TLS, DNS
            raise Refused(f"cannot reach the API server: {exc}") from None
        for header in resp.headers.getlist("Warning") if hasattr(resp.headers, "getlist") else []:
            m = _WARNING.match(header.strip())
            self.warnings.append(m.group(1).replace('\\"', '"') if m else header)
        data = resp.data
        return dict(json.loads(data)) if data else {}

    def model(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"{MODELS.format(ns=self.namespace)}/{name}")

    def whoami(self) -> str:
        review = self.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        return str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "?")


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    import kubernetes

    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except (kubernetes.config.ConfigException, OSError, TypeError):
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace")


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    return f"{message} ({exc.status})"


# --- commands -------------------------------------------------------------------------------


def approval_body(model: dict[str, Any], version: str, decision: str, comment: str,
                  digest: str | None = None) -> dict[str, Any]:
    """The ModelApproval for ``version`` of ``model`` at the digest its image is pinned to (pure)."""
    name = str(model["metadata"]["name"])
    spec = model.get("spec") or {}
    if digest is None:
        if str(spec.get("version")) != version:
            raise Refused(f"{name} is at version {spec.get('version')}, not {version}: its image digest "
                          f"belongs to that version (pass --digest to approve another release)")
        digest = image_digest(str(spec.get("image") or ""))
        if not digest:
            raise Refused(f"{name}'s image {spec.get('image')} is not pinned by digest (@sha256:…): "
                          "only an exact image can be approved")
    safe_version = re.sub(r"[^a-z0-9-]", "-", version.lower()).strip("-") or "v"
    return {
        "apiVersion": API_VERSION, "kind": "ModelApproval",
        "metadata": {"generateName": f"{name[:200]}-{safe_version[:30]}-{decision}-",
                     "namespace": model["metadata"]["namespace"]},
        "spec": {"modelDeployment": name, "version": version, "imageDigest": digest,
                 "stage": "production", "decision": decision, "comment": comment},
    }


def cmd_approve(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    decision = "reject" if args.reject else "approve"
    body = approval_body(client.model(args.model), args.version, decision, args.comment or "", args.digest)
    created = client.call("POST", APPROVALS.format(ns=client.namespace), body)
    spec = created.get("spec") or {}
    verb = "rejected" if decision == "reject" else "approved"
    out.write(f"{spec.get('approvedBy', '?')} {verb} {args.model} version {spec.get('version')} "
              f"({spec.get('imageDigest')}) for production: "
              f"modelapproval/{created['metadata']['name']} in {client.namespace}\n")
    return 0


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def render_status(model: dict[str, Any]) -> str:
    """Human-readable promotion status of a ModelDeployment, from its status (pure)."""
    spec, status = model.get("spec") or {}, model.get("status") or {}
    meta = model.get("metadata") or {}
    requested = status.get("requestedBy") or (meta.get("annotations") or {}).get(REQUESTED_BY) or "-"
    lines = [
        f"ModelDeployment {meta.get('namespace')}/{meta.get('name')}",
        f"  stage:       {spec.get('stage')} (rolled out: {status.get('stage') or 'nothing yet'})",
        f"  version:     {spec.get('version')} (rolled out: {status.get('lastAppliedVersion') or '-'})",
        f"  image:       {spec.get('image')}",
        f"  owner:       {spec.get('owner') or '-'}   classification: {spec.get('dataClassification')}",
        f"  requestedBy: {requested}",
    ]
    for type_ in ("Ready", "PolicyCompliant", "PromotionApproved"):
        c = _condition(model, type_)
        if c:
            stale = "" if c.get("observedGeneration") in (None, meta.get("generation")) else " (stale)"
            lines.append(f"  {type_ + ':':18} {c.get('status')} {c.get('reason')}{stale}: "
                         f"{c.get('message', '')}")
    approvals = status.get("approvals") or []
    counted = [a for a in approvals if a.get("counted") and a.get("decision", "approve") == "approve"]
    blocking = [a for a in approvals if a.get("counted") and a.get("decision") == "reject"]
    other = [a for a in approvals if not a.get("counted")]
    lines.append(f"  approvals counted ({len(counted)}):")
    lines += [f"    ✓ {a.get('name')}  {a.get('approver', '?')} ({a.get('platformRole', '-')}): "
              f"{a.get('reason', '')}" for a in counted] or ["    (none)"]
    if blocking:
        lines.append(f"  rejections blocking the promotion ({len(blocking)}):")
        lines += [f"    ✗ {a.get('name')}  {a.get('approver', '?')} ({a.get('platformRole', '-')}): "
                  f"{a.get('reason', '')}" for a in blocking]
    lines.append(f"  not counted ({len(other)}):")
    lines += [f"    - {a.get('name')}  {a.get('approver', '?')} [{a.get('decision', 'approve')}]: "
              f"{a.get('reason', '')}" for a in other] or ["    (none)"]
    missing = status.get("missingApprovals") or []
    lines.append("  missing:     " + ("; ".join(missing) if missing else "nothing"))
    return "\n".join(lines) + "\n"


def cmd_status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    out.write(render_status(client.model(args.model)))
    return 0


def cmd_promote(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    model = client.model(args.model)
    if (model.get("spec") or {}).get("stage") == args.to:
        out.write(f"{args.model} is already at stage {args.to}\n")
        return 0
    path = f"{MODELS.format(ns=client.namespace)}/{args.model}"
    # Conditional on what we read: a concurrent change makes this fail instead of being overwritten.
    patch = {"metadata": {"resourceVersion": model["metadata"]["resourceVersion"]},
             "spec": {"stage": args.to}}
    updated = client.call("PATCH", path, patch, content_type="application/merge-patch+json")
    generation = updated["metadata"].get("generation")
    out.write(f"{args.model} moved to {args.to} (generation {generation}); "
              f"the operator rolls it out — `kubectl mlsec status {args.model}`\n")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        current = client.model(args.model)
        ready = _condition(current, "Ready")
        if ready.get("observedGeneration") == generation and ready.get("status") in ("True", "False"):
            out.write(f"Ready={ready['status']} {ready.get('reason')}: {ready.get('message', '')}\n")
            return 0 if ready["status"] == "True" else 1
        time.sleep(1)
    out.write(f"not reconciled within {args.wait}s\n")
    return 1


def cmd_audit(_client: Client | None, args: argparse.Namespace, out: TextIO) -> int:
    from mlsec.audit import verify

    return verify.main([args.file])


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    common.add_argument("--context", help="kubeconfig context to use (your identity)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")

    parser = argparse.ArgumentParser(prog="kubectl mlsec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    approve = sub.add_parser("approve", parents=[common], help="approve (or reject) a model release")
    approve.add_argument("model", help="ModelDeployment name")
    approve.add_argument("--version", required=True, help="the exact version you approve")
    approve.add_argument("--reject", action="store_true", help="record a rejection instead")
    approve.add_argument("--comment", default="", help="justification, kept in the audit log")
    approve.add_argument("--digest", help="image digest (default: the ModelDeployment's, which must be "
                         "at --version)")
    approve.set_defaults(func=cmd_approve)

    status = sub.add_parser("status", parents=[common], help="stage, approvals and what is missing")
    status.add_argument("model")
    status.set_defaults(func=cmd_status)

    promote = sub.add_parser("promote", parents=[common], help="move a model to another stage")
    promote.add_argument("model")
    promote.add_argument("--to", required=True, choices=["development", "staging", "production", "archived"])
    promote.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                         help="wait for the operator to report the rollout")
    promote.set_defaults(func=cmd_promote)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", parents=[common], help="check the hash chain of an audit file")
    verify.add_argument("file")
    verify.set_defaults(func=cmd_audit, local=True)
    plugin_report.add_parser(sub, common)  # kubectl mlsec report (issue 13)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if getattr(args, "local", False):
        return int(args.func(None, args, out))
    client: Client | None = None
    try:
        client = Client(args.kubeconfig, args.context, args.namespace)
        code = int(args.func(client, args, out))
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    for warning in client.warnings if client else []:
        print(f"Warning: {warning}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
