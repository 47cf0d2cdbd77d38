"""kubectl mlsec report: the failing and warning compliance results, from the operator's Reports.

    kubectl mlsec report [-n NS | -A] [-o table|json|yaml]

Reads the OpenReports ``Report`` objects the operator keeps per namespace (``mlsec``, labelled
``app.kubernetes.io/managed-by=mlsec-operator``) as the current kubeconfig identity, and prints a
table of the results that are ``fail``, ``error`` or ``warn`` (``-o json|yaml``: the Reports
themselves, as a kubectl List). Exit code 1 when any result is ``fail`` (or the Reports cannot be
read), else 0 — usable as a CI gate.

Wired into ``kubectl mlsec`` by :func:`add_parser`; the command function follows the plugin's
convention ``func(client, args, out)``, where ``client`` has ``call(method, path)`` and ``namespace``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO
from urllib.parse import quote

import yaml

REPORTS_API = "/apis/openreports.io/v1alpha1"
SELECTOR = "app.kubernetes.io/managed-by=mlsec-operator"
SHOWN = ("fail", "error", "warn")
ORDER = {"fail": 0, "error": 1, "warn": 2}
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
MESSAGE_WIDTH = 100


class ApiClient(Protocol):
    namespace: str

    def call(self, method: str, path: str) -> dict[str, Any]: ...


class NotInstalled(Exception):
    pass


def reports_path(namespace: str | None) -> str:
    where = f"/namespaces/{quote(namespace)}" if namespace else ""
    return f"{REPORTS_API}{where}/reports?labelSelector={quote(SELECTOR)}"


def rows(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The fail/error/warn results of ``reports``, worst first (pure)."""
    out = []
    for report in reports:
        namespace = str((report.get("metadata") or {}).get("namespace") or "")
        for r in report.get("results") or []:
            if r.get("result") not in SHOWN:
                continue
            ref = (r.get("resources") or [{}])[0]
            out.append({"namespace": namespace, "subject": f"{ref.get('kind', '?')}/{ref.get('name', '?')}",
                        "rule": str(r.get("rule") or r.get("policy") or ""), "result": str(r["result"]),
                        "severity": str(r.get("severity") or ""), "message": str(r.get("message") or "")})
    out.sort(key=lambda x: (ORDER[x["result"]], SEVERITY_ORDER.get(x["severity"], 9), x["namespace"],
                            x["subject"], x["rule"]))
    return out


def totals(reports: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out = {k: 0 for k in ("pass", "fail", "warn", "error", "skip")}
    for report in reports:
        for k, v in (report.get("summary") or {}).items():
            if k in out and isinstance(v, int):
                out[k] += v
    return out


def render_table(reports: Sequence[Mapping[str, Any]], wide: bool = False) -> str:
    """A readable table of what needs fixing, and the totals (pure)."""
    found = rows(reports)
    t = totals(reports)
    where = f"{len(reports)} namespace{'s' if len(reports) != 1 else ''}"
    summary = (f"{where}: {t['fail']} fail, {t['error']} error, {t['warn']} warn, {t['pass']} pass, "
               f"{t['skip']} skip")
    if not found:
        return f"no failing or warning results ({summary})\n"
    headers = {"namespace": "NAMESPACE", "subject": "SUBJECT", "rule": "RULE", "result": "RESULT",
               "severity": "SEVERITY"}
    widths = {k: max(len(h), *(len(r[k]) for r in found)) for k, h in headers.items()}
    indent = sum(widths.values()) + 2 * len(widths)
    lines = ["  ".join(h.ljust(widths[k]) for k, h in headers.items()) + "  MESSAGE"]
    for r in found:
        head = "  ".join(r[k].ljust(widths[k]) for k in headers) + "  "
        message = [r["message"]] if wide else textwrap.wrap(r["message"], MESSAGE_WIDTH) or [""]
        lines.append(head + message[0])
        lines += [" " * indent + more for more in message[1:]]
    lines.append("")
    lines.append(summary)
    return "\n".join(lines) + "\n"


def fetch(client: ApiClient, namespace: str | None) -> list[dict[str, Any]]:
    """The operator's Reports in ``namespace`` (None: all namespaces)."""
    try:
        data = client.call("GET", reports_path(namespace))
    except Exception as exc:
        if "(404)" in str(exc) or "could not find the requested resource" in str(exc):
            raise NotInstalled("the OpenReports CRDs (reports.openreports.io) are not installed in this "
                               "cluster: the operator writes no compliance Reports") from None
        raise
    items = [dict(i) for i in data.get("items") or []]
    return sorted(items, key=lambda i: str((i.get("metadata") or {}).get("namespace")))


def cmd_report(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    namespace = None if args.all_namespaces else (args.namespace or client.namespace)
    try:
        reports = fetch(client, namespace)
    except NotInstalled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failing = any(r["result"] == "fail" for r in rows(reports))
    if args.output in ("json", "yaml"):
        doc = {"apiVersion": "v1", "kind": "List", "items": reports}
        out.write(json.dumps(doc, indent=2) + "\n" if args.output == "json"
                  else yaml.safe_dump(doc, sort_keys=False))
    elif not reports:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        out.write(f"no compliance Report in {where} (is there an MLSecurityPolicy, and is the operator "
                  "running?)\n")
    else:
        out.write(render_table(reports, wide=args.output == "wide"))
    return 1 if failing else 0


def add_parser(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``report`` to ``kubectl mlsec`` (``common``: the parent parser with -n/--context/--kubeconfig)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report", parents=[common] if common is not None else [],
        help="failing and warning compliance results (exit 1 on any failure)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if common is None:
        parser.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
        parser.add_argument("--context", help="kubeconfig context to use")
        parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table",
                        help="table (default), wide (messages unwrapped), json or yaml (the Reports)")
    parser.set_defaults(func=cmd_report)
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``report`` on its own (without the rest of the plugin)."""
    from mlsec.plugin import Client, Refused

    try:
        client = Client(args.kubeconfig, args.context, args.namespace)
        return cmd_report(client, args, out or sys.stdout)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubectl mlsec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
