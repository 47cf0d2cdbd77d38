"""Inputs of the builder tests: the samples (manifests/samples), with the uid a live object has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlsec.api import MLSecurityPolicy, ModelDeployment

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "manifests" / "samples"
UID = "6f1c1a52-0b7e-4a57-9a41-3c1f5f2b9d10"
DIGEST = "sha256:" + "ab" * 32


def _sample(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((SAMPLES / name).read_text()))


def md_body(**spec: Any) -> dict[str, Any]:
    """The sample ModelDeployment as a live object (with a uid); ``spec`` keys override."""
    body = _sample("modeldeployment-mri-classifier.yaml")
    body["metadata"]["uid"] = UID
    body["spec"].update(spec)
    return body


def make_md(name: str | None = None, **spec: Any) -> ModelDeployment:
    body = md_body(**spec)
    if name is not None:
        body["metadata"]["name"] = name
    return ModelDeployment.model_validate(body)


def make_policy(**network_or_images: Any) -> MLSecurityPolicy:
    """The sample policy; ``network=``/``images=`` replace those sections (as camelCase dicts)."""
    body = _sample("policy-hospital.yaml")
    body["spec"].update(network_or_images)
    return MLSecurityPolicy.model_validate(body)
