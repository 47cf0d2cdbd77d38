"""Rendering the chart for the chart tests (helm template, no cluster)."""

from __future__ import annotations

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


def render(values: dict[str, Any] | None = None, *, namespace: str = "mlsec-system",
           release: str = "mlsec-operator", kube_version: str = KUBE,
           extra: tuple[str, ...] = ()) -> list[Obj]:
    text = manifests.template(CHART, release=release, namespace=namespace, kube_version=kube_version,
                              values=values, extra=list(extra), helm=helm())
    return [d for d in yaml.safe_load_all(text) if d]


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Obj], kind: str) -> Obj:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def yaml_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
