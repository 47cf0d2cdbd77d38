"""The e2e scenarios' view of a cluster: kubectl as its admin, the chart rendered for it, and the
operator as a local process (local target)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm/mlsec-operator"
RELEASE = "mlsec-operator"


def _kubectl_bin() -> str:
    here = Path(sys.executable).parent / "kubectl"
    return str(here) if here.exists() else (shutil.which("kubectl") or "kubectl")


@dataclass
class Cluster:
    """kubectl against the target cluster, as its admin."""

    kubeconfig: Path
    operator_namespace: str
    context: str | None = None
    last_error: str = ""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [_kubectl_bin(), "--kubeconfig", str(self.kubeconfig)]
        if self.context:
            cmd += ["--context", self.context]
        proc = subprocess.run([*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl("apply", "--server-side", "--field-manager=mlsec-e2e", "-f", "-",
                     input=yaml.safe_dump_all(objs))

    def try_apply(self, *objs: dict[str, Any]) -> bool | str:
        """True when applied; else False (falsy, so `eventually` retries); the last error is kept."""
        proc = self.kubectl("apply", "--server-side", "--field-manager=mlsec-e2e", "-f", "-",
                            input=yaml.safe_dump_all(objs), check=False)
        self.last_error = proc.stderr.strip()
        return proc.returncode == 0

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", resource, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        obj: dict[str, Any] = json.loads(proc.stdout)
        return obj

    def server_version(self) -> str:
        info = json.loads(self.kubectl("version", "-o", "json").stdout)
        return str(info["serverVersion"]["gitVersion"]).lstrip("v").split("-")[0].split("+")[0]


class LocalOperator:
    """`mlsec run` as a local process, authenticated as the chart's ServiceAccount."""

    def __init__(self, cluster: Cluster, workdir: Path, server: str, ca_file: Path) -> None:
        from mlsec.local import procs

        self.cluster = cluster
        self.workdir = workdir
        self.health_port = procs.free_port()
        self.metrics_port = procs.free_port()
        self.log_file = workdir / "operator.log"
        self.server = server
        self.ca_file = ca_file
        self.proc: subprocess.Popen[bytes] | None = None

    def _kubeconfig(self, namespace: str, service_account: str) -> Path:
        token = self.cluster.kubectl("create", "token", service_account, "-n", namespace,
                                     "--duration=2h").stdout.strip()
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "c", "cluster": {"server": self.server,
                                                   "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "c", "user": "operator"}}],
        }
        path = self.workdir / "operator.kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, namespace: str, service_account: str) -> LocalOperator:
        from mlsec.local import procs

        env = {**os.environ, "KUBECONFIG": str(self._kubeconfig(namespace, service_account)),
               "POD_NAMESPACE": namespace}
        for key in ("VAULT_TOKEN", "VAULT_ADDR"):
            env.pop(key, None)
        cmd = [sys.executable, "-m", "mlsec", "run", "--bind-address", "127.0.0.1",
               "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
               "--lease-namespace", namespace]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        procs.wait_for("operator", self._healthy, 60, self.proc.pid, self.log_file)
        return self

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def render_chart(cluster: Cluster, namespace: str,
                 values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart rendered for this cluster's version, as objects."""
    from mlsec.local import manifests

    text = manifests.template(CHART, release=RELEASE, namespace=namespace,
                              kube_version=cluster.server_version(), values=values)
    return [d for d in yaml.safe_load_all(text) if d]


def install_all_but_the_deployment(cluster: Cluster, namespace: str,
                                   values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the chart (server-side) without the operator Deployment; return the Deployment."""
    docs = render_chart(cluster, namespace, values)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    rest = [d for d in docs if d is not deployment]
    cluster.kubectl("create", "namespace", namespace, check=False)
    crds = [d for d in rest if d["kind"] == "CustomResourceDefinition"]
    cluster.apply(*crds)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{d['metadata']['name']}" for d in crds])
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=mlsec-e2e", "-f", "-",
                    input=yaml.safe_dump_all([d for d in rest if d not in crds]))
    return deployment
