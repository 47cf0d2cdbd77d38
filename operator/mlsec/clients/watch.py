"""List and watch one kind (label-selected) in a thread, outside kopf.

kopf keeps per-object state (memory, throttler, indexing and daemon records, a worker) for every
object it watches, whether or not a handler needs it: 7,000 records for the children of 1,000
models. The operator needs only each child's latest event, so the children are watched here:
a paginated LIST, then WATCH from its resourceVersion with bookmarks, relisting when the server
says the version is gone (410). A relist reports the objects that vanished meanwhile as DELETED,
so no deletion is missed across a gap. The handler is called in this thread, event by event.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mlsec.clients.rest import KubeError, Transport

log = logging.getLogger(__name__)

Owners = tuple[tuple[str, str, str], ...]
Handler = Callable[[str | None, dict[str, Any]], None]
"""(event type, object): type None for an object found by a (re)list, else ADDED/MODIFIED/DELETED."""

PAGE = 100
"""Objects per page of a (re)listing. Every child kind relists at once when the operator starts:
seven pages of 500 parsed together were the peak a restart with 5,000 models left in Python's
arenas (bench/README.md, seventh run)."""
_PAGE = threading.Lock()
"""Held while a page is read and handled: one page of parsed objects alive in the process at a
time. Every watch (models and seven child kinds) lists at start-up; with their pages parsed side
by side, a restart with 5,000 models settled 6 MiB above the same operator grown to 5,000 (115.7
against 109.3 MiB; 109.3 with this lock, the resume pass 2 s longer: bench/README.md, twelfth run).
Parsing holds the GIL anyway."""
WATCH_SECONDS = 300
"""The server ends each watch after this long (a little jittered); it is resumed at once."""
MAX_BACKOFF = 30.0


class Gone(Exception):
    """The resourceVersion to resume from is too old: relist."""


class Known:
    """(namespace, name) → owner references of every object listed or watched: enough to report
    an object's deletion after a relist. Kept per namespace, and a single owner reference (a
    child's model) as one interned string shared by the model's children: 35,000 children were
    a key tuple and two owner tuples each (8.7 MiB at 6,000 models)."""

    def __init__(self) -> None:
        self._by_ns: dict[str, dict[str, str | Owners]] = {}

    def set(self, key: tuple[str, str], owners: Owners) -> None:
        namespace, name = key
        packed: str | Owners = sys.intern(_SEP.join(owners[0])) if len(owners) == 1 else owners
        self._by_ns.setdefault(namespace, {})[name] = packed

    def pop(self, key: tuple[str, str]) -> None:
        names = self._by_ns.get(key[0])
        if names is not None and names.pop(key[1], None) is not None and not names:
            del self._by_ns[key[0]]

    def items(self) -> Iterator[tuple[tuple[str, str], Owners]]:
        for namespace, names in self._by_ns.items():
            for name, packed in names.items():
                yield (namespace, name), _unpack(packed)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return (key for key, _ in self.items())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and key[1] in self._by_ns.get(key[0], {})

    def __len__(self) -> int:
        return sum(len(names) for names in self._by_ns.values())


_SEP = "\0"  # never in an apiVersion, kind or name


def _unpack(packed: str | Owners) -> Owners:
    if isinstance(packed, str):
        api_version, kind, name = packed.split(_SEP)
        return ((api_version, kind, name),)
    return packed


class ListWatch:
    def __init__(self, transport: Transport, api_version: str, kind: str, path: str,
                 label_selector: str, handler: Handler) -> None:
        self.transport = transport
        self.api_version = api_version
        self.kind = kind
        self.path = path
        self.label_selector = label_selector
        self.handler = handler
        self.known = Known()
        self.listed = threading.Event()  # set after the first complete listing
        self.on_listed: Callable[[], None] | None = None  # called after each complete listing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.kind.lower()}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        backoff = 0.5
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self.relist()
                resource_version = self.watch(resource_version)
                backoff = 0.5
            except Gone:
                resource_version = None
            except Exception as exc:  # API server restarting, network: resume after a pause
                level = logging.DEBUG if backoff > 1 else logging.WARNING
                log.log(level, "watch of %s %s: %s (retrying in %.1f s)", self.kind, self.path,
                        _short(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    # --- list -------------------------------------------------------------------------------
    def relist(self) -> str:
        found = Known()
        cont: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("labelSelector", self.label_selector), ("limit", PAGE)]
            if cont:
                query.append(("continue", cont))
            with _PAGE:
                try:
                    page = self.transport.request("GET", self.path, query=query, timeout=(5, 60))
                except KubeError as exc:
                    if exc.status == 410:  # the continue token expired: start the listing again
                        found, cont = Known(), None
                        continue
                    raise
                for item in page.get("items") or []:
                    item.setdefault("apiVersion", self.api_version)
                    item.setdefault("kind", self.kind)
                    found.set(_key(item), _owners(item))
                    self.handler(None, item)
                meta = page.get("metadata") or {}
                del page  # before the next listing's page is read
            cont = meta.get("continue")
            if not cont:
                break
        for key, owners in self.known.items():
            if key not in found:
                self.handler("DELETED", self._stub(key, owners))
        self.known = found
        self.listed.set()
        if self.on_listed is not None:
            self.on_listed()
        return str(meta.get("resourceVersion") or "")

    # --- watch ------------------------------------------------------------------------------
    def watch(self, resource_version: str) -> str:
        query = [("watch", "true"), ("labelSelector", self.label_selector),
                 ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", WATCH_SECONDS)]
        try:
            for event in self._events(query):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise KubeError(int(obj.get("code") or 0), str(obj.get("reason") or ""),
                                    str(obj.get("message") or ""))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    resource_version = str(rv)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self.known.pop(_key(obj))
                else:
                    self.known.set(_key(obj), _owners(obj))
                self.handler(str(kind), obj)
                if self._stop.is_set():
                    break
        except KubeError as exc:  # opening the watch, or an ERROR event in it
            if exc.status == 410:
                raise Gone() from None
            raise
        return resource_version

    def _stub(self, key: tuple[str, str], owners: Owners) -> dict[str, Any]:
        refs = [{"apiVersion": a, "kind": k, "name": n} for a, k, n in owners]
        return {"apiVersion": self.api_version, "kind": self.kind,
                "metadata": {"namespace": key[0], "name": key[1], "ownerReferences": refs}}

    def _events(self, query: list[tuple[str, Any]]) -> Iterator[dict[str, Any]]:
        resp = self.transport.stream(self.path, query, WATCH_SECONDS + 30)
        try:
            buffer = b""
            for chunk in resp.stream(None):  # each HTTP chunk as it arrives (watches are chunked)
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


# Kept for every object: the strings are interned, so the namespace, the owner's kind and the
# name shared by a model and its children are stored once, not once per object and event.
def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return sys.intern(str(meta.get("namespace") or "")), sys.intern(str(meta.get("name") or ""))


def _owners(obj: dict[str, Any]) -> Owners:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return tuple((sys.intern(str(r.get("apiVersion"))), sys.intern(str(r.get("kind"))),
                  sys.intern(str(r.get("name")))) for r in refs)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"
