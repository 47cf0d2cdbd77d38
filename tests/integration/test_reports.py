"""Compliance Reports (issue 13) against the real API server, slapd and a running operator.

Policies here use ``enforcement: audit`` where it matters (nothing blocked, everything reported).
Tests that change shared things (slapd, the OpenReports CRDs, the session's operator) put them
back in a ``finally``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlsec.builders import report as rb
from mlsec.clients.kube import Kube
from mlsec.local import build, slapd
from mlsec.local import env as local

from . import resources as r
from .conftest import OperatorProcess, wait_until

API = "mlsec.io/v1alpha1"
TAG_IMAGE = "registry.hospital.com/ml/tagged:3"


@pytest.fixture(scope="module")
def reports_crds(localenv: local.LocalEnv) -> None:
    """The OpenReports CRDs (an environment started before they were part of `mlsec local up`)."""
    _install_crds(localenv)


def _install_crds(localenv: local.LocalEnv) -> None:
    for path in build.openreports_crds():
        localenv.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    localenv.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/reports.openreports.io", "crd/clusterreports.openreports.io")


def _report(kube: Kube, namespace: str) -> dict[str, Any] | None:
    return kube.get(rb.REPORT_API_VERSION, rb.REPORT_KIND, namespace, rb.REPORT_NAME)


def _results(report: dict[str, Any] | None, subject: str) -> dict[str, dict[str, Any]]:
    return {x["rule"]: x for x in (report or {}).get("results") or []
            if x["resources"][0]["name"] == subject}


def _wait_result(kube: Kube, namespace: str, subject: str, rule: str, *results: str,
                 timeout: float = 20) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        res = _results(_report(kube, namespace), subject).get(rule)
        return res if res and res["result"] in results else None

    res = wait_until(found, timeout=timeout, what=f"{subject} {rule} in {results}")
    assert isinstance(res, dict)
    return res


def _plugin(localenv: local.LocalEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl mlsec report …` as the admin, through kubectl's plugin mechanism."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "KUBECONFIG": str(localenv.kubeconfig), "PATH": path}
    return subprocess.run([str(localenv.bin("kubectl")), "mlsec", "report", "--context", "admin", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def _report_writes(localenv: local.LocalEnv, namespace: str, since: float) -> list[dict[str, Any]]:
    """The operator's writes to Reports in ``namespace`` after ``since`` (API server audit log)."""
    out = []
    for line in localenv.audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        if ref.get("namespace") != namespace or ref.get("resource") != "reports" \
                or not entry.get("userAgent", "").startswith("mlsec-operator"):
            continue
        stamp = datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if stamp.timestamp() >= since:
            out.append(entry)
    return out


# --- image rule, the CLI, metrics ---------------------------------------------------------------


