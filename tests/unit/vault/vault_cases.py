"""Inputs of the Vault tests: the samples (manifests/samples) as live objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlsec.api import MLSecurityPolicy, ModelDeployment

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"


def _sample(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((SAMPLES / name).read_text()))


def make_md(name: str | None = None, namespace: str | None = None, **spec: Any) -> ModelDeployment:
    body = _sample("modeldeployment-mri-classifier.yaml")
    body["metadata"]["uid"] = "6f1c1a52-0b7e-4a57-9a41-3c1f5f2b9d10"
    if name:
        body["metadata"]["name"] = name
    if namespace:
        body["metadata"]["namespace"] = namespace
    body["spec"].update(spec)
    return ModelDeployment.model_validate(body)


def make_policy(**vault: Any) -> MLSecurityPolicy:
    """The sample policy; keyword arguments replace fields of spec.vault (vault=None drops it)."""
    body = _sample("policy-hospital.yaml")
    if vault.get("drop"):
        body["spec"].pop("vault")
    else:
        body["spec"]["vault"].update(vault)
    return MLSecurityPolicy.model_validate(body)
