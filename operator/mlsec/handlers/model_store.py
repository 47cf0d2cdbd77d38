"""What the operator keeps of every ModelDeployment between events: a compact record each.

Fed by the models' own list+watch (:mod:`mlsec.handlers.models`), read by the reconcile queue
(is there work?), the admission webhooks (which model versions exist), the promotion ledger, the
compliance Reports and the Vault resync. kopf kept, for each model, its memory records, the last
handled body in its indexes and, at start-up, the whole listing until every index was complete;
here a model costs its spec and a small part of its status.

The two index views keep the shapes kopf's indexes had (namespace → list of entries), so the
code reading them did not change: ``models_by_namespace`` entries are ``(name, spec)``,
``report_models`` entries are ``(name, uid, spec, status subset, being deleted)``.
"""

from __future__ import annotations

import json
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mlsec.api.deployment import DeploymentConditionType, ModelDeploymentSpec, ModelDeploymentStatus
from mlsec.builders.children import CHILD_KINDS

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class ModelRecord:
    uid: str
    resource_version: str  # of the event it came from: writes based on the record test it
    generation: int
    # Spec and status subset as compact JSON, deflated against a dictionary of the schema's
    # words: ~0.4 KB a model instead of ~1 KB of JSON or ~5 KiB of dicts; inflated and parsed
    # when read (~15 microseconds; the readers read one namespace at a time).
    spec_packed: bytes
    status_packed: bytes  # the subset the Reports read
    deleting: bool
    finalizers: tuple[str, ...]
    uses_vault: bool  # by spec, or by status (Vault objects were written for it)
    labels_annotations: int  # hash: a change of metadata the reconcile reads

    @property
    def spec(self) -> dict[str, Any]:
        return dict(_unpack(self.spec_packed))

    @property
    def status(self) -> dict[str, Any]:
        return dict(_unpack(self.status_packed))


def record_of(body: Mapping[str, Any], *, status_of: Callable[[Mapping[str, Any]], dict[str, Any]],
              uses_vault: Callable[[Mapping[str, Any]], bool]) -> ModelRecord:
    meta = body.get("metadata") or {}
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    annotations = tuple(sorted((meta.get("annotations") or {}).items()))
    return ModelRecord(
        uid=sys.intern(str(meta.get("uid") or "")),
        resource_version=str(meta.get("resourceVersion") or ""),
        generation=int(meta.get("generation") or 0),
        spec_packed=_pack(body.get("spec") or {}),
        status_packed=_pack(status_of(body.get("status") or {})),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(str(f) for f in meta.get("finalizers") or ()),
        uses_vault=uses_vault(body),
        labels_annotations=hash((labels, annotations)),
    )


def _schema_words() -> bytes:
    """A preset dictionary for deflate: the property names and enum values of the spec and
    status schemas, the condition types and the child kinds, as they appear in compact JSON.
    Deflate finds in it what a record of a few hundred bytes cannot find in itself (a bench
    model's spec: 325 bytes of JSON, 227 deflated alone, 163 with the dictionary; its status
    subset: 646, 269 with the schema's words alone, 210 with these). Only this process reads
    what it packed, so the dictionary may change with the schema."""
    words: dict[str, None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in node.get("properties") or {}:
                words[f'"{key}":'] = None
            for value in node.get("enum") or ():
                words[json.dumps(value)] = None
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for model in (ModelDeploymentSpec, ModelDeploymentStatus):
        walk(model.model_json_schema(by_alias=True))
    words.update(dict.fromkeys(f'"{c.value}"' for c in DeploymentConditionType))
    words.update(dict.fromkeys(f'"{kind}":"' for _, kind in CHILD_KINDS))  # status.children
    return ",".join([*words, '"cpu":"', '"memory":"', '@sha256:']).encode()


_DICTIONARY = _schema_words()


def _pack(value: Any) -> bytes:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, _DICTIONARY)
    return deflate.compress(raw) + deflate.flush()


def _unpack(packed: bytes) -> Any:
    inflate = zlib.decompressobj(-15, _DICTIONARY)
    return json.loads(inflate.decompress(packed) + inflate.flush())


