"""Sample objects for integration tests, retargeted to a test namespace."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
API = "mlsec.io/v1alpha1"


def _sample(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "manifests/samples" / name).read_text()))


def policy(namespace: str, name: str = "default", **spec_changes: Any) -> dict[str, Any]:
    """The hospital sample policy (no Vault block unless given), in ``namespace``."""
    doc = _sample("policy-hospital.yaml")
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"].pop("vault", None)
    doc["spec"].update(copy.deepcopy(spec_changes))
    return doc


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def model(namespace: str, name: str = "mri-classifier", *, version: str = "3",
          image: str | None = None, stage: str = "staging", vault: bool = False,
          **spec_changes: Any) -> dict[str, Any]:
    """The mri-classifier sample (without Vault secrets unless ``vault``), in ``namespace``."""
    doc = _sample("modeldeployment-mri-classifier.yaml")
    doc["metadata"] = {"name": name, "namespace": namespace}
    spec = doc["spec"]
    spec["model"] = name
    spec["version"] = version
    spec["stage"] = stage
    spec["image"] = image or f"registry.hospital.com/ml/{name}@{digest(name + version)}"
    if not vault:
        spec.pop("secrets", None)
        spec.pop("tls", None)
    spec.update(copy.deepcopy(spec_changes))
    return doc


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def has_condition(obj: dict[str, Any] | None, type_: str, status: str, reason: str | None = None,
                  generation: bool = True) -> bool:
    c = condition(obj, type_)
    if not c or c["status"] != status or (reason and c["reason"] != reason):
        return False
    return not generation or c.get("observedGeneration") == (obj or {})["metadata"].get("generation")
