"""Fixtures for integration tests: the real local environment, per-test namespaces, per-user clients.

The environment is started once per test session in a temporary directory and stopped (by PID) at
the end. To iterate quickly, start one with `mlsec local up` and export MLSEC_LOCAL_DIR (as
`mlsec local env` prints): a running, ready environment there is reused and left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from mlsec.clients.kube import Kube
from mlsec.local import env as local
from mlsec.local import procs

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def localenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalEnv]:
    reuse = os.environ.get("MLSEC_LOCAL_DIR")
    if reuse:
        try:
            env = local.LocalEnv.load(Path(reuse))
            if all(env.readiness().values()):
                yield env
                return
        except FileNotFoundError:
            pass
    directory = tmp_path_factory.mktemp("localenv")
    env = local.up(directory)
    try:
        yield env
    finally:
        local.down(directory)


@pytest.fixture(scope="session")
def api_client_for(localenv: local.LocalEnv) -> Callable[[str], kubernetes.client.ApiClient]:
    """An API client authenticated as one of: admin, alice, bob, carol, dave, erin."""
    cache: dict[str, kubernetes.client.ApiClient] = {}

    def make(user: str = "admin") -> kubernetes.client.ApiClient:
        if user not in cache:
            cache[user] = kubernetes.config.new_client_from_config(
                config_file=str(localenv.kubeconfig), context=user
            )
        return cache[user]

    return make


@pytest.fixture(scope="session")
def admin_client(api_client_for: Callable[[str], kubernetes.client.ApiClient]) -> kubernetes.client.ApiClient:
    return api_client_for("admin")


@pytest.fixture
def namespace(admin_client: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (the namespace controller cleans it up)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = kubernetes.client.CoreV1Api(admin_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"mlsec.io/test": "true"}}})
    yield name
    try:
        core.delete_namespace(name)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def ldap_info(localenv: local.LocalEnv) -> dict[str, str]:
    """How to reach the test directory (local only credentials)."""
    e = localenv.exports()
    return {
        "url": e["MLSEC_LDAP_URL"], "plain_url": localenv.ldap_plain_url,
        "ca_file": e["MLSEC_LDAP_CA_FILE"], "bind_dn": e["MLSEC_LDAP_BIND_DN"],
        "bind_password": e["MLSEC_LDAP_BIND_PASSWORD"], "user_password": e["MLSEC_LDAP_USER_PASSWORD"],
    }


@pytest.fixture(scope="session")
def vault_info(localenv: local.LocalEnv) -> dict[str, str]:
    return {"addr": localenv.vault_addr, "token": localenv.vault_token}


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crds_installed(localenv: local.LocalEnv) -> None:
    """Our CRDs and native admission policies, from crds/ as a user applies them; returns once
    the API server enforces the policies (their parameter kind must be resolvable first)."""
    install_crds(localenv)


def install_crds(localenv: local.LocalEnv) -> float:
    started = time.monotonic()
    localenv.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    localenv.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l",
                     "app.kubernetes.io/part-of=mlsec-operator")
    probe = ("apiVersion: mlsec.io/v1alpha1\nkind: ModelDeployment\n"
             "metadata: {name: probe, namespace: default}\n"
             "spec: {model: probe, version: '1', image: 'registry.hospital.com/p@sha256:"
             + "0" * 64 + "', stage: staging, dataClassification: public, owner: nobody}\n")

    streak = [0]

    def policies_loaded() -> bool:
        # Staging and production probes touch every policy; the API server (re)loads them
        # after CRD changes, so ask for three clean answers in a row.
        clean = True
        for stage in ("staging", "production"):
            proc = localenv.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                                    input=probe.replace("stage: staging", f"stage: {stage}"))
            if "failed to configure policy" in proc.stderr or "paramKind" in proc.stderr:
                clean = False
        streak[0] = streak[0] + 1 if clean else 0
        return streak[0] >= 3

    wait_until(policies_loaded, timeout=90, interval=1, what="the admission policies to load")
    return time.monotonic() - started


class OperatorProcess:
    """`mlsec run` as a child process against the local environment, as its own ServiceAccount."""

    running: set[OperatorProcess] = set()  # started and not yet stopped, in this test session

    def __init__(self, localenv: local.LocalEnv, workdir: Path, *extra: str) -> None:
        self.localenv = localenv
        self.workdir = workdir
        self.metrics_port = procs.free_port()
        self.health_port = procs.free_port()
        self.audit_file = workdir / "audit.jsonl"
        self.log_file = workdir / "operator.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        kubeconfig = local.operator_kubeconfig(self.localenv, self.workdir / "operator.kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "VAULT_ADDR": self.localenv.vault_addr}
        env.pop("VAULT_TOKEN", None)
        for attempt in range(3):
            log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
            cmd = [sys.executable, "-m", "mlsec", "run", "--metrics-port", str(self.metrics_port),
                   "--health-port", str(self.health_port), "--audit-file", str(self.audit_file),
                   "--bind-address", "127.0.0.1", *self.extra]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
            log.close()
            OperatorProcess.running.add(self)
            try:
                procs.wait_for("operator", self.healthy, 60, self.proc.pid, self.log_file)
                return self
            except RuntimeError as e:
                # Another process took a port between our pick and the operator's bind.
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                self.metrics_port, self.health_port = procs.free_port(), procs.free_port()
        raise AssertionError("unreachable")

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        OperatorProcess.running.discard(self)
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


@pytest.fixture(scope="session")
def operator(localenv: local.LocalEnv, crds_installed: None,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator process shared by the tests of a session."""
    op = OperatorProcess(localenv, tmp_path_factory.mktemp("operator")).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operators_paused() -> Iterator[None]:
    """Every operator process of the session frozen (SIGSTOP) for one test, resumed after it.

    For tests that drive one of the operator's level-based syncs in-process against the shared
    Vault: a running operator owns the same names and would correct them (rightly) under the test,
    between its write and its assertion. A resumed operator renews or re-acquires its Lease and
    reconciles everything again."""
    paused = [op for op in OperatorProcess.running if op.proc is not None and op.proc.poll() is None]
    for op in paused:
        assert op.proc is not None
        op.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for op in paused:
            assert op.proc is not None
            op.proc.send_signal(signal.SIGCONT)


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.25,
               what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except kubernetes.client.ApiException as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def wait_authorized(kube: Kube, namespace: str, rules: list[dict[str, Any]],
                    subjects: list[dict[str, Any]], timeout: float = 15) -> None:
    """Wait until the API server's RBAC authorizer (fed by an informer, so a fresh RoleBinding
    takes a moment) lets every subject do the first verb of every rule in ``namespace``."""
    users = [f"system:serviceaccount:{s.get('namespace', namespace)}:{s['name']}"
             if s.get("kind") == "ServiceAccount" else s["name"] for s in subjects]
    authz = kubernetes.client.AuthorizationV1Api(kube.api)
    for user in users:
        for rule in rules:
            attrs = {"namespace": namespace, "verb": rule["verbs"][0],
                     "group": rule["apiGroups"][0], "resource": rule["resources"][0]}
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": {"user": user, "resourceAttributes": attrs}}
            wait_until(lambda r=review: authz.create_subject_access_review(r).status.allowed,
                       timeout=timeout, interval=0.1, what=f"RBAC to let {user} {attrs}")


@pytest.fixture(scope="session")
def kube(api_client_for: Callable[[str], kubernetes.client.ApiClient]) -> Kube:
    """Our own dict-based client, as admin (tests use it to read and write like a user would)."""
    client = Kube(api_client_for("admin"), field_manager="mlsec-tests")
    return client


@pytest.fixture(scope="session")
def kube_as(api_client_for: Callable[[str], kubernetes.client.ApiClient]) -> Callable[[str], Kube]:
    return lambda user: Kube(api_client_for(user), field_manager=f"mlsec-tests-{user}")