def needs_reconcile(old: ModelRecord | None, new: ModelRecord | None) -> bool:
    """Whether an event is work: a model not seen before (at start-up: the resume pass), a new
    generation, a deletion starting, a change of labels, annotations or finalizers, or of
    whether it uses Vault. Not the echo of a status write otherwise (the status subresource
    leaves generation and metadata alone)."""
    if new is None:
        return False
    if old is None or old.uid != new.uid:
        return True
    return (new.generation != old.generation or new.deleting != old.deleting
            or new.labels_annotations != old.labels_annotations or new.finalizers != old.finalizers
            or new.uses_vault != old.uses_vault)  # its status dropped the Vault role: the finalizer goes


class ModelStore:
    """Records by namespace; written by one watch thread, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ns: dict[str, dict[str, ModelRecord]] = {}
        self.listed = threading.Event()  # every model listed once
        self.models_by_namespace = IndexView(self, lambda name, r: (name, r.spec))
        self.report_models = IndexView(self, lambda name, r: (name, r.uid, r.spec, r.status, r.deleting))

    def put(self, key: Key, record: ModelRecord) -> ModelRecord | None:
        with self._lock:
            names = self._by_ns.setdefault(key[0], {})
            old = names.get(key[1])
            names[key[1]] = record
            return old

    def remove(self, key: Key) -> ModelRecord | None:
        with self._lock:
            names = self._by_ns.get(key[0])
            if names is None:
                return None
            old = names.pop(key[1], None)
            if not names:
                del self._by_ns[key[0]]
            return old

    def get(self, key: Key) -> ModelRecord | None:
        with self._lock:
            return (self._by_ns.get(key[0]) or {}).get(key[1])

    def keys(self, namespace: str | None = None) -> list[Key]:
        with self._lock:
            spaces = [namespace] if namespace is not None else list(self._by_ns)
            return [(ns, name) for ns in spaces for name in self._by_ns.get(ns, ())]

    def namespaces(self) -> list[str]:
        with self._lock:
            return list(self._by_ns)

    def one(self, namespace: str, name: str) -> tuple[str, ModelRecord] | None:
        with self._lock:
            record = (self._by_ns.get(namespace) or {}).get(name)
        return (name, record) if record is not None else None

    def count(self, namespace: str) -> int:
        """How many models ``namespace`` has (nothing parsed)."""
        with self._lock:
            return len(self._by_ns.get(namespace) or ())

    def entries(self, namespace: str) -> list[tuple[str, ModelRecord]]:
        with self._lock:
            return list((self._by_ns.get(namespace) or {}).items())

    def __len__(self) -> int:
        with self._lock:
            return sum(len(names) for names in self._by_ns.values())


class IndexView(Mapping[str, list[Any]]):
    """A read-only view shaped like a kopf index: namespace → entries (a fresh list per read)."""

    def __init__(self, store: ModelStore, entry: Callable[[str, ModelRecord], Any]) -> None:
        self._store = store
        self._entry = entry

    def __getitem__(self, namespace: str) -> list[Any]:
        entries = self._store.entries(namespace)
        if not entries:
            raise KeyError(namespace)
        return [self._entry(name, record) for name, record in entries]

    def get(self, namespace: str, default: Any = None) -> Any:
        try:
            return self[namespace]
        except KeyError:
            return default

    def one(self, namespace: str, name: str) -> Any:
        """The entry of one model, or None (parses only its record)."""
        found = self._store.one(namespace, name)
        return self._entry(*found) if found is not None else None

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.namespaces())

    def __len__(self) -> int:
        return len(self._store.namespaces())


STORE = ModelStore()
"""The operator's one store (filled by :mod:`mlsec.handlers.models`)."""


def models_index(indexes: Mapping[str, Any]) -> Any:
    """``models_by_namespace`` from the indexes handed in (kopf handlers pass kopf's, which no
    longer hold the models; tests pass their own), else the store's."""
    return indexes.get("models_by_namespace", STORE.models_by_namespace)


def model_spec(indexes: Mapping[str, Any], namespace: str, name: str) -> dict[str, Any] | None:
    """One model's spec from ``models_by_namespace`` (see :func:`models_index`)."""
    index = models_index(indexes)
    if isinstance(index, IndexView):
        entry = index.one(namespace, name)
        return dict(entry[1]) if entry is not None else None
    return next((dict(spec) for n, spec in list(index.get(namespace, [])) if n == name), None)
