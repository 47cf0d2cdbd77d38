"""The generated CRDs: golden files, structural schemas, names, columns and CEL rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import CRDS

from mlsec.api import RESOURCES, ResourceInfo
from mlsec.api.approval import IMMUTABLE_MESSAGE
from mlsec.api.crdgen import HEADER, crd, render_crds, write_crds
from mlsec.api.structural import structural_problems


def _schema(info: ResourceInfo) -> dict[str, Any]:
    schema: dict[str, Any] = crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}.*")
    return found


def test_golden_files_are_up_to_date() -> None:
    rendered = render_crds()
    on_disk = {p.name: p.read_text() for p in CRDS.glob("mlsec.io_*.yaml")}
    assert set(on_disk) == set(rendered), "CRD files differ: run `make crds`"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"crds/{name} is out of date: run `make crds`"


def test_render_is_deterministic_and_headed() -> None:
    first, second = render_crds(), render_crds()
    assert first == second
    assert set(first) == {
        "mlsec.io_mlsecuritypolicies.yaml",
        "mlsec.io_modeldeployments.yaml",
        "mlsec.io_modelapprovals.yaml",
        "mlsec.io_promotionledgers.yaml",
        "mlsec.io_admission-policies.yaml",
    }
    for text in first.values():
        assert text.startswith(HEADER)
        assert "&id" not in text  # no YAML anchors
        assert list(yaml.safe_load_all(text))


def test_write_crds(tmp_path: Path) -> None:
    written = write_crds(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(render_crds())


@pytest.mark.parametrize("info", RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural_and_bounded(info: ResourceInfo) -> None:
    schema = _schema(info)
    assert structural_problems(schema) == []
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "$defs", "anyOf: null", "title:", "additionalProperties: false"):
        assert forbidden not in text


@pytest.mark.parametrize("info", RESOURCES, ids=lambda r: r.kind)
def test_names_and_subresources(info: ResourceInfo) -> None:
    doc = crd(info)
    assert doc["metadata"]["name"] == f"{info.plural}.mlsec.io"
    spec = doc["spec"]
    assert spec["group"] == "mlsec.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["categories"] == ["mlsec"]
    assert spec["names"]["shortNames"] == list(info.short_names)
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    if info.status_model is None:  # the PromotionLedger: all spec, no status to write
        assert "subresources" not in version
        assert "status" not in _schema(info)["properties"]
    else:
        assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"
    assert _schema(info)["required"] == ["spec"]


def test_short_names() -> None:
    assert {r.kind: r.short_names for r in RESOURCES} == {
        "MLSecurityPolicy": ("mlpol",),
        "ModelDeployment": ("mld",),
        "ModelApproval": ("mla",),
        "PromotionLedger": ("mlledger",),
    }


@pytest.mark.parametrize("info", RESOURCES, ids=lambda r: r.kind)
def test_printer_columns_and_selectable_fields_exist(info: ResourceInfo) -> None:
    paths = {path for path, _ in _walk(_schema(info))}
    for column in info.printer_columns:
        plain = column.json_path.split("[?", 1)[0]  # .status.conditions[?(...)].status
        if not plain.startswith(".metadata"):
            assert plain in paths, column
    nodes = dict(_walk(_schema(info)))
    for field in info.selectable_fields:
        assert nodes[field]["type"] in ("string", "integer", "boolean")


def _node(info: ResourceInfo, path: str) -> dict[str, Any]:
    return dict(_walk(_schema(info)))[path]


def test_cel_rules_present() -> None:
    policy, deployment, approval, _ledger = RESOURCES
    [ldap_rule] = _node(policy, ".spec.ldap")["x-kubernetes-validations"]
    assert "startTLS" in ldap_rule["rule"] and ldap_rule["fieldPath"] == ".url"
    [rate_rule] = _node(policy, ".spec.network.rateLimit")["x-kubernetes-validations"]
    assert rate_rule["rule"] == "self.burst >= self.requestsPerSecond"
    [stage_rule] = _node(deployment, ".spec.stage")["x-kubernetes-validations"]
    assert "oldSelf" in stage_rule["rule"] and "messageExpression" in stage_rule
    [unique] = _node(deployment, ".spec.secrets")["x-kubernetes-validations"]
    assert "exists_one" in unique["rule"]
    [immutable] = _node(approval, ".spec")["x-kubernetes-validations"]
    assert immutable == {
        "rule": "self == oldSelf",
        "message": IMMUTABLE_MESSAGE,
        "reason": "FieldValueForbidden",
    }


def test_conditions_are_list_maps() -> None:
    for info in RESOURCES[:2]:
        conditions = _node(info, ".status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_quantity_is_int_or_string() -> None:
    node = _node(RESOURCES[1], ".spec.resources.requests.*")
    assert node["x-kubernetes-int-or-string"] is True
    assert "type" not in node


def test_defaults_in_schema() -> None:
    policy = RESOURCES[0]
    assert _node(policy, ".spec.enforcement")["default"] == "enforce"
    assert _node(policy, ".spec.ldap.syncInterval")["default"] == "5m"
    assert _node(policy, ".spec.images")["default"] == {}
    assert _node(policy, ".spec.images.requireDigest")["default"] is True
    assert "default" not in _node(policy, ".spec.vault")


# --- the checker itself -----------------------------------------------------------------------

_OK = {"type": "string", "maxLength": 3}


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"$ref": "#/$defs/X"}, "keyword '$ref'"),
        ({"description": "no type"}, "no type"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "anyOf is only allowed"),
        ({"type": "string"}, "without maxLength"),
        ({"type": "array", "items": _OK}, "without maxItems"),
        ({"type": "array", "maxItems": 1}, "without an items schema"),
        ({"type": "object", "additionalProperties": _OK}, "without maxProperties"),
        ({"type": "object", "additionalProperties": False}, "must be a schema"),
        (
            {"type": "object", "properties": {"a": _OK}, "additionalProperties": _OK},
            "mutually exclusive",
        ),
        ({"type": "object", "required": ["a"]}, "required 'a'"),
        ({"type": "integer", "exclusiveMinimum": 0}, "keyword 'exclusiveMinimum'"),
        ({"type": "string", "const": "x", "maxLength": 1}, "keyword 'const'"),
        ({"type": "integer", "default": "1"}, "default '1'"),
        ({"type": "null"}, "unknown type"),
        (
            {
                "type": "array",
                "maxItems": 2,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
                "items": {"type": "object", "properties": {"k": _OK}},
            },
            "must be required or defaulted",
        ),
        ({"x-kubernetes-int-or-string": True, "type": "string"}, "int-or-string"),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, ".a: string without"),
    ],
)
def test_checker_finds(schema: dict[str, Any], problem: str) -> None:
    problems = structural_problems(schema)
    assert any(problem in p for p in problems), problems
