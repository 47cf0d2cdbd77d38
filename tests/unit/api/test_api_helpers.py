"""Pure helpers: durations, image references, image policy, error formatting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from mlsec.api import (
    ImagePolicy,
    ModelDeploymentSpec,
    image_digest,
    image_registry,
    normalize_image,
    parse_duration,
    validation_messages,
)
from mlsec.api.common import duration_between

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", timedelta(minutes=5)),
        ("168h", timedelta(days=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("300ms", timedelta(milliseconds=300)),
        ("1h0m0s", timedelta(hours=1)),
        ("2us", timedelta(microseconds=2)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5d", "-5m", "m", "5 m", "1h-30m", "1.h", "5M"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_duration_between() -> None:
    check = duration_between("30s", "24h")
    assert check("30s") == "30s"
    assert check("24h") == "24h"
    for bad in ("29s", "24h1s"):
        with pytest.raises(ValueError, match="between 30s and 24h"):
            check(bad)


@pytest.mark.parametrize(
    ("image", "digest", "registry"),
    [
        (f"registry.hospital.com/ml/mri-classifier@{DIGEST}", DIGEST, "registry.hospital.com"),
        (f"registry.hospital.com/ml/mri:3@{DIGEST}", DIGEST, "registry.hospital.com"),
        ("registry.hospital.com/ml/mri:3", None, "registry.hospital.com"),
        ("localhost:5000/mri@sha256:" + "A" * 64, None, "localhost:5000"),
        ("localhost/mri", None, "localhost"),
        ("nginx", None, "docker.io"),
        ("library/nginx:1.27", None, "docker.io"),
        (f"gcr.io/project/model@{DIGEST}", DIGEST, "gcr.io"),
        ("registry.hospital.com/ml/mri@sha256:abc", None, "registry.hospital.com"),
    ],
)
def test_image_helpers(image: str, digest: str | None, registry: str) -> None:
    assert image_digest(image) == digest
    assert image_registry(image) == registry


@pytest.mark.parametrize(
    ("image", "full"),
    [
        ("nginx", "docker.io/library/nginx"),
        ("nginx:1.27", "docker.io/library/nginx:1.27"),
        ("user/app:1", "docker.io/user/app:1"),
        ("registry.hospital.com/ml/x:1", "registry.hospital.com/ml/x:1"),
    ],
)
def test_normalize_image(image: str, full: str) -> None:
    assert normalize_image(image) == full


def test_image_policy_violations() -> None:
    policy = ImagePolicy(allowed_registries=["registry.hospital.com/"])
    assert policy.violations(f"registry.hospital.com/ml/mri@{DIGEST}") == []
    assert len(policy.violations("registry.hospital.com/ml/mri:3")) == 1  # no digest
    # A look-alike host must not pass a prefix check.
    assert len(policy.violations(f"registry.hospital.com.evil.io/mri@{DIGEST}")) == 1
    assert len(policy.violations("nginx")) == 2
    assert ImagePolicy(require_digest=False).violations("nginx") == []


def test_validation_messages_paths() -> None:
    with pytest.raises(ValidationError) as err:
        ModelDeploymentSpec.model_validate(
            {
                "model": "m",
                "version": "1",
                "image": "x",
                "stage": "staging",
                "dataClassification": "public",
                "owner": "alice",
                "secrets": [{"name": "a", "path": "ok/path"}, {"name": "b", "path": "/abs"}],
            }
        )
    [line] = validation_messages(err.value)
    assert line.startswith("spec.secrets[1].path: String should match pattern")
