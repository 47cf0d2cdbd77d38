"""One LDAP → RBAC sync (mlsec.handlers.rbac.sync_namespace) with an in-memory API and directory.

The real thing (slapd, API server, operator process) is tests/integration/test_ldap_rbac.py; here
the write decisions, the fail-safe path, the backoff and the role cache are pinned down exactly.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsec.audit import AuditLog
from mlsec.clients.ldap import DirectoryError, DirectorySettings, Membership
from mlsec.handlers import context
from mlsec.handlers import rbac as h

NS = "radiology-ml"
SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "policy-hospital.yaml"
G = "ou=groups,dc=hospital,dc=com"
DS, ENG, LEADS, COMP = (f"cn={c},{G}" for c in ("data_scientists", "ml_engineers", "ml_leads", "compliance"))
PASSWORD = "bind-Pa55-word"


class FakeKube:
    """Objects by (kind, namespace, name); LIST items carry no kind, as from a real API server."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.version = 0

    def put(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])] = obj

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        want = dict(kv.split("=") for kv in label_selector.split(",")) if label_selector else {}
        out = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            labels = obj["metadata"].get("labels") or {}
            if k == kind and ns == namespace and all(labels.get(a) == b for a, b in want.items()):
                out.append({key: v for key, v in copy.deepcopy(obj).items() if key != "kind"})
        return out

    def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.writes.append(f"apply {obj['kind']}/{obj['metadata']['name']}")
        self.put(obj)
        return obj

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        self.writes.append(f"delete {kind}/{name}")
        return self.objects.pop((kind, namespace, name), None) is not None

    def apply_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any], *, manager: str | None = None) -> dict[str, Any]:
        self.writes.append(f"status {kind}/{name}")
        obj = self.objects[(kind, namespace, name)]
        old = obj.setdefault("status", {})
        conds = {c["type"]: c for c in old.get("conditions", [])}
        conds.update({c["type"]: c for c in status.get("conditions", [])})
        old.update({k: v for k, v in status.items() if k != "conditions"})
        old["conditions"] = sorted(conds.values(), key=lambda c: c["type"])
        return obj

    def rbac_writes(self) -> list[str]:
        return [w for w in self.writes if not w.startswith("status")]


class FakeDirectory:
    def __init__(self) -> None:
        self.groups: dict[str, set[str]] = {DS: {"alice"}, ENG: {"bob"}, LEADS: {"carol"}, COMP: {"dave"}}
        self.error: DirectoryError | None = None
        self.calls: list[tuple[DirectorySettings, str]] = []

    def factory(self, settings: DirectorySettings, password: str) -> FakeDirectory:
        self.calls.append((settings, password))
        return self

    def group_members(self, group_dns: Sequence[str]) -> Membership:
        if self.error:
            raise self.error
        found = {g: frozenset(self.groups[g]) for g in group_dns if g in self.groups}
        return Membership(groups=found, missing=tuple(g for g in group_dns if g not in self.groups))


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube()
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"].update(uid="uid-1", generation=1)
    fake.put(body)
    for name, key, value in (("ldap-bind", "password", PASSWORD), ("ldap-ca", "ca.crt", "PEM")):
        fake.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                  "data": {key: base64.b64encode(value.encode()).decode()}})
    monkeypatch.setattr(context, "kube", lambda: fake)
    h.forget(NS)
    yield fake
    h.forget(NS)


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    log = AuditLog(None, sink=out)
    monkeypatch.setattr(context, "audit", lambda: log)
    return out


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> FakeDirectory:
    fake = FakeDirectory()
    monkeypatch.setattr(h, "directory_factory", fake.factory)
    return fake


def policy(kube: FakeKube) -> dict[str, Any]:
    body = kube.get("mlsec.io/v1alpha1", "MLSecurityPolicy", NS, "default")
    assert body is not None
    return body


def condition(kube: FakeKube) -> dict[str, Any]:
    return next(c for c in policy(kube)["status"]["conditions"] if c["type"] == "LDAPSynced")


def records(audit: io.StringIO, event_type: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, audit.getvalue().splitlines()) if r["event_type"] == event_type]


def subjects(kube: FakeKube, role: str) -> list[str]:
    obj = kube.objects[("RoleBinding", NS, f"mlsec-{role.replace('_', '-')}")]
    return [s["name"] for s in obj.get("subjects") or []]