def test_image_rule_fails_then_passes_and_the_cli_exit_code(
        reports_crds: None, operator: OperatorProcess, kube: Kube, namespace: str,
        localenv: local.LocalEnv) -> None:
    kube.create(r.policy(namespace, enforcement="audit"))
    kube.create(r.model(namespace, "tagged", image=TAG_IMAGE))
    kube.create(r.model(namespace, "pinned"))

    bad = _wait_result(kube, namespace, "tagged", rb.RULE_REQUIRE_DIGEST, "fail")
    assert bad["message"] == (f"image {TAG_IMAGE} is not pinned by digest: set spec.image to "
                              "registry.hospital.com/ml/tagged@sha256:<digest> (images.requireDigest)")
    assert bad["resources"][0]["kind"] == "ModelDeployment" and bad["severity"] == "high"
    good = _wait_result(kube, namespace, "pinned", rb.RULE_REQUIRE_DIGEST, "pass")
    assert good["message"] == "image is pinned by sha256 digest"
    report = _report(kube, namespace)
    assert report is not None
    owner = report["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("MLSecurityPolicy", "default")
    assert report["source"] == "mlsec" and report["summary"]["fail"] >= 1
    # audit mode: the tagged model is rolled out all the same, and its children are hardened
    _wait_result(kube, namespace, "tagged", rb.RULE_POD_SECURITY, "pass")
    _wait_result(kube, namespace, "tagged", rb.RULE_MTLS, "pass")

    metric = (f'mlsec_compliance_results{{namespace="{namespace}",result="fail",'
              f'rule="{rb.RULE_REQUIRE_DIGEST}"}} 1.0')
    wait_until(lambda: metric in operator.metrics(), timeout=10, what="the compliance metric")

    cli = _plugin(localenv, "-A")
    assert cli.returncode == 1, cli.stderr
    line = next(x for x in cli.stdout.splitlines() if "ModelDeployment/tagged" in x)
    assert namespace in line and rb.RULE_REQUIRE_DIGEST in line and " fail " in line
    assert json.loads(_plugin(localenv, "-n", namespace, "-o", "json").stdout)["items"][0][
        "metadata"]["name"] == "mlsec"

    # Fixing the image turns the result into pass within one reconcile.
    fixed = f"registry.hospital.com/ml/tagged@{r.digest('tagged')}"
    kube.patch(API, "ModelDeployment", namespace, "tagged", {"spec": {"image": fixed}})
    started = time.monotonic()
    passed = _wait_result(kube, namespace, "tagged", rb.RULE_REQUIRE_DIGEST, "pass", timeout=10)
    assert passed["timestamp"]["seconds"] > bad["timestamp"]["seconds"] - 1
    print(f"fixed image reported as pass after {time.monotonic() - started:.1f}s")

    ok = _plugin(localenv, "-n", namespace)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # -A: other tests' namespaces may still be on their way out
    wait_until(lambda: _plugin(localenv, "-A").returncode == 0, timeout=60,
               what="kubectl mlsec report -A to exit 0")


# --- LDAP sync freshness ---------------------------------------------------------------------------


def _ldap_policy(namespace: str, ldap_info: dict[str, str]) -> dict[str, Any]:
    groups = {"data_scientists": "model_developer", "ml_engineers": "model_deployer",
              "ml_leads": "model_approver", "compliance": "compliance_reviewer"}
    return {
        "apiVersion": API, "kind": "MLSecurityPolicy",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {
            "enforcement": "audit",
            "ldap": {"url": ldap_info["url"], "caSecretRef": {"name": "ldap-ca", "key": "ca.crt"},
                     "bindDN": ldap_info["bind_dn"],
                     "bindPasswordSecretRef": {"name": "ldap-bind", "key": "password"},
                     "userSearchBase": slapd.USERS_OU, "groupSearchBase": slapd.GROUPS_OU,
                     "userIdAttribute": "uid", "syncInterval": "30s"},
            "roleMappings": [{"ldapGroup": slapd.group_dn(g), "platformRole": role}
                             for g, role in groups.items()],
            "promotion": {"production": {"requiredApprovals": [{"platformRole": "model_approver",
                                                                 "count": 1}]}},
        },
    }


def _touch(kube: Kube, namespace: str) -> None:
    """Ask for an LDAP sync now (any annotation change of the policy triggers one)."""
    kube.patch(API, "MLSecurityPolicy", namespace, "default", {"metadata": {"annotations": {
        "ldap.mlsec.io/sync-requested": datetime.now(UTC).isoformat()}}})


def test_ldap_sync_result_follows_slapd(reports_crds: None, operator: OperatorProcess, kube: Kube,
                                        namespace: str, localenv: local.LocalEnv,
                                        ldap_info: dict[str, str]) -> None:
    for name, key, value in (("ldap-bind", "password", ldap_info["bind_password"]),
                             ("ldap-ca", "ca.crt", Path(ldap_info["ca_file"]).read_text())):
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                     "data": {key: base64.b64encode(value.encode()).decode()}})
    kube.create(_ldap_policy(namespace, ldap_info))
    kube.create(r.model(namespace, "pinned"))
    synced = _wait_result(kube, namespace, "default", rb.RULE_LDAP_SYNC, "pass", timeout=30)
    assert synced["resources"][0]["kind"] == "MLSecurityPolicy"
    assert "users hold a platform role" in synced["message"]

    local.stop_component(localenv, "slapd")
    try:
        _touch(kube, namespace)
        down = _wait_result(kube, namespace, "default", rb.RULE_LDAP_SYNC, "warn", "error", timeout=30)
        print("LDAP down:", down["result"], down["message"])
        assert down["message"].startswith("LDAP sync failing (")
        assert down["properties"]["reason"]
        assert "retrying in" not in down["message"]  # the backoff is not a change of the result
    finally:
        local.start_component(localenv, "slapd")
    _touch(kube, namespace)
    _wait_result(kube, namespace, "default", rb.RULE_LDAP_SYNC, "pass", timeout=30)


