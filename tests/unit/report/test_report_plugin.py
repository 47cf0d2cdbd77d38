"""kubectl mlsec report: table of what needs fixing, -o json|yaml, exit code 1 on any failure."""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import pytest
import yaml
from report_cases import NOW, NS, model, policy

from mlsec import plugin_report
from mlsec.builders import report as rb


def _report(namespace: str, *models: rb.ObjectFacts) -> dict[str, Any]:
    return rb.build_report(namespace, policy(), list(models), None, NOW)


class FakeClient:
    def __init__(self, reports: list[dict[str, Any]] | Exception, namespace: str = "default") -> None:
        self.reports = reports
        self.namespace = namespace
        self.paths: list[str] = []

    def call(self, method: str, path: str) -> dict[str, Any]:
        self.paths.append(path)
        if isinstance(self.reports, Exception):
            raise self.reports
        wanted = path.split("/namespaces/")[1].split("/")[0] if "/namespaces/" in path else None
        return {"items": [r for r in self.reports if wanted in (None, r["metadata"]["namespace"])]}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    plugin_report.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["report", *argv])


def _run(client: FakeClient, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = plugin_report.cmd_report(client, _args(argv), out)
    return code, out.getvalue()


BAD = model("tagged", image="registry.hospital.com/ml/tagged:3")
GOOD = model("pinned")


def test_failures_are_listed_and_exit_1() -> None:
    client = FakeClient([_report(NS, BAD, GOOD), _report("other", GOOD)])
    code, text = _run(client, ["-A"])
    assert code == 1
    assert client.paths == ["/apis/openreports.io/v1alpha1/reports?labelSelector="
                            "app.kubernetes.io/managed-by%3Dmlsec-operator"]
    lines = text.splitlines()
    assert lines[0].split() == ["NAMESPACE", "SUBJECT", "RULE", "RESULT", "SEVERITY", "MESSAGE"]
    fail = next(line for line in lines if "ModelDeployment/tagged" in line)
    assert "images.requireDigest" in fail and " fail " in fail and "not pinned by digest" in fail
    assert "pinned" not in " ".join(line for line in lines if "ModelDeployment/" in line
                                   and "tagged" not in line)
    assert lines[-1].startswith("2 namespaces: 1 fail, 0 error, 0 warn")


def test_no_failures_exit_0() -> None:
    code, text = _run(FakeClient([_report(NS, GOOD)], namespace=NS), [])
    assert code == 0
    assert text.startswith("no failing or warning results (1 namespace: 0 fail")


def test_warnings_are_shown_but_exit_0() -> None:
    pol = policy(network={"mtls": "PERMISSIVE", "allowedPrincipals": []})
    report = rb.build_report(NS, pol, [GOOD], None, NOW)
    code, text = _run(FakeClient([report]), ["-n", NS])
    assert code == 0 and "network.mtls" in text and " warn " in text


def test_namespace_selection() -> None:
    client = FakeClient([_report(NS, BAD), _report("other", GOOD)], namespace="other")
    assert _run(client, [])[0] == 0
    assert _run(client, ["-n", NS])[0] == 1
    assert "/namespaces/other/" in client.paths[0] and f"/namespaces/{NS}/" in client.paths[1]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_machine_readable_output(fmt: str) -> None:
    reports = [_report(NS, BAD)]
    code, text = _run(FakeClient(reports), ["-A", "-o", fmt])
    doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert code == 1
    assert doc["kind"] == "List" and doc["items"][0]["metadata"]["name"] == "mlsec"
    assert doc["items"][0]["results"] == reports[0]["results"]


def test_no_reports_and_no_crds() -> None:
    code, text = _run(FakeClient([], namespace="empty"), [])
    assert code == 0 and "no compliance Report in namespace empty" in text
    code, _ = _run(FakeClient(RuntimeError("Not Found (404)")), ["-A"])
    assert code == 1


def test_long_messages_wrap_under_the_message_column() -> None:
    long = model("x" * 10, image="registry.hospital.com/ml/" + "y" * 150 + ":1")
    text = plugin_report.render_table([_report(NS, long)])
    lines = [line for line in text.splitlines() if line.strip()]
    start = lines[0].index("MESSAGE")
    continuation = lines[2]
    assert continuation[:start].strip() == "" and continuation[start:].strip()
