"""Check built objects against the real schemas, without an API server.

- Istio: the openAPIV3Schema of the CRDs Istio publishes (istio.io/api, the version the local
  environment installs), including their CEL rules (translated to Python below: the table must
  hold every rule that applies to a field we set, otherwise the check fails and says which).
- Kubernetes: the OpenAPI v3 documents of the Kubernetes release the local environment runs
  (k8s.io/kubernetes/api/openapi-spec/v3).

Both are found in the local build cache (``mlsec local up`` puts them there) or the Go module
cache; the tests using them are skipped when neither has them. Unknown fields are errors (the API
server would reject them with strict field validation, or silently prune them from a CRD object).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mlsec.local import versions

Schema = dict[str, Any]


def _gomodcache() -> Path | None:
    env = os.environ.get("GOMODCACHE")
    if env:
        return Path(env)
    try:
        out = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return Path.home() / "go" / "pkg" / "mod"
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _cache_root() -> Path:
    return Path(os.environ.get("MLSEC_CACHE", Path.home() / ".cache" / "mlsec"))


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


@cache
def istio_crd_file() -> Path | None:
    candidates = [_cache_root() / f"istio-api-{versions.ISTIO_API}" / "crds.yaml"]
    mod = _gomodcache()
    if mod is not None:
        candidates.append(
            mod / f"istio.io/api@{versions.ISTIO_API}/kubernetes/customresourcedefinitions.gen.yaml"
        )
    return _first_existing(candidates)


@cache
def kubernetes_openapi_dir() -> Path | None:
    mod = _gomodcache()
    if mod is None:
        return None
    path = mod / f"k8s.io/kubernetes@{versions.KUBERNETES}/api/openapi-spec/v3"
    return path if path.exists() else None


@cache
def istio_schemas() -> dict[tuple[str, str], Schema]:
    """(apiVersion, kind) -> openAPIV3Schema of every served Istio version."""
    path = istio_crd_file()
    assert path is not None
    out: dict[tuple[str, str], Schema] = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        group = doc["spec"]["group"]
        kind = doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


@cache
def _openapi_doc(api_version: str) -> dict[str, Any]:
    base = kubernetes_openapi_dir()
    assert base is not None
    name = "api__v1_openapi.json" if api_version == "v1" else (
        "apis__" + api_version.replace("/", "__") + "_openapi.json"
    )
    return dict(json.loads((base / name).read_text()))


def kubernetes_schema(api_version: str, kind: str) -> tuple[Schema, dict[str, Schema]]:
    doc = _openapi_doc(api_version)
    schemas: dict[str, Schema] = doc["components"]["schemas"]
    group, _, version = api_version.rpartition("/")
    for schema in schemas.values():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, kind):
                return schema, schemas
    raise KeyError(f"no schema for {api_version} {kind}")


# --- CEL rules of the Istio CRDs, in Python -------------------------------------------------------
# Keyed by the exact rule text. A rule that applies to a field we set but is missing here fails
# the check, so a new Istio release cannot add a rule we silently ignore.


def _has(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


CEL: dict[str, Callable[[Any], bool]] = {
    '!self.contains("*")': lambda s: "*" not in s,
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    "self.all(key, key.size() != 0)": lambda s: all(len(k) != 0 for k in s),
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + "
    "(has(self.targetRefs) ? 1 : 0) <= 1": lambda s: (
        _has(s, "selector") + _has(s, "targetRef") + _has(s, "targetRefs") <= 1
    ),
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1": lambda s: (
        _has(s, "workloadSelector") + _has(s, "targetRefs") <= 1
    ),
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : '
    "!has(self.waypoint)) : !has(self.waypoint)": lambda s: (
        (_has(s, "waypoint") if s["context"] == "WAYPOINT" else not _has(s, "waypoint"))
        if _has(s, "context")
        else not _has(s, "waypoint")
    ),
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) &&\n"
    "!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true": (
        lambda s: not (_has(s, "serviceAccounts") or _has(s, "notServiceAccounts"))
        or not any(_has(s, k) for k in ("principals", "notPrincipals", "namespaces",
                                         "notNamespaces"))
    ),
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? "
    "self.selector.matchLabels : {}).size() > 0) : true": lambda s: (
        not _has(s, "portLevelMtls")
        or bool(((s.get("selector") or {}).get("matchLabels")) or {})
    ),
}


# --- the validator -------------------------------------------------------------------------------

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class Validator:
    def __init__(self, refs: dict[str, Schema] | None = None) -> None:
        self.refs = refs or {}
        self.errors: list[str] = []

    def _resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.refs[schema["$ref"].rsplit("/", 1)[-1]]
        if "allOf" in schema:
            merged: Schema = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = {**self._resolve(part), **merged}
            return merged
        return schema

    def matches(self, schema: Schema, value: Any, path: str) -> bool:
        sub = Validator(self.refs)
        sub.check(schema, value, path)
        return not sub.errors

    def check(self, schema: Schema, value: Any, path: str = "") -> None:
        schema = self._resolve(schema)
        err = self.errors.append
        if value is None:
            if not schema.get("nullable"):
                err(f"{path}: null")
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                err(f"{path}: must be an integer or a string, got {value!r}")
            return
        typ = schema.get("type")
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
        }
        if typ is not None and not checks[typ](value):
            err(f"{path}: must be {typ}, got {value!r}")
            return
        if "enum" in schema and value not in schema["enum"]:
            err(f"{path}: {value!r} not in {schema['enum']}")
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                err(f"{path}: longer than {schema['maxLength']}")
            if "minLength" in schema and len(value) < schema["minLength"]:
                err(f"{path}: shorter than {schema['minLength']}")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                err(f"{path}: {value!r} does not match {schema['pattern']}")
        if isinstance(value, int) and not isinstance(value, bool):
            lo, hi = _INT_RANGES.get(schema.get("format", ""), (None, None))
            lo = schema.get("minimum", lo)
            hi = schema.get("maximum", hi)
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                err(f"{path}: {value} out of range [{lo}, {hi}]")
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                err(f"{path}: more than {schema['maxItems']} items")
            if "minItems" in schema and len(value) < schema["minItems"]:
                err(f"{path}: fewer than {schema['minItems']} items")
            for i, item in enumerate(value):
                if "items" in schema:
                    self.check(schema["items"], item, f"{path}[{i}]")
        if isinstance(value, dict):
            self._object(schema, value, path)
        for alt in ("oneOf", "anyOf"):
            if alt in schema:
                n = sum(self.matches(s, value, path) for s in schema[alt])
                if (alt == "oneOf" and n != 1) or (alt == "anyOf" and n == 0):
                    err(f"{path}: {n} of the {alt} alternatives match")
        if "not" in schema and self.matches(schema["not"], value, path):
            err(f"{path}: matches a forbidden schema")
        for rule in schema.get("x-kubernetes-validations", []):
            fn = CEL.get(rule["rule"])
            if fn is None:
                err(f"{path}: CEL rule not translated in builders_schema.CEL: {rule['rule']!r}")
            elif not fn(value):
                err(f"{path}: {rule.get('message', rule['rule'])}")

    def _object(self, schema: Schema, value: dict[str, Any], path: str) -> None:
        err = self.errors.append
        for key in schema.get("required", []):
            if key not in value:
                err(f"{path}: missing required {key}")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            err(f"{path}: more than {schema['maxProperties']} properties")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            err(f"{path}: fewer than {schema['minProperties']} properties")
        props: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        free = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                self.check(props[key], item, sub)
            elif isinstance(extra, dict):
                self.check(extra, item, sub)
            elif not (free or extra is True or (not props and "type" not in schema)):
                err(f"{sub}: unknown field")


def validate(obj: dict[str, Any]) -> list[str]:
    """Schema errors of ``obj`` (empty if valid); Istio kinds by CRD, the rest by OpenAPI."""
    key = (obj["apiVersion"], obj["kind"])
    if obj["apiVersion"].split("/")[0].endswith("istio.io"):
        v = Validator()
        schema = istio_schemas()[key]
        # The API server checks metadata itself (ObjectMeta), not through the CRD schema.
        body = {k: x for k, x in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        v.check(schema, body)
        meta_schema, refs = kubernetes_schema("v1", "ServiceAccount")
        mv = Validator(refs)
        mv.check(meta_schema["properties"]["metadata"], obj["metadata"], "metadata")
        return v.errors + mv.errors
    schema, refs = kubernetes_schema(*key)
    v = Validator(refs)
    v.check(schema, obj)
    return v.errors