# --- 200 models: one small Report, idle means no writes -----------------------------------------


MODELS = 200
IDLE_SECONDS = 60


def test_200_models_one_small_report_and_no_idle_writes(
        reports_crds: None, operator: OperatorProcess, kube: Kube, namespace: str,
        localenv: local.LocalEnv) -> None:
    since_start = time.time() - 1
    kube.create(r.policy(namespace))
    names = [f"model-{i:03d}" for i in range(MODELS)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: kube.create(r.model(namespace, n)), names))
    created = time.monotonic() - started

    def complete() -> dict[str, Any] | None:
        report = _report(kube, namespace)
        hardened = [x for x in (report or {}).get("results") or []
                    if x["rule"] == rb.RULE_POD_SECURITY and x["result"] == "pass"]
        return report if len(hardened) == MODELS else None

    # The time is the operator's reconcile throughput (children of 200 models), not the Report's.
    report = wait_until(complete, timeout=360, interval=2, what=f"{MODELS} rolled-out models in the Report")
    assert isinstance(report, dict)
    converged = time.monotonic() - started
    reports = kube.list(rb.REPORT_API_VERSION, rb.REPORT_KIND, namespace)
    assert [x["metadata"]["name"] for x in reports] == ["mlsec"]
    size = len(json.dumps(report, separators=(",", ":")).encode())
    assert size < 1024 * 1024
    assert report["summary"]["fail"] == 0
    subjects = {x["resources"][0]["name"] for x in report["results"]}
    assert subjects == {*names, "default"}
    writes_to_converge = len(_report_writes(localenv, namespace, since_start))
    print(f"{MODELS} models: Report {size} bytes, {len(report['results'])} results, "
          f"{writes_to_converge} writes; created in {created:.1f}s, complete after {converged:.1f}s")
    assert writes_to_converge < MODELS / 4  # bursts are collapsed, not one write per model

    time.sleep(3)  # let the echoes of the last writes pass
    since = time.time() + 1
    time.sleep(IDLE_SECONDS)
    writes = _report_writes(localenv, namespace, since)
    assert writes == [], [f"{w['verb']} {w['requestURI']}" for w in writes[:5]]


# --- without the OpenReports CRDs ----------------------------------------------------------------


def test_without_openreports_crds_the_operator_reconciles_normally(
        reports_crds: None, operator: OperatorProcess, kube: Kube, namespace: str,
        localenv: local.LocalEnv, tmp_path: Path) -> None:
    """The session's operator steps aside; a fresh one starts while the CRDs are missing."""
    operator.stop()
    op: OperatorProcess | None = None
    try:
        localenv.kubectl("delete", "crd", "reports.openreports.io", "clusterreports.openreports.io",
                         "--wait=true", "--timeout=60s")
        # Watching only this namespace: the previous tests' namespaces may still be going away,
        # and resuming their hundreds of objects would only delay this one.
        op = OperatorProcess(localenv, tmp_path, "--namespace", namespace).start()
        kube.create(r.policy(namespace, enforcement="audit"))
        kube.create(r.model(namespace, "pinned"))
        kube.create(r.model(namespace, "tagged", image=TAG_IMAGE))
        for name in ("pinned", "tagged"):
            wait_until(lambda n=name: r.has_condition(kube.get(API, "ModelDeployment", namespace, n),
                                                      "Ready", "True"),
                       timeout=60, what=f"{name} reconciled")
        metric = (f'mlsec_compliance_results{{namespace="{namespace}",result="fail",'
                  f'rule="{rb.RULE_REQUIRE_DIGEST}"}} 1.0')
        wait_until(lambda: metric in op.metrics(), timeout=15, what="the compliance metric")
        time.sleep(3)  # several recomputes: still said only once
        log = op.log()
        assert log.count("OpenReports CRDs (reports.openreports.io") == 1, log[-3000:]
        assert "compliance Report of" not in log  # no retry storm of failed writes
        assert "handlers/reports.py" not in log, log[-3000:]  # no traceback of ours
        assert op.proc is not None and op.proc.poll() is None
    finally:
        if op is not None:
            op.stop()
        _install_crds(localenv)
        operator.start()
