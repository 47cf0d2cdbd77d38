"""All children together: order, common metadata, desired hash, determinism, purity."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from builders_cases import UID, make_md, make_policy

from mlsec.builders.children import CHILD_KINDS, child_names, desired_children
from mlsec.builders.meta import DESIRED_HASH_ANNOTATION, canonical_json, desired_hash
from mlsec.builders.naming import labels


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def _hashes(objs: list[dict[str, Any]]) -> dict[str, str]:
    return {o["kind"]: o["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] for o in objs}


def test_children_in_apply_order() -> None:
    children = desired_children(make_md(), make_policy())
    assert [(o["apiVersion"], o["kind"]) for o in children] == CHILD_KINDS
    # mesh policy before the pods
    kinds = [o["kind"] for o in children]
    assert kinds.index("Deployment") == len(kinds) - 1
    assert kinds.index("PeerAuthentication") < kinds.index("Deployment")
    assert kinds.index("AuthorizationPolicy") < kinds.index("Deployment")


def test_without_rate_limit_there_is_no_envoy_filter() -> None:
    children = desired_children(make_md(), make_policy(network={"mtls": "STRICT"}))
    assert [(o["apiVersion"], o["kind"]) for o in children] == [
        k for k in CHILD_KINDS if k[1] != "EnvoyFilter"
    ]


def test_a_new_release_changes_only_the_deployment() -> None:
    before = desired_children(make_md(), make_policy())
    image = f"registry.hospital.com/models/mri@sha256:{'b' * 64}"
    after = desired_children(make_md(version="4", image=image), make_policy())
    changed = [a["kind"] for a, b in zip(after, before, strict=True) if a != b]
    assert changed == ["Deployment"]


def test_every_child_has_the_common_metadata() -> None:
    md = make_md()
    names = child_names(md)
    for obj in desired_children(md, make_policy()):
        meta = obj["metadata"]
        assert meta["name"] == names[obj["kind"]]
        assert meta["namespace"] == "radiology-ml"
        versionless = {k: v for k, v in labels(md).items() if k != "app.kubernetes.io/version"}
        assert meta["labels"] == (labels(md) if obj["kind"] == "Deployment" else versionless)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "mlsec.io/v1alpha1",
                "kind": "ModelDeployment",
                "name": "mri-classifier",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["annotations"] == {DESIRED_HASH_ANNOTATION: desired_hash(obj)}


def test_child_names() -> None:
    assert child_names(make_md()) == {
        "ServiceAccount": "mri-classifier",
        "PeerAuthentication": "mri-classifier",
        "AuthorizationPolicy": "mri-classifier",
        "DestinationRule": "mri-classifier",
        "EnvoyFilter": "mri-classifier-ratelimit",
        "Service": "mri-classifier",
        "Deployment": "mri-classifier",
    }
    assert set(child_names(make_md())) == {kind for _, kind in CHILD_KINDS}


def test_hash_is_of_the_object_without_the_annotation() -> None:
    for obj in desired_children(make_md(), make_policy()):
        bare = copy.deepcopy(obj)
        del bare["metadata"]["annotations"]
        expected = hashlib.sha256(canonical_json(bare).encode()).hexdigest()
        assert obj["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] == expected
        assert len(expected) == 64


def test_same_input_same_output() -> None:
    first = desired_children(make_md(), make_policy())
    second = desired_children(make_md(), make_policy())
    assert json.dumps(first) == json.dumps(second)  # also the same key order
    assert _hashes(first) == _hashes(second)


def test_rate_limit_change_changes_only_the_envoy_filter() -> None:
    md = make_md()
    before = _hashes(desired_children(md, make_policy()))
    limit = {"requestsPerSecond": 100, "burst": 300}
    network = {"mtls": "STRICT", "allowedPrincipals": ["cluster.local/ns/radiology-ml/sa/frontend"]}
    after = _hashes(desired_children(md, make_policy(network={**network, "rateLimit": limit})))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"EnvoyFilter"}


@pytest.mark.parametrize(
    ("change", "kinds"),
    [
        ({"replicas": 3}, {"Deployment"}),
        ({"image": "registry.hospital.com/ml/mri-classifier@sha256:" + "cd" * 32}, {"Deployment"}),
        ({"port": 9000}, {"Deployment", "AuthorizationPolicy"}),
        # labels are on every child
        ({"stage": "production"}, {kind for _, kind in CHILD_KINDS}),
        ({"secrets": [], "tls": None}, {"ServiceAccount", "Deployment"}),
    ],
)
def test_spec_changes_touch_only_the_children_that_show_them(
    change: dict[str, Any], kinds: set[str]
) -> None:
    before = _hashes(desired_children(make_md(), make_policy()))
    after = _hashes(desired_children(make_md(**change), make_policy()))
    assert {k for k in before if before[k] != after[k]} == kinds


def test_builders_do_not_modify_their_inputs() -> None:
    md, policy = make_md(), make_policy()
    md_dump, policy_dump = md.model_dump(), policy.model_dump()
    children = desired_children(md, policy)
    children[0]["metadata"]["labels"]["x"] = "y"  # outputs share no state with inputs or each other
    assert md.model_dump() == md_dump
    assert policy.model_dump() == policy_dump
    assert "x" not in desired_children(md, policy)[1]["metadata"]["labels"]


def test_children_are_plain_json() -> None:
    for obj in desired_children(make_md(), make_policy()):
        assert json.loads(json.dumps(obj)) == obj


def test_missing_uid_is_an_error() -> None:
    md = make_md()
    md.metadata.uid = None
    with pytest.raises(ValueError, match="uid"):
        desired_children(md, make_policy())