def test_first_sync_writes_roles_bindings_status_and_cache(
        kube: FakeKube, directory: FakeDirectory, audit: io.StringIO) -> None:
    report = h.sync_namespace(NS, policy(kube))
    assert report is not None and len(report.written) == 8 and report.deleted == ()
    assert kube.rbac_writes()[:4] == [f"apply Role/mlsec-{r}" for r in (
        "compliance-reviewer", "model-approver", "model-deployer", "model-developer")]
    settings, password = directory.calls[0]
    assert password == PASSWORD and settings.ca_pem == "PEM" and settings.bind_dn.startswith("cn=admin")
    status = policy(kube)["status"]
    assert status["ldap"]["users"] == 4 and status["ldap"]["groups"] == 4
    assert status["roleMembers"] == {"compliance_reviewer": 1, "model_approver": 1,
                                     "model_deployer": 1, "model_developer": 1}
    assert condition(kube)["status"] == "True" and condition(kube)["reason"] == "Synced"
    assert h.platform_roles_of(NS, "carol") == {"model_approver"}
    assert h.platform_roles_of(NS, "erin") == frozenset() and h.synced_roles_of(NS, "erin") == frozenset()
    assert h.synced_roles_of("elsewhere", "carol") is None
    age = h.role_cache_age(NS)
    assert age is not None and age.total_seconds() < 5
    [record] = records(audit, "RBAC_SYNCED")
    assert record["action"]["details"]["added"] == {
        "compliance_reviewer": ["dave"], "model_approver": ["carol"],
        "model_deployer": ["bob"], "model_developer": ["alice"]}
    assert PASSWORD not in audit.getvalue() and PASSWORD not in json.dumps(policy(kube))


def test_unchanged_membership_writes_nothing_not_even_a_time_stamp(
        kube: FakeKube, directory: FakeDirectory, audit: io.StringIO) -> None:
    h.sync_namespace(NS, policy(kube))
    first = h.last_success(NS)
    status = copy.deepcopy(policy(kube)["status"])
    assert first is not None and status["ldap"]["lastChange"] == first.strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.writes.clear()
    time.sleep(1.01)  # the status' times have second resolution
    report = h.sync_namespace(NS, policy(kube))
    assert report is not None and report.written == () and not report.status_written
    assert kube.writes == [] and policy(kube)["status"] == status
    assert len(records(audit, "RBAC_SYNCED")) == 1  # nothing new to audit
    # the freshness moves in memory and in the metric only
    again = h.last_success(NS)
    assert again is not None and again > first
    assert h.LAST_SUCCESS.labels(NS)._value.get() == again.timestamp()
    # a change moves lastChange
    directory.groups[LEADS] = {"carol", "erin"}
    h.sync_namespace(NS, policy(kube))
    assert policy(kube)["status"]["ldap"]["lastChange"] == h.last_success(NS).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert policy(kube)["status"]["ldap"]["lastChange"] != status["ldap"]["lastChange"]


def test_membership_change_rewrites_only_that_binding(kube: FakeKube, directory: FakeDirectory,
                                                     audit: io.StringIO) -> None:
    h.sync_namespace(NS, policy(kube))
    kube.writes.clear()
    directory.groups[ENG] = set()
    directory.groups[LEADS] = {"carol", "erin"}
    h.sync_namespace(NS, policy(kube))
    assert sorted(kube.rbac_writes()) == ["apply RoleBinding/mlsec-model-approver",
                                          "apply RoleBinding/mlsec-model-deployer"]
    assert subjects(kube, "model_deployer") == [] and subjects(kube, "model_approver") == ["carol", "erin"]
    details = records(audit, "RBAC_SYNCED")[-1]["action"]["details"]
    assert details["added"] == {"model_approver": ["erin"]}
    assert details["removed"] == {"model_deployer": ["bob"]}
    assert h.platform_roles_of(NS, "bob") == frozenset()


