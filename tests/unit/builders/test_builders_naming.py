"""Child names, labels, selector and owner reference."""

from __future__ import annotations

import re

import pytest
from builders_cases import UID, make_md

from mlsec.builders.meta import object_meta, owner_reference
from mlsec.builders.naming import (
    base_name,
    envoy_filter_name,
    label_value,
    labels,
    selector_labels,
    service_host,
)

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_labels_of_the_sample() -> None:
    assert labels(make_md()) == {
        "app.kubernetes.io/name": "mri-classifier",
        "app.kubernetes.io/instance": "mri-classifier",
        "app.kubernetes.io/version": "3",
        "app.kubernetes.io/managed-by": "mlsec-operator",
        "mlsec.io/model": "mri-classifier",
        "mlsec.io/stage": "staging",
        "mlsec.io/data-classification": "phi",
    }


def test_selector_is_only_the_instance_label() -> None:
    # A Deployment's selector is immutable: nothing that changes over time may be in it.
    assert selector_labels(make_md()) == {"app.kubernetes.io/instance": "mri-classifier"}
    assert selector_labels(make_md(version="4", stage="production")) == selector_labels(make_md())


def test_names() -> None:
    md = make_md()
    assert base_name(md) == "mri-classifier"
    assert envoy_filter_name(md) == "mri-classifier-ratelimit"
    assert service_host(md) == "mri-classifier.radiology-ml.svc.cluster.local"


@pytest.mark.parametrize(
    "name",
    ["mri.classifier.v2", "9lives", "a" * 63, "x" * 64, "b." * 100 + "c", "0.1", "m" + "-" * 70 + "z"],
)
def test_base_name_is_always_a_dns1035_label(name: str) -> None:
    got = base_name(make_md(name=name))
    assert len(got) <= 63
    assert DNS1035.match(got), got
    assert base_name(make_md(name=name)) == got  # deterministic


def test_base_name_keeps_distinct_models_distinct() -> None:
    names = ["a.b", "a-b", "a--b", "x" * 64, "x" * 65, "9a", "m-9a"]
    assert len({base_name(make_md(name=n)) for n in names}) == len(names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", "3"), ("1.4.0", "1.4.0"), ("1.0-", "1.0"), ("v2_", "v2"), ("a/b c", "a-b-c"),
     ("x" * 70, "x" * 63), ("-", "")],
)
def test_label_value(text: str, expected: str) -> None:
    assert label_value(text) == expected
    assert LABEL_VALUE.match(label_value(text))


def test_version_label_is_sanitised() -> None:
    assert labels(make_md(version="1.0-rc_"))["app.kubernetes.io/version"] == "1.0-rc"


def test_owner_reference() -> None:
    assert owner_reference(make_md()) == {
        "apiVersion": "mlsec.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "mri-classifier",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_missing_uid_or_namespace_is_an_error() -> None:
    md = make_md()
    md.metadata.uid = None
    with pytest.raises(ValueError, match="uid"):
        owner_reference(md)
    md = make_md()
    md.metadata.namespace = None
    with pytest.raises(ValueError, match="namespace"):
        object_meta(md, "x")
