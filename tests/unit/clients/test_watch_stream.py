"""How a watch stream's lines are read: events in order, bookmarks, and 410 meaning relist.

The real API server is watched in tests/integration/test_child_watch.py; an expired
resourceVersion cannot be produced there on demand (etcd compaction), so its handling is checked
here on the bytes the API server sends."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
import urllib3

from mlsec.clients.rest import KubeError
from mlsec.clients.watch import Gone, Known, ListWatch


class _Body(io.BytesIO):
    """Closed once read to the end, as http.client's response is (urllib3 streams until then)."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data:
            self.close()
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


class Canned:
    """A transport whose watch answers with fixed bytes, split into small chunks."""

    def __init__(self, lines: list[dict[str, Any]], status: int = 200) -> None:
        self.data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        self.status = status
        self.queries: list[list[tuple[str, Any]]] = []

    def stream(self, path: str, query: list[tuple[str, Any]], read_timeout: float) -> Any:
        self.queries.append(list(query))
        if self.status >= 400:
            raise KubeError(self.status, "Expired", "too old")
        return urllib3.HTTPResponse(body=_Body(self.data), preload_content=False)


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


def make(transport: Any) -> tuple[ListWatch, list[tuple[str | None, str]]]:
    seen: list[tuple[str | None, str]] = []
    w = ListWatch(transport, "v1", "ConfigMap", "/api/v1/namespaces/ns/configmaps", "a=b",
                  lambda t, body: seen.append((t, body["metadata"]["name"])))
    return w, seen


def test_events_in_order_and_the_last_resource_version() -> None:
    t = Canned([{"type": "ADDED", "object": obj("a", "5")},
                {"type": "BOOKMARK", "object": {"kind": "ConfigMap", "metadata": {"resourceVersion": "7"}}},
                {"type": "MODIFIED", "object": obj("a", "8")},
                {"type": "DELETED", "object": obj("a", "9")},
                {"type": "BOOKMARK", "object": {"kind": "ConfigMap", "metadata": {"resourceVersion": "12"}}}])
    w, seen = make(t)
    assert w.watch("4") == "12"
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert ("resourceVersion", "4") in t.queries[0] and ("labelSelector", "a=b") in t.queries[0]
    assert ("allowWatchBookmarks", "true") in t.queries[0]
    assert len(w.known) == 0 and list(w.known) == []


@pytest.mark.parametrize("transport", [
    Canned([{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]),
    Canned([], status=410),
], ids=["error-event", "http-status"])
def test_an_expired_resource_version_means_relist(transport: Canned) -> None:
    w, _ = make(transport)
    with pytest.raises(Gone):
        w.watch("1")


def test_other_errors_are_raised_with_their_message() -> None:
    w, _ = make(Canned([{"type": "ERROR", "object": {"code": 500, "reason": "InternalError",
                                                     "message": "etcd"}}]))
    with pytest.raises(KubeError, match="etcd"):
        w.watch("1")


def test_what_is_known_of_each_object_comes_back_exactly() -> None:
    """Owner references are kept packed (one shared string for a single owner); what the relist
    reports for a vanished object is what was seen."""
    model = (("mlsec.io/v1alpha1", "ModelDeployment", "mri"),)
    two = (("v1", "ConfigMap", "a"), ("apps/v1", "Deployment", "b"))
    k = Known()
    k.set(("ns", "svc"), model)
    k.set(("ns", "sa"), (("mlsec.io/v1alpha1", "ModelDeployment", "mri"),))
    k.set(("ns", "two"), two)
    k.set(("other", "none"), ())
    assert len(k) == 4 and ("ns", "two") in k and ("ns", "nope") not in k and "ns" not in k
    assert dict(k.items()) == {("ns", "svc"): model, ("ns", "sa"): model, ("ns", "two"): two,
                               ("other", "none"): ()}
    k.pop(("other", "none"))
    k.pop(("other", "none"))  # twice: no error
    assert sorted(k) == [("ns", "sa"), ("ns", "svc"), ("ns", "two")]


class Paged:
    """A transport whose listings answer three pages of three objects, slowly; it logs each
    request and the caller logs each object it handles."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def request(self, method: str, path: str, query: list[tuple[str, Any]], **_: Any) -> dict[str, Any]:
        kind = path.rsplit("/", 1)[-1]
        page = int(dict(query).get("continue") or 0)
        self.log.append(("page", kind))
        time.sleep(0.005)  # the other threads run meanwhile
        items = [obj(f"{kind}-{page}-{i}", "1") for i in range(3)]
        return {"items": items, "metadata": {"resourceVersion": "9",
                                             "continue": str(page + 1) if page < 2 else ""}}


def test_listings_hold_one_page_at_a_time_across_watches() -> None:
    """Every watch lists at start-up: their pages are read and handled one at a time, so one page
    of parsed objects is alive, not one per watch (bench/README.md, twelfth run)."""
    log: list[tuple[str, str]] = []

    def handle(_: str | None, body: dict[str, Any]) -> None:
        log.append(("object", body["metadata"]["name"].split("-")[0]))
        time.sleep(0.001)

    watches = [ListWatch(Paged(log), "v1", "ConfigMap", f"/api/v1/{k}", "", handle)
               for k in ("a", "b", "c", "d")]
    threads = [threading.Thread(target=w.relist) for w in watches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log) == 4 * 3 * (1 + 3)
    for start in range(0, len(log), 4):  # each page request, then its three objects, unbroken
        (what, kind), *objects = log[start:start + 4]
        assert what == "page" and objects == [("object", kind)] * 3, log[start:start + 4]
