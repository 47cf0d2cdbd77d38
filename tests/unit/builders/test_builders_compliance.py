"""Image rules: each violation names the policy rule it breaks."""

from __future__ import annotations

from typing import Any

import pytest
from builders_cases import DIGEST, make_md, make_policy

from mlsec.builders.compliance import (
    RULE_ALLOWED_REGISTRIES,
    RULE_REQUIRE_DIGEST,
    Violation,
    image_violations,
    violation_messages,
)

HOSPITAL = {"allowedRegistries": ["registry.hospital.com/"], "requireDigest": True}
PINNED = f"registry.hospital.com/ml/mri@{DIGEST}"
DIGEST_MSG = "images.requireDigest: image must be pinned by @sha256 digest"

CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    (PINNED, HOSPITAL, []),
    (f"registry.hospital.com/ml/mri:3@{DIGEST}", HOSPITAL, []),
    ("registry.hospital.com/ml/mri:3", HOSPITAL, [DIGEST_MSG]),
    ("registry.hospital.com/ml/mri@sha256:abc", HOSPITAL, [DIGEST_MSG]),  # not a full digest
    (
        f"registry.evil.io/x@{DIGEST}",
        HOSPITAL,
        [f"images.allowedRegistries: registry.evil.io/x@{DIGEST} is not in [registry.hospital.com/]"],
    ),
    (
        "registry.evil.io/x",
        HOSPITAL,
        [
            "images.allowedRegistries: registry.evil.io/x is not in [registry.hospital.com/]",
            DIGEST_MSG,
        ],
    ),
    # a longer host name sharing the prefix is another registry
    (
        f"registry.hospital.com.evil.io/ml/mri@{DIGEST}",
        HOSPITAL,
        [
            "images.allowedRegistries: "
            f"registry.hospital.com.evil.io/ml/mri@{DIGEST} is not in [registry.hospital.com/]"
        ],
    ),
    # a short name is docker.io/library/...; the message shows both
    (
        "nginx",
        HOSPITAL,
        [
            "images.allowedRegistries: nginx (docker.io/library/nginx) is not in "
            "[registry.hospital.com/]",
            DIGEST_MSG,
        ],
    ),
    (
        f"docker.io/library/nginx@{DIGEST}",
        {"allowedRegistries": ["docker.io/library/", "registry.hospital.com/"]},
        [],
    ),
    (
        f"registry.hospital.com/other/x@{DIGEST}",
        {"allowedRegistries": ["registry.hospital.com/ml/", "ghcr.io/hospital/"]},
        [
            f"images.allowedRegistries: registry.hospital.com/other/x@{DIGEST} is not in "
            "[registry.hospital.com/ml/, ghcr.io/hospital/]"
        ],
    ),
    ("anything.io/x:latest", {"allowedRegistries": [], "requireDigest": False}, []),
    ("anything.io/x:latest", {}, [DIGEST_MSG]),  # requireDigest defaults to true
    ("registry.hospital.com/ml/mri:3", {**HOSPITAL, "requireDigest": False}, []),
]


@pytest.mark.parametrize(("image", "images", "expected"), CASES)
def test_image_rules(image: str, images: dict[str, Any], expected: list[str]) -> None:
    md = make_md(image=image)
    assert violation_messages(md, make_policy(images=images)) == expected


def test_violation_carries_the_rule() -> None:
    [reg, dig] = image_violations(make_md(image="registry.evil.io/x"), make_policy(images=HOSPITAL))
    assert (reg.rule, dig.rule) == (RULE_ALLOWED_REGISTRIES, RULE_REQUIRE_DIGEST)
    assert dig == Violation("images.requireDigest", "image must be pinned by @sha256 digest")
    assert str(dig) == DIGEST_MSG


def test_sample_is_compliant() -> None:
    assert violation_messages(make_md(), make_policy()) == []
