"""The reconcile's Vault step against an in-memory Vault: what is written, when, and the outcomes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from vault_cases import make_md, make_policy

from mlsec.audit import AuditLog
from mlsec.builders import vault as build
from mlsec.clients.vault import Vault, VaultForbidden, VaultUnavailable
from mlsec.handlers import context
from mlsec.handlers import vault as step

NAME = "mlsec-radiology-ml-mri-classifier"


class MemoryVault:
    """The Vault methods the step uses, in memory; ``down``/``deny`` simulate failures."""

    address = "https://vault.hospital.com:8200"

    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.roles: dict[tuple[str, str], dict[str, Any]] = {}
        self.keys: set[tuple[str, str]] = set()  # transit keys: created, never deleted
        self.writes: list[str] = []
        self.down = False
        self.deny = False

    def _check(self, op: str, path: str) -> None:
        if self.down:
            raise VaultUnavailable(op, path, None, f"cannot reach {self.address}: ConnectionError")
        if self.deny and op != "read":
            raise VaultForbidden(op, path, 403, "permission denied")

    def read_policy(self, name: str) -> str | None:
        self._check("read", f"sys/policies/acl/{name}")
        return self.policies.get(name)

    def write_policy(self, name: str, text: str) -> None:
        self._check("write", f"sys/policies/acl/{name}")
        self.policies[name] = text
        self.writes.append(f"policy {name}")

    def delete_policy(self, name: str) -> None:
        self._check("delete", f"sys/policies/acl/{name}")
        self.policies.pop(name, None)
        self.writes.append(f"-policy {name}")

    def read_kubernetes_role(self, mount: str, name: str) -> dict[str, Any] | None:
        self._check("read", f"auth/{mount}/role/{name}")
        role = self.roles.get((mount, name))
        # Vault answers with more fields than were written
        return {**role, "token_num_uses": 0, "token_bound_cidrs": []} if role else None

    def write_kubernetes_role(self, mount: str, name: str, fields: dict[str, Any]) -> None:
        self._check("write", f"auth/{mount}/role/{name}")
        self.roles[(mount, name)] = dict(fields)
        self.writes.append(f"role {name}")

    def delete_kubernetes_role(self, mount: str, name: str) -> None:
        self._check("delete", f"auth/{mount}/role/{name}")
        self.roles.pop((mount, name), None)
        self.writes.append(f"-role {name}")

    def ensure_transit_key(self, mount: str, name: str) -> bool:
        self._check("read", f"{mount}/keys/{name}")
        if (mount, name) in self.keys:
            return False
        self._check("create", f"{mount}/keys/{name}")
        self.keys.add((mount, name))
        return True


@pytest.fixture(autouse=True)
def audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    out = io.StringIO()
    log = AuditLog(sink=out)
    monkeypatch.setattr(context, "audit", lambda: log)
    yield out


def vault() -> Any:
    return MemoryVault()


def ensure(v: Any, md: Any = None, policy: Any = None) -> step.VaultOutcome:
    client: Vault = v
    return step.ensure(md or make_md(), policy or make_policy(), client)


def test_writes_once_then_in_sync(audit: io.StringIO) -> None:
    v = vault()
    first = ensure(v)
    assert (first.ok, first.reason, first.role, first.policy_name) == (True, "Written", NAME, NAME)
    assert v.writes == [f"policy {NAME}", f"role {NAME}"]  # the policy before the role naming it
    assert v.policies[NAME] == build.policy_hcl(make_md())
    second = ensure(v)
    assert (second.ok, second.reason, second.written) == (True, "InSync", ())
    assert len(v.writes) == 2
    assert audit.getvalue().count("VAULT_ROLE_WRITTEN") == 1


def test_rewrites_only_what_drifted() -> None:
    v = vault()
    ensure(v)
    v.roles[("kubernetes", NAME)]["token_ttl"] = 86400
    assert ensure(v).written == (f"role auth/kubernetes/role/{NAME} (token_ttl)",)
    v.policies[NAME] += 'path "secret/*" { capabilities = ["read"] }\n'
    assert ensure(v).written == (f"policy {NAME}",)


def test_a_changed_secret_list_rewrites_the_policy() -> None:
    v = vault()
    ensure(v)
    fewer = make_md(secrets=[{"name": "h", "path": "secret/data/ml-models/mri-classifier"}], tls=None)
    assert ensure(v, fewer).written == (f"policy {NAME}",)
    assert "database/creds" not in v.policies[NAME] and "pki/issue" not in v.policies[NAME]


def test_refusals_write_nothing() -> None:
    v = vault()
    no_vault = ensure(v, policy=make_policy(drop=True))
    assert (no_vault.ok, no_vault.reason) == (False, "VaultNotConfigured")
    narrow = ensure(v, policy=make_policy(allowedSecretPaths=["secret/data/ml-models/*"]))
    assert (narrow.ok, narrow.reason) == (False, "SecretPathNotAllowed")
    assert "database/creds/mri-preprocessing-role" in narrow.message
    assert "pki/issue/ml-serving-cert" in narrow.message
    assert v.writes == []


def test_a_same_named_role_of_another_namespace_is_left_alone() -> None:
    v = vault()
    # namespace a-b + model c and namespace a + model b-c: both mlsec-a-b-c
    x, y = make_md(name="c", namespace="a-b"), make_md(name="b-c", namespace="a")
    assert ensure(v, x).ok
    writes = list(v.writes)
    outcome = ensure(v, y)
    assert (outcome.ok, outcome.reason) == (False, "VaultNameConflict")
    assert "a-b/c" in outcome.message
    assert v.writes == writes
    assert step.remove(y, "kubernetes", v) == []
    assert step.remove(x, "kubernetes", v) == ["role auth/kubernetes/role/mlsec-a-b-c", "policy mlsec-a-b-c"]


def test_outage_and_missing_rights_are_outcomes_not_exceptions() -> None:
    v = vault()
    v.down = True
    down = ensure(v)
    assert (down.ok, down.reason) == (False, "VaultUnavailable")
    assert f"auth/kubernetes/role/{NAME}" in down.message and v.address in down.message
    v.down, v.deny = False, True
    denied = ensure(v)
    assert (denied.ok, denied.reason) == (False, "VaultForbidden")
    # the sample is phi: its transit key comes first (the policy never names a missing key)
    assert f"transit/keys/{NAME}" in denied.message


def test_remove_is_idempotent() -> None:
    v = vault()
    md = make_md()
    ensure(v, md)
    assert step.remove(md, "kubernetes", v) == [f"role auth/kubernetes/role/{NAME}", f"policy {NAME}"]
    assert v.writes[-2:] == [f"-role {NAME}", f"-policy {NAME}"]  # the role first: no new logins
    assert step.remove(md, "kubernetes", v) == []


def test_filters() -> None:
    with_vault: Any = {"spec": {"secrets": [{"name": "a", "path": "x/data/y"}]}}
    bare: Any = {"spec": {"secrets": []}}
    assert step.uses_vault(body=with_vault)
    assert not step.uses_vault(body=bare)
    bound: Any = {**bare, "status": {"vault": {"role": NAME}}}
    assert step.uses_vault(body=bound)
    assert [step._retry_delay(r) for r in range(8)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert step._same_address("https://Vault.example:8200/", "https://vault.example:8200")


def test_a_repair_is_reported_whichever_pass_made_it() -> None:
    """VaultDriftRepaired: the resync loop's writes always; a reconcile's only when its last pass
    at this generation found Vault not ready (an outage), never for a new model or spec."""
    wrote = step.VaultOutcome(True, "Written", "ok", written=("policy p", "role r"))
    in_sync = step.VaultOutcome(True, "InSync", "ok")
    repair_message = step.repair_message
    failed = {"status": {"observedGeneration": 3, "conditions": [
        {"type": "VaultReady", "status": "False", "reason": "VaultUnavailable"}]},
        "metadata": {"generation": 3}}
    ready = {"status": {"observedGeneration": 3, "conditions": [
        {"type": "VaultReady", "status": "True", "reason": "InSync"}]}, "metadata": {"generation": 3}}
    new_spec = {**failed, "metadata": {"generation": 4}}
    assert repair_message(ready, wrote) == "rewrote policy p, role r"  # the resync loop
    assert repair_message(ready, in_sync) is None
    assert repair_message(failed, wrote, after_failure=True) == "rewrote policy p, role r"
    assert repair_message(ready, wrote, after_failure=True) is None  # a policy change, not drift
    assert repair_message(new_spec, wrote, after_failure=True) is None
    assert repair_message({"metadata": {"generation": 1}}, wrote, after_failure=True) is None  # new model