def test_hand_edited_binding_is_put_back(kube: FakeKube, directory: FakeDirectory,
                                        audit: io.StringIO) -> None:
    h.sync_namespace(NS, policy(kube))
    live = kube.objects[("RoleBinding", NS, "mlsec-model-approver")]
    live["subjects"].append({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"})
    kube.writes.clear()
    h.sync_namespace(NS, policy(kube))
    assert kube.rbac_writes() == ["apply RoleBinding/mlsec-model-approver"]
    assert subjects(kube, "model_approver") == ["carol"]
    removed = records(audit, "RBAC_SYNCED")[-1]["action"]["details"]["removed"]
    assert removed == {"model_approver": ["mallory"]}


def test_unmapped_role_is_pruned_bindings_first(kube: FakeKube, directory: FakeDirectory,
                                               audit: io.StringIO) -> None:
    h.sync_namespace(NS, policy(kube))
    body = policy(kube)
    body["spec"]["roleMappings"] = body["spec"]["roleMappings"][:3]  # compliance no longer mapped
    kube.put(body)
    kube.writes.clear()
    h.sync_namespace(NS, policy(kube))
    assert kube.rbac_writes() == ["delete RoleBinding/mlsec-compliance-reviewer",
                                  "delete Role/mlsec-compliance-reviewer"]
    assert h.platform_roles_of(NS, "dave") == frozenset()


@pytest.mark.parametrize(("error", "first_delay"), [
    (DirectoryError("Unreachable", "cannot reach ldaps://ldap:636: refused", retryable=True), 10),
    (DirectoryError("InvalidCredentials", "invalid credentials for bind DN cn=admin,dc=hospital,dc=com"),
     300),
])
def test_directory_failure_leaves_rbac_alone_and_backs_off(
        kube: FakeKube, directory: FakeDirectory, audit: io.StringIO,
        error: DirectoryError, first_delay: int) -> None:
    h.sync_namespace(NS, policy(kube))
    good_status = copy.deepcopy(policy(kube)["status"])
    kube.writes.clear()
    directory.error = error
    for attempt, delay in enumerate((first_delay, min(300, first_delay * 2)), start=1):
        before = time.monotonic()
        assert h.sync_namespace(NS, policy(kube)) is None
        state = h._STATES[NS]
        assert state.failures == attempt
        assert before + delay - 1 <= state.next_due <= time.monotonic() + delay
    assert kube.rbac_writes() == []
    cond = condition(kube)
    assert cond["status"] == "False" and cond["reason"] == error.reason
    assert cond["message"].startswith(error.message) and "left unchanged" in cond["message"]
    assert good_status["ldap"]["lastChange"] in cond["message"]
    status = policy(kube)["status"]
    assert status["ldap"] == good_status["ldap"] and status["roleMembers"] == good_status["roleMembers"]
    assert h.platform_roles_of(NS, "carol") == {"model_approver"}  # the cache keeps the last good sync
    assert [r["result"]["reason"] for r in records(audit, "LDAP_SYNC_FAILED")] == \
        [f"{error.reason}: {error.message}"] * 2
    directory.error = None
    assert h.sync_namespace(NS, policy(kube)) is not None
    assert condition(kube)["status"] == "True" and h._STATES[NS].failures == 0


def test_missing_secret_fails_before_contacting_ldap(kube: FakeKube, directory: FakeDirectory,
                                                    audit: io.StringIO) -> None:
    del kube.objects[("Secret", NS, "ldap-bind")]
    assert h.sync_namespace(NS, policy(kube)) is None
    assert directory.calls == [] and kube.rbac_writes() == []
    assert condition(kube)["reason"] == "SecretNotFound"
    assert condition(kube)["message"].startswith("bindPasswordSecretRef: Secret ldap-bind not found")


def test_invalid_spec_touches_nothing(kube: FakeKube, directory: FakeDirectory, audit: io.StringIO) -> None:
    body = policy(kube)
    body["spec"]["ldap"]["url"] = "ldap://plain.example"  # no startTLS: refused by the model
    kube.put(body)
    assert h.sync_namespace(NS, policy(kube)) is None
    assert directory.calls == [] and kube.rbac_writes() == [] and condition(kube)["reason"] == "InvalidPolicy"


def test_cache_is_seeded_from_live_bindings_after_a_restart_during_an_outage(
        kube: FakeKube, directory: FakeDirectory, audit: io.StringIO) -> None:
    h.sync_namespace(NS, policy(kube))
    last_sync = policy(kube)["status"]["ldap"]["lastChange"]
    h.forget(NS)  # a new operator process knows nothing
    directory.error = DirectoryError("Unreachable", "down", retryable=True)
    assert h.synced_roles_of(NS, "carol") is None
    h.sync_namespace(NS, policy(kube))
    assert h.platform_roles_of(NS, "carol") == {"model_approver"}
    snap = h.role_snapshot(NS)
    assert snap is not None and snap.synced_at is not None
    assert snap.synced_at.strftime("%Y-%m-%dT%H:%M:%SZ") == last_sync


def test_a_namespace_that_never_synced_keeps_no_snapshot_on_failure(
        kube: FakeKube, directory: FakeDirectory, audit: io.StringIO) -> None:
    """No successful sync yet: the gate must fall back to authenticated groups, not to 'nobody
    has a role' (which an empty snapshot would say)."""
    directory.error = DirectoryError("Unreachable", "down", retryable=True)
    h.sync_namespace(NS, policy(kube))
    assert h.synced_roles_of(NS, "carol") is None and h.role_snapshot(NS) is None
