"""Checks that an OpenAPI schema is structural and bounded, as the API server requires of CRDs.

Structural (apiextensions.k8s.io/v1): every node has a type (or is int-or-string /
preserve-unknown-fields), no $ref, no type-bearing anyOf/oneOf, properties and
additionalProperties never together. Bounded (our rule, for CEL cost estimation): every string has
a maxLength (or an enum, or is a date-time), every array a maxItems, every map a maxProperties.
"""

from __future__ import annotations

from typing import Any

ALLOWED_KEYS = frozenset(
    {
        "description",
        "type",
        "format",
        "default",
        "maximum",
        "minimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "enum",
        "maxProperties",
        "minProperties",
        "required",
        "items",
        "properties",
        "additionalProperties",
        "anyOf",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-map-type",
    }
)
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}
# The API server itself validates these, and no CEL rule reads them.
_ROOT_FIELDS = frozenset({".apiVersion", ".kind"})


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Everything that keeps `node` from being a structural, bounded CRD schema (empty if none)."""
    at = path or "<root>"
    if not isinstance(node, dict):
        return [f"{at}: schema must be a mapping"]
    problems = [f"{at}: keyword {k!r} not allowed" for k in sorted(node) if k not in ALLOWED_KEYS]
    typ = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        if typ is not None or node.get("anyOf", INT_OR_STRING) != INT_OR_STRING:
            problems.append(f"{at}: int-or-string must have no type and anyOf integer|string")
    elif "anyOf" in node:
        problems.append(f"{at}: anyOf is only allowed for int-or-string")
    elif typ is None and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{at}: no type")
    elif typ is not None and typ not in TYPES:
        problems.append(f"{at}: unknown type {typ!r}")

    if "default" in node and typ in _PY_TYPES:
        default, expected = node["default"], _PY_TYPES[typ]
        if not isinstance(default, expected) or (typ == "integer" and isinstance(default, bool)):
            problems.append(f"{at}: default {default!r} is not of type {typ}")
    for rule in node.get("x-kubernetes-validations", []):
        if not isinstance(rule, dict) or not isinstance(rule.get("rule"), str):
            problems.append(f"{at}: x-kubernetes-validations entries need a rule")

    if typ == "object":
        problems += _object_problems(node, path)
    elif typ == "array":
        problems += _array_problems(node, path)
    elif (
        typ == "string"
        and not {"maxLength", "enum"} & node.keys()
        and node.get("format") != "date-time"
        and path not in _ROOT_FIELDS
    ):
        problems.append(f"{at}: string without maxLength")
    return problems


def _object_problems(node: dict[str, Any], path: str) -> list[str]:
    at = path or "<root>"
    problems = []
    props = node.get("properties")
    extra = node.get("additionalProperties")
    if props is not None and extra is not None:
        problems.append(f"{at}: properties and additionalProperties are mutually exclusive")
    if extra is not None:
        if not isinstance(extra, dict):
            problems.append(f"{at}: additionalProperties must be a schema (not a boolean)")
        else:
            if "maxProperties" not in node:
                problems.append(f"{at}: map without maxProperties")
            problems += structural_problems(extra, f"{path}.*")
    for name in node.get("required", []):
        if name not in (props or {}):
            problems.append(f"{at}: required {name!r} is not a property")
    for name, sub in (props or {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    return problems


def _array_problems(node: dict[str, Any], path: str) -> list[str]:
    at = path or "<root>"
    problems = []
    items = node.get("items")
    if not isinstance(items, dict):
        return [f"{at}: array without an items schema"]
    if "maxItems" not in node:
        problems.append(f"{at}: array without maxItems")
    if node.get("x-kubernetes-list-type") == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []
        if not keys:
            problems.append(f"{at}: list-type map needs x-kubernetes-list-map-keys")
        item_props = items.get("properties", {})
        for key in keys:
            required = key in items.get("required", [])
            if key not in item_props or not (required or "default" in item_props[key]):
                problems.append(f"{at}: list-map key {key!r} must be required or defaulted")
    return problems + structural_problems(items, f"{path}[]")
