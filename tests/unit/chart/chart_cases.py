"""Rendering the chart for the chart tests (helm template, no cluster)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mlsec.local import build, manifests

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm/mlsec-operator"
KUBE = "1.37.0"

Obj = dict[str, Any]


@cache
def helm() -> Path:
    return build.helm_bin()


Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are large


@cache
def _render(values: str, namespace: str, release: str, kube_version: str, extra: tuple[str, ...]) -> str:
    return manifests.template(CHART, release=release, namespace=namespace, kube_version=kube_version,
                              values=json.loads(values), extra=list(extra), helm=helm())


def render(values: dict[str, Any] | None = None, *, namespace: str = "mlsec-system",
           release: str = "mlsec-operator", kube_version: str = KUBE,
           extra: tuple[str, ...] = ()) -> list[Obj]:
    """The objects `helm template` renders (the text of identical calls is cached; the self-generated
    certificate is then the same, which no test relies on)."""
    text = _render(json.dumps(values or {}, sort_keys=True), namespace, release, kube_version, extra)
    return [d for d in yaml.load_all(text, Loader=Loader) if d]


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Obj], kind: str) -> Obj:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def yaml_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d]
