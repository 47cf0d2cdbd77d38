"""The models' records: what is kept of a model, what counts as work, and the kopf-shaped views."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kopf._cogs.aiokits import aiotoggles

from mlsec.handlers import context, kopf_patches, reports
from mlsec.handlers import vault as vault_step
from mlsec.handlers.model_store import ModelStore, needs_reconcile, record_of


def body(name: str = "m", **changes: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "apiVersion": "mlsec.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": "u-1", "generation": 1,
                     "resourceVersion": "10", "labels": {"team": "a"},
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"version": "1.0.0", "stage": "staging"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                                   "message": "ok", "lastTransitionTime": "2026-12-04T00:00:00Z"}],
                   "observedGeneration": 1, "lastAppliedVersion": "1.0.0"},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = b
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return b


def rec(b: dict[str, Any]) -> Any:
    return record_of(b, status_of=reports.status_subset, uses_vault=vault_step.uses_vault)


def test_a_record_keeps_spec_and_the_status_the_reports_read_not_the_body() -> None:
    r = rec(body())
    assert r.spec == {"version": "1.0.0", "stage": "staging"}
    assert r.status == {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                                        "message": "ok"}]}
    assert (r.uid, r.generation, r.deleting, r.finalizers, r.uses_vault) == ("u-1", 1, False, (), False)
    assert not hasattr(r, "__dict__")  # slots: no per-record dict


def test_status_echoes_are_not_work_but_changes_of_what_the_reconcile_reads_are() -> None:
    first = rec(body())
    assert needs_reconcile(None, first)  # new (at start-up: the resume pass)
    assert not needs_reconcile(first, None)  # gone: nothing to reconcile
    echo = body(metadata__resourceVersion="11", status__observedGeneration=2)
    assert not needs_reconcile(first, rec(echo))
    work = {
        "a new generation": body(metadata__generation=2, spec={"version": "1.0.1"}),
        "a label": body(metadata__labels={"team": "b"}),
        "an annotation": body(metadata__annotations={"mlsec.io/requested-by": "bob"}),
        "a finalizer": body(metadata__finalizers=["mlsec.io/finalizer"]),
        "a deletion": body(metadata__deletionTimestamp="2026-12-04T00:00:01Z"),
        "another object of that name": body(metadata__uid="u-2"),
    }
    with_role = rec(body(status={"vault": {"role": "r"}}))
    assert needs_reconcile(with_role, first), "status without the Vault role: the finalizer goes"
    for what, b in work.items():
        assert needs_reconcile(first, rec(b)), what


def test_vault_use_by_spec_or_by_status() -> None:
    assert rec(body(spec={"secrets": [{"name": "db", "path": "p"}]})).uses_vault
    assert rec(body(spec={"tls": {"commonName": "m"}})).uses_vault
    assert rec(body(status={"vault": {"role": "r"}})).uses_vault
    assert not rec(body()).uses_vault


def test_views_have_the_shapes_of_the_kopf_indexes_they_replace() -> None:
    store = ModelStore()
    store.put(("ns", "a"), rec(body("a")))
    store.put(("ns", "b"), rec(body("b", metadata__deletionTimestamp="x")))
    store.put(("other", "c"), rec(body("c")))
    assert sorted(store.models_by_namespace) == ["ns", "other"]
    assert sorted(context.snapshot(store.models_by_namespace, "ns")) == [
        ("a", {"version": "1.0.0", "stage": "staging"}), ("b", {"version": "1.0.0", "stage": "staging"})]
    entries = {e[0]: e for e in store.report_models.get("ns", [])}
    assert entries["b"][1:] == ("u-1", {"version": "1.0.0", "stage": "staging"},
                                rec(body()).status, True)
    assert store.models_by_namespace.get("nowhere", []) == []
    assert "nowhere" not in store.models_by_namespace
    assert store.remove(("other", "c")) is not None
    assert sorted(store.models_by_namespace) == ["ns"] and len(store) == 2
    assert sorted(store.keys()) == [("ns", "a"), ("ns", "b")] and store.keys("other") == []


def test_a_stored_record_does_not_change_when_the_body_it_came_from_does() -> None:
    b = body()
    r = rec(b)
    before = copy.deepcopy(r.spec)
    b["spec"]["version"] = "9"
    b["metadata"]["labels"]["team"] = "z"
    assert r.spec == before  # the top level is copied; the watch never reuses a body anyway
    assert not needs_reconcile(r, rec(body()))


def test_indexed_is_set_only_once_the_blocked_set_turns_on() -> None:
    """kopf's orchestrator: an empty ToggleSet(all), a blocker toggle, a toggle per indexed
    resource; the blocker goes when the watchers exist, each toggle turns on when its listing is
    indexed. INDEXED must wait for the last of them."""
    kopf_patches.apply()
    kopf_patches.INDEXED.clear()
    kopf_patches._watched.clear()

    async def scenario() -> list[bool]:
        seen = []
        toggles = aiotoggles.ToggleSet(all)
        await asyncio.sleep(0.01)
        seen.append(kopf_patches.INDEXED.is_set())  # empty, vacuously on: not yet
        blocker = await toggles.make_toggle(name="orchestration blocker")
        policies = await toggles.make_toggle(name="policies")
        approvals = await toggles.make_toggle(name="approvals")
        await toggles.drop_toggle(blocker)
        await policies.turn_to(True)
        await asyncio.sleep(0.01)
        seen.append(kopf_patches.INDEXED.is_set())
        await approvals.turn_to(True)
        await asyncio.sleep(0.01)
        seen.append(kopf_patches.INDEXED.is_set())
        return seen

    try:
        assert asyncio.run(scenario()) == [False, False, True]
    finally:
        kopf_patches._watched.clear()


def test_one_model_is_read_without_parsing_its_namespace() -> None:
    from mlsec.handlers import model_store

    store = ModelStore()
    store.put(("ns", "a"), rec(body("a")))
    store.put(("ns", "b"), rec(body("b", spec={"version": "2"})))
    indexes = {"models_by_namespace": store.models_by_namespace}
    assert model_store.model_spec(indexes, "ns", "b") == {"version": "2"}
    assert model_store.model_spec(indexes, "ns", "zz") is None
    # a plain kopf-shaped index (as tests and kopf handlers hand in) answers the same
    plain = {"models_by_namespace": {"ns": [("a", {"version": "1"}), ("b", {"version": "2"})]}}
    assert model_store.model_spec(plain, "ns", "b") == {"version": "2"}
    assert model_store.model_spec(plain, "elsewhere", "b") is None
    # the record holds deflated JSON, a few bytes, not dicts
    r = rec(body("a"))
    assert isinstance(r.spec_packed, bytes) and len(r.spec_packed) < 30
    assert r.spec == {"version": "1.0.0", "stage": "staging"}


def test_records_pack_their_spec_and_status_small_and_give_them_back_whole() -> None:
    """Deflated against the schema's words: a realistic spec shrinks to a fraction of its JSON,
    and any value, in or out of the schema, comes back as it went in."""
    import json

    spec = {"model": "mri-classifier", "version": "3", "stage": "production",
            "image": "registry.hospital.com/ml/mri@sha256:" + "ab" * 32, "dataClassification": "phi",
            "owner": "alice", "replicas": 2, "port": 8080,
            "resources": {"requests": {"cpu": "500m", "memory": "2Gi"},
                          "limits": {"cpu": "2", "memory": "4Gi"}},
            "secrets": [{"name": "db", "path": "database/creds/mri-role"}],
            "unknownField": ["ü", None, 1.5, {"nested": True}]}
    r = rec(body("a", spec=spec))
    assert r.spec == spec
    raw = len(json.dumps(spec, separators=(",", ":"), ensure_ascii=False).encode())
    assert len(r.spec_packed) < raw * 0.6, (len(r.spec_packed), raw)
    assert r.status == reports.status_subset(body("a")["status"])
