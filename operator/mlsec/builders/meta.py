"""Metadata common to every child: name, namespace, labels, owner reference and desired hash."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from mlsec import API_VERSION
from mlsec.api import ModelDeployment
from mlsec.builders.naming import LABEL_VERSION, labels, namespace_of

Obj = dict[str, Any]

# sha256 (hex) of the canonical JSON of the object without this annotation. The operator compares
# it with the live object's annotation and skips the write when they are equal.
DESIRED_HASH_ANNOTATION = "mlsec.io/desired-hash"


def owner_reference(md: ModelDeployment) -> Obj:
    """A controller reference to ``md``: the garbage collector deletes the child with it."""
    uid = md.metadata.uid
    if not uid:
        raise ValueError("ModelDeployment has no metadata.uid; its children need it as owner")
    if not md.metadata.name:
        raise ValueError("ModelDeployment has no metadata.name")
    return {
        "apiVersion": API_VERSION,
        "kind": md.kind,
        "name": md.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(md: ModelDeployment, name: str, *, versioned: bool = False) -> Obj:
    """metadata of a child called ``name`` (the desired-hash annotation is added by finish()).

    Only ``versioned`` children (the Deployment) carry the version label: a new release then
    rewrites the one child whose content depends on it, not all seven.
    """
    child_labels = labels(md)
    if not versioned:
        del child_labels[LABEL_VERSION]
    return {
        "name": name,
        "namespace": namespace_of(md),
        "labels": child_labels,
        "ownerReferences": [owner_reference(md)],
    }


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 as is: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def desired_hash(obj: Obj) -> str:
    """sha256 (hex) of ``obj`` without its desired-hash annotation (the annotation may be there)."""
    meta = dict(obj.get("metadata") or {})
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != DESIRED_HASH_ANNOTATION
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return hashlib.sha256(canonical_json({**obj, "metadata": meta}).encode()).hexdigest()


def finish(obj: Obj) -> Obj:
    """A copy of ``obj`` carrying its desired-hash annotation."""
    out = copy.deepcopy(obj)
    out.setdefault("metadata", {}).setdefault("annotations", {})[DESIRED_HASH_ANNOTATION] = (
        desired_hash(obj)
    )
    return out
