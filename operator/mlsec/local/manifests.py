"""``mlsec manifests``: regenerate everything derived from the code, or check that nothing drifted.

crds/ (``mlsec crds``), the chart's generated files (:mod:`mlsec.config.chart`) and
manifests/install.yaml (``helm template`` of the chart, with the helm this project builds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlsec.api import crdgen
from mlsec.config import chart
from mlsec.local import build, versions

OPENREPORTS_MODULE = "github.com/openreports/reports-api"
# Directories whose every file is generated: a file the source no longer produces is removed.
OWNED_DIRS = ("crds", f"{chart.CHART}/files/crds", f"{chart.CHART}/files/admission",
              f"{chart.CHART}/files/openreports")


def openreports_crds() -> dict[str, str]:
    """File name → text of the OpenReports CRDs of the pinned module (from the Go module cache)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{OPENREPORTS_MODULE}@{versions.OPENREPORTS_API}"],
        capture_output=True, text=True, cwd=tempfile.gettempdir(),
        env={**build._go_env(), "GOFLAGS": ""},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go mod download {OPENREPORTS_MODULE} failed:\n{proc.stderr[-2000:]}")
    crd_dir = Path(json.loads(proc.stdout)["Dir"]) / "config" / "crd"
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(crd_dir.glob("openreports.io_*.yaml"))}


def sources(root: Path) -> dict[Path, str]:
    """Every generated file except install.yaml (which is rendered from these): path → text."""
    crds = crdgen.render_crds()
    wanted = {root / "crds" / name: text for name, text in crds.items()}
    generated = chart.generated_files(crds, openreports_crds())
    wanted.update({root / chart.CHART / rel: text for rel, text in generated.items()})
    return wanted


def template(chart_dir: Path, *, release: str = chart.INSTALL_RELEASE,
             namespace: str = chart.INSTALL_NAMESPACE, kube_version: str | None = None,
             values: dict[str, object] | None = None, extra: list[str] | None = None,
             helm: Path | None = None) -> str:
    """`helm template` of the chart; ``values`` as ``--set-json key=json`` (dotted keys)."""
    cmd = [str(helm or build.helm_bin()), "template", release, str(chart_dir), "--namespace", namespace]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    for key, value in (values or {}).items():
        cmd += ["--set-json", f"{key}={json.dumps(value)}"]
    proc = subprocess.run([*cmd, *(extra or [])], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


class HelmError(RuntimeError):
    """helm refused to render (schema, `fail`, template error): its message."""


def render_install(chart_dir: Path, helm: Path | None = None) -> str:
    """install.yaml's text, rendered from ``chart_dir``."""
    args = chart.helm_template_args(str(chart_dir))
    proc = subprocess.run([str(helm or build.helm_bin()), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HelmError(f"helm template failed:\n{proc.stderr[-4000:]}")
    return chart.install_yaml(proc.stdout)


def _stale(root: Path, wanted: dict[Path, str]) -> list[Path]:
    found = []
    for rel in OWNED_DIRS:
        d = root / rel
        if d.is_dir():
            found += [p for p in sorted(d.glob("*.yaml")) if p not in wanted]
    return found


def write(root: Path) -> list[Path]:
    """Regenerate; returns the files that changed (written or removed)."""
    changed: list[Path] = []
    wanted = sources(root)
    for path in _stale(root, wanted):
        path.unlink()
        changed.append(path)
    for path, text in wanted.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    install = root / chart.INSTALL
    text = render_install(root / chart.CHART)
    if not install.exists() or install.read_text(encoding="utf-8") != text:
        install.parent.mkdir(parents=True, exist_ok=True)
        install.write_text(text, encoding="utf-8")
        changed.append(install)
    return changed


def check(root: Path) -> list[str]:
    """What `write` would change, as messages; empty when everything is in sync. Writes nothing."""
    wanted = sources(root)
    problems = [f"{p.relative_to(root)}: no longer generated" for p in _stale(root, wanted)]
    problems += [f"{p.relative_to(root)}: differs from its source" for p, t in wanted.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != t]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "chart"
        shutil.copytree(root / chart.CHART, copy)
        for rel in OWNED_DIRS:
            if rel.startswith(chart.CHART + "/"):
                shutil.rmtree(copy / rel.removeprefix(chart.CHART + "/"), ignore_errors=True)
        for path, text in wanted.items():
            if path.is_relative_to(root / chart.CHART):
                target = copy / path.relative_to(root / chart.CHART)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
        rendered = render_install(copy)
    install = root / chart.INSTALL
    if not install.exists() or install.read_text(encoding="utf-8") != rendered:
        problems.append(f"{chart.INSTALL}: differs from `helm template` of the chart")
    return problems
