"""The children's list+watch (outside kopf) against the real API server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mlsec.clients.kube import Kube, transport_for
from mlsec.clients.watch import ListWatch
from mlsec.local import env as local

from .conftest import wait_until

pytestmark = pytest.mark.integration

SELECTOR = "app.kubernetes.io/managed-by=mlsec-operator"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str | None, str, list[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, type_: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with self.lock:
            self.events.append((type_, meta["name"], [r["name"] for r in meta.get("ownerReferences") or []]))

    def seen(self, type_: str | None, name: str) -> bool:
        with self.lock:
            return any(e[0] == type_ and e[1] == name for e in self.events)


def configmap(namespace: str, name: str, owner: dict[str, Any], labelled: bool = True) -> dict[str, Any]:
    """A labelled child of ``owner`` (a real object: the garbage collector deletes the children
    of owners that do not exist)."""
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "ownerReferences": [ref]}
    if labelled:
        meta["labels"] = {"app.kubernetes.io/managed-by": "mlsec-operator"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"v": "1"}}


@pytest.fixture
def owner(kube: Kube, namespace: str) -> dict[str, Any]:
    return kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "owner", "namespace": namespace}})


@pytest.fixture
def watcher(localenv: local.LocalEnv, namespace: str) -> Iterator[tuple[ListWatch, Recorder]]:
    rec = Recorder()
    transport = transport_for(str(localenv.kubeconfig), "admin", pool_size=2)
    w = ListWatch(transport, "v1", "ConfigMap", f"/api/v1/namespaces/{namespace}/configmaps", SELECTOR, rec)
    yield w, rec
    w.stop()


def test_list_then_watch_sees_only_labelled_objects(watcher: tuple[ListWatch, Recorder], kube: Kube,
                                                    namespace: str, owner: dict[str, Any]) -> None:
    w, rec = watcher
    kube.create(configmap(namespace, "before", owner))
    w.start()
    assert w.listed.wait(10)
    assert rec.seen(None, "before")  # found by the listing, not as an event
    kube.create(configmap(namespace, "other", owner, labelled=False))
    kube.create(configmap(namespace, "after", owner))
    wait_until(lambda: rec.seen("ADDED", "after"), timeout=10, what="ADDED after")
    kube.patch("v1", "ConfigMap", namespace, "after", {"data": {"v": "2"}})
    wait_until(lambda: rec.seen("MODIFIED", "after"), timeout=10, what="MODIFIED after")
    kube.delete("v1", "ConfigMap", namespace, "before")
    wait_until(lambda: rec.seen("DELETED", "before"), timeout=10, what="DELETED before")
    assert not any(e[1] == "other" for e in rec.events)  # filtered by the API server
    assert ("DELETED", "before", ["owner"]) in rec.events


def test_a_relist_reports_what_vanished_in_a_gap(watcher: tuple[ListWatch, Recorder], kube: Kube,
                                                 namespace: str, owner: dict[str, Any]) -> None:
    w, rec = watcher
    for name in ("a", "b", "c"):
        kube.create(configmap(namespace, name, owner))
    w.relist()
    assert sorted(e[1] for e in rec.events if e[0] is None) == ["a", "b", "c"]
    kube.delete("v1", "ConfigMap", namespace, "b")  # while nobody watches
    w.relist()
    assert ("DELETED", "b", ["owner"]) in rec.events  # with its owner: the model is repaired
    assert sorted(w.known) == [(namespace, "a"), (namespace, "c")]


def test_a_paginated_read_returns_every_object_once(kube: Kube, namespace: str, owner: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Kube.iter_list: what the bulk readers (people sync, policy changes, election) use."""
    for i in range(7):
        kube.create(configmap(namespace, f"page-{i}", owner))
    pages: list[int] = []
    request = kube.transport.request

    def counting(method: str, path: str, **kwargs: Any) -> Any:
        out = request(method, path, **kwargs)
        pages.append(len(out.get("items") or []))
        return out

    monkeypatch.setattr(kube.transport, "request", counting)
    listed = kube.iter_list("v1", "ConfigMap", namespace, SELECTOR, page_size=3)
    assert sorted(o["metadata"]["name"] for o in listed) == [f"page-{i}" for i in range(7)]
    assert pages == [3, 3, 1]
