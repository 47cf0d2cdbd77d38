"""End-to-end scenarios against any cluster, with the operator installed from the chart.

Two targets (``--target``, or $MLSEC_E2E_TARGET):

- ``kubeconfig`` (default): a cluster where the chart is already installed (e2e/kind/run.sh does
  that on kind); ``--kubeconfig`` or $KUBECONFIG points at it. The scenarios wait for the operator
  Deployment to be available first.
- ``local``: the project's local environment (a running one from $MLSEC_LOCAL_DIR, else a fresh one
  in a temporary directory, stopped at the end). The chart is rendered with ``helm template`` and
  applied with ``kubectl apply --server-side``, everything but the operator Deployment, which runs
  as a local process (``mlsec run``) with the chart's ServiceAccount token.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import RELEASE, Cluster, LocalOperator, install_all_but_the_deployment


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlsec e2e")
    group.addoption("--target", choices=["kubeconfig", "local"],
                    default=os.environ.get("MLSEC_E2E_TARGET", "kubeconfig"),
                    help="kubeconfig: a cluster with the chart installed; local: the local environment")
    group.addoption("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                    help="kubeconfig of the target cluster (kubeconfig target)")
    group.addoption("--operator-namespace", default=os.environ.get("MLSEC_E2E_NAMESPACE", "mlsec-system"),
                    help="namespace the chart is installed in")
    group.addoption("--set", dest="chart_values", action="append", default=[], metavar="KEY=JSON",
                    help="local target: a chart value for `helm template` (repeatable), e.g. "
                    "--set admissionPolicies.enabled=false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end scenario against a cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.e2e)


def _chart_value(item: str) -> tuple[str, Any]:
    """KEY=VALUE, VALUE as JSON when it parses (false, 3, ["a"]), else as a string."""
    key, _, raw = item.partition("=")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    target = request.config.getoption("--target")
    namespace = request.config.getoption("--operator-namespace")
    if target == "kubeconfig":
        kubeconfig = request.config.getoption("--kubeconfig")
        if not kubeconfig:
            pytest.exit("e2e: no kubeconfig (--kubeconfig or $KUBECONFIG), or use --target local", 2)
        c = Cluster(Path(kubeconfig), namespace)
        c.kubectl("-n", namespace, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s",
                  timeout=320)
        yield c
        return

    from mlsec.local import env as local

    started: Path | None = None
    localenv: local.LocalEnv | None = None
    reuse = os.environ.get("MLSEC_LOCAL_DIR")
    if reuse:
        try:
            localenv = local.LocalEnv.load(Path(reuse))
            if not all(localenv.readiness().values()):
                localenv = None
        except FileNotFoundError:
            localenv = None
    if localenv is None:
        started = Path(tempfile.mkdtemp(prefix="mlsec-e2e-env-"))
        localenv = local.up(started)
    c = Cluster(localenv.kubeconfig, namespace, context="admin")
    workdir = Path(tempfile.mkdtemp(prefix="mlsec-e2e-"))
    operator: LocalOperator | None = None
    try:
        values = dict(_chart_value(kv) for kv in request.config.getoption("chart_values"))
        deployment = install_all_but_the_deployment(c, namespace, values)
        service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        operator = LocalOperator(c, workdir, localenv.api_server, localenv.ca_file)
        operator.start(namespace, service_account)
        yield c
    finally:
        if operator is not None:
            operator.stop()
            log = operator.log_file.read_text(errors="replace") if operator.log_file.exists() else ""
            if "Traceback" in log:
                sys.stderr.write(f"\n--- operator log (tail) ---\n{log[-4000:]}\n")
        if started is not None:
            local.down(started)
            shutil.rmtree(started, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def scenario_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
