"""LDAP → RBAC against the real slapd, API server and operator (issue 6 acceptance).

Tests that change the shared directory (bob's membership, test entries, slapd itself) put it back
in a ``finally``.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import ldap3
import pytest

from mlsec.local import env as local
from mlsec.local import slapd

from .conftest import OperatorProcess, wait_until

API = ("mlsec.io", "v1alpha1")
PLURAL = "mlsecuritypolicies"
RBAC = "rbac.authorization.k8s.io"
ROLES = ("model_developer", "model_deployer", "model_approver", "compliance_reviewer")
HOSPITAL = {"data_scientists": "model_developer", "ml_engineers": "model_deployer",
            "ml_leads": "model_approver", "compliance": "compliance_reviewer"}
EXPECTED = {"model_developer": ["alice"], "model_deployer": ["bob"], "model_approver": ["carol"],
            "compliance_reviewer": ["dave"]}
INTERVAL = 30  # seconds: the shortest syncInterval the API accepts


# --- helpers ------------------------------------------------------------------------------------


def _policy(namespace: str, ldap_info: dict[str, str],
            mappings: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "mlsec.io/v1alpha1", "kind": "MLSecurityPolicy",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {
            "ldap": {
                "url": ldap_info["url"], "caSecretRef": {"name": "ldap-ca", "key": "ca.crt"},
                "bindDN": ldap_info["bind_dn"],
                "bindPasswordSecretRef": {"name": "ldap-bind", "key": "password"},
                "userSearchBase": slapd.USERS_OU, "groupSearchBase": slapd.GROUPS_OU,
                "userIdAttribute": "uid", "syncInterval": f"{INTERVAL}s",
            },
            "roleMappings": [{"ldapGroup": slapd.group_dn(g), "platformRole": r}
                             for g, r in (mappings or HOSPITAL).items()],
            "promotion": {"production": {"requiredApprovals": [
                {"platformRole": "model_approver", "count": 1}]}},
        },
    }


class Setup:
    """Secrets and policy of one test namespace, and what the tests read back."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(client)

    def secrets(self, ldap_info: dict[str, str], password: str | None = None) -> None:
        pw = password if password is not None else ldap_info["bind_password"]
        for name, key, value in (("ldap-bind", "password", pw),
                                 ("ldap-ca", "ca.crt", Path(ldap_info["ca_file"]).read_text())):
            self.core.create_namespaced_secret(self.ns, {
                "metadata": {"name": name},
                "data": {key: base64.b64encode(value.encode()).decode()}})

    def create(self, policy: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(*API, self.ns, PLURAL, policy)

    def policy(self) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(*API, self.ns, PLURAL, "default"))

    def event_messages(self, reason: str) -> list[str]:
        events = self.core.list_namespaced_event(self.ns).items
        return [e.message for e in events if e.reason == reason]

    def condition(self) -> dict[str, Any] | None:
        for c in (self.policy().get("status") or {}).get("conditions", []):
            if c["type"] == "LDAPSynced":
                return dict(c)
        return None

    def bindings(self) -> dict[str, list[str]]:
        items = self.rbac.list_namespaced_role_binding(
            self.ns, label_selector="app.kubernetes.io/managed-by=mlsec-operator").items
        return {b.metadata.labels["mlsec.io/platform-role"]: [s.name for s in b.subjects or []]
                for b in items}

    def versions(self) -> dict[str, str]:
        """resourceVersion of every Role and RoleBinding: unchanged means not written."""
        sel = "app.kubernetes.io/managed-by=mlsec-operator"
        roles = self.rbac.list_namespaced_role(self.ns, label_selector=sel).items
        bindings = self.rbac.list_namespaced_role_binding(self.ns, label_selector=sel).items
        return {f"{o.kind or type(o).__name__}/{o.metadata.name}": o.metadata.resource_version
                for o in [*roles, *bindings]}

    def touch(self) -> None:
        """Ask for a sync now (any metadata change of the policy triggers one)."""
        self.custom.patch_namespaced_custom_object(*API, self.ns, PLURAL, "default", {
            "metadata": {"annotations": {"ldap.mlsec.io/sync-requested": datetime.now(UTC).isoformat()}}})

    def wait_synced(self, status: str = "True", reason: str | None = None,
                    timeout: float = 30) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            c = self.condition()
            return c if c and c["status"] == status and reason in (None, c["reason"]) else None
        cond = wait_until(ok, timeout=timeout, what=f"LDAPSynced={status} {reason or ''}")
        assert isinstance(cond, dict)
        return cond


@pytest.fixture
def setup(operator: OperatorProcess, admin_client: kubernetes.client.ApiClient, namespace: str) -> Setup:
    return Setup(admin_client, namespace)


@pytest.fixture
def directory(ldap_info: dict[str, str]) -> Iterator[ldap3.Connection]:
    """An admin connection to slapd, to change the directory as its administrators would."""
    tls = ldap3.Tls(ca_certs_file=ldap_info["ca_file"], validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(ldap_info["url"], use_ssl=True, tls=tls, connect_timeout=5)
    conn = ldap3.Connection(server, ldap_info["bind_dn"], ldap_info["bind_password"], auto_bind=True)
    yield conn
    conn.unbind()


def _can_i(localenv: local.LocalEnv, namespace: str, user: str, verb: str, resource: str) -> bool:
    proc = localenv.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", user, check=False)
    return proc.stdout.strip() == "yes"


# --- acceptance ---------------------------------------------------------------------------------


def test_hospital_policy_grants_each_person_their_platform_role(
        setup: Setup, ldap_info: dict[str, str], localenv: local.LocalEnv,
        operator: OperatorProcess) -> None:
    setup.secrets(ldap_info)
    setup.create(_policy(setup.ns, ldap_info))
    wait_until(lambda: setup.bindings() == EXPECTED, what="hospital RoleBindings")
    cond = setup.wait_synced("True", "Synced")
    assert "4 users hold a platform role, from 4 of 4 mapped LDAP groups" in cond["message"]
    status = setup.policy()["status"]
    assert status["ldap"]["users"] == 4 and status["ldap"]["groups"] == 4
    assert status["roleMembers"] == {r: 1 for r in ROLES}

    allowed = {  # (verb, resource) → who may; everyone else may not
        ("create", "modeldeployments.mlsec.io"): {"alice", "bob"},
        ("update", "modeldeployments.mlsec.io"): {"alice", "bob"},
        ("list", "modeldeployments.mlsec.io"): {"alice", "bob", "carol", "dave"},
        ("create", "modelapprovals.mlsec.io"): {"carol", "dave"},
        ("get", "mlsecuritypolicies.mlsec.io"): {"carol", "dave"},
        ("update", "modelapprovals.mlsec.io"): set(),
        ("delete", "modeldeployments.mlsec.io"): set(),
        ("get", "secrets"): set(),
        ("create", "deployments.apps"): set(),
        ("list", "events"): set(),
    }
    answers = {(verb, res, user): _can_i(localenv, setup.ns, user, verb, res)
               for (verb, res) in allowed for user in ("alice", "bob", "carol", "dave", "erin")}
    expected = {(verb, res, user): user in who
                for (verb, res), who in allowed.items() for user in ("alice", "bob", "carol", "dave", "erin")}
    assert answers == expected

    # An unchanged directory writes nothing, not even the policy's status: same resourceVersions
    # after another sync, whose time shows only in the metric.
    before = setup.versions()
    assert len(before) == 8
    status_before = setup.policy()["status"]
    synced_at = _last_success(operator, setup.ns)
    assert synced_at is not None
    time.sleep(1.1)
    setup.touch()
    wait_until(lambda: (_last_success(operator, setup.ns) or 0) > synced_at, what="second sync")
    assert setup.versions() == before
    assert setup.policy()["status"] == status_before
    audit = [json.loads(line) for line in operator.audit_file.read_text().splitlines()]
    synced = [r for r in audit if r["event_type"] == "RBAC_SYNCED"
              and r["resource"]["namespace"] == setup.ns]
    assert synced and synced[0]["action"]["details"]["added"] == EXPECTED


def _last_success(operator: OperatorProcess, namespace: str) -> float | None:
    prefix = f'mlsec_ldap_last_success_timestamp_seconds{{namespace="{namespace}"}} '
    for line in operator.metrics().splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


def test_membership_changes_follow_ldap_within_one_interval(
        setup: Setup, ldap_info: dict[str, str], directory: ldap3.Connection) -> None:
    setup.secrets(ldap_info)
    setup.create(_policy(setup.ns, ldap_info))
    wait_until(lambda: setup.bindings() == EXPECTED, what="hospital RoleBindings")
    engineers, bob = slapd.group_dn("ml_engineers"), slapd.user_dn("bob")
    # groupOfNames needs at least one member: bob's place is taken by a DN that is nobody.
    placeholder = f"cn=placeholder,{slapd.BASE}"
    try:
        assert directory.modify(engineers, {"member": [(ldap3.MODIFY_REPLACE, [placeholder])]}), \
            directory.result
        removed_at = time.monotonic()
        wait_until(lambda: setup.bindings()["model_deployer"] == [], timeout=INTERVAL + 10,
                   what="bob's binding removed")
        assert time.monotonic() - removed_at <= INTERVAL + 3  # next due sync, ±polling
        assert setup.bindings() == {**EXPECTED, "model_deployer": []}  # nobody else touched
        # The scheduled sync (an operator-wide loop, outside any kopf handler) says what changed.
        wait_until(lambda: any("-bob model_deployer" in m for m in setup.event_messages("RBACSynced")),
                   timeout=10, what="the RBACSynced event of the scheduled sync")
        assert directory.modify(engineers, {"member": [(ldap3.MODIFY_REPLACE, [bob])]}), directory.result
        wait_until(lambda: setup.bindings() == EXPECTED, timeout=INTERVAL + 10,
                   what="bob's binding restored")
    finally:
        directory.modify(engineers, {"member": [(ldap3.MODIFY_REPLACE, [bob])]})


def test_ldap_outage_keeps_bindings_and_recovers(
        setup: Setup, ldap_info: dict[str, str], localenv: local.LocalEnv) -> None:
    setup.secrets(ldap_info)
    setup.create(_policy(setup.ns, ldap_info))
    wait_until(lambda: setup.bindings() == EXPECTED, what="hospital RoleBindings")
    setup.wait_synced("True")
    before = setup.versions()
    last_sync = setup.policy()["status"]["ldap"]["lastChange"]
    local.stop_component(localenv, "slapd")
    try:
        setup.touch()
        cond = setup.wait_synced("False", "Unreachable")
        assert "left unchanged" in cond["message"] and last_sync in cond["message"]
        assert setup.versions() == before and setup.bindings() == EXPECTED
        assert setup.policy()["status"]["ldap"]["lastChange"] == last_sync  # age stays visible
    finally:
        local.start_component(localenv, "slapd")
    setup.touch()
    setup.wait_synced("True", "Synced")
    assert setup.versions() == before


def test_filter_injection_does_not_widen_membership(
        setup: Setup, ldap_info: dict[str, str], directory: ldap3.Connection) -> None:
    odd_uid = "*)(uid=*"
    odd_dn = f"uid=*)(uid\\=*,{slapd.USERS_OU}"
    suffix = uuid.uuid4().hex[:8]
    posix, names = f"inj-posix-{suffix}", f"inj-names-{suffix}"
    try:
        assert directory.add(odd_dn, ["inetOrgPerson"], {"uid": odd_uid, "cn": "odd", "sn": "odd"}) \
            or directory.result["description"] == "entryAlreadyExists"
        assert directory.add(slapd.group_dn(posix), ["posixGroup"],
                             {"cn": posix, "gidNumber": 4242, "memberUid": [odd_uid, "*"]})
        assert directory.add(slapd.group_dn(names), ["groupOfNames"], {"cn": names, "member": [odd_dn]})
        setup.secrets(ldap_info)
        setup.create(_policy(setup.ns, ldap_info, {posix: "auditor", names: "model_approver",
                                                    "ml_leads": "compliance_reviewer"}))
        setup.wait_synced("True", "Synced")
        assert setup.bindings() == {"auditor": [odd_uid], "model_approver": [odd_uid],
                                    "compliance_reviewer": ["carol"]}
    finally:
        for dn in (slapd.group_dn(posix), slapd.group_dn(names), odd_dn):
            directory.delete(dn)


def test_wrong_bind_password_is_reported_and_never_leaked(
        setup: Setup, ldap_info: dict[str, str], operator: OperatorProcess) -> None:
    wrong = f"Wr0ng-{secrets.token_urlsafe(16)}"
    setup.secrets(ldap_info, password=wrong)
    setup.create(_policy(setup.ns, ldap_info))
    cond = setup.wait_synced("False", "InvalidCredentials")
    assert cond["message"].startswith(f"invalid credentials for bind DN {ldap_info['bind_dn']}")
    assert setup.bindings() == {}

    def warned() -> list[str]:
        events = setup.core.list_namespaced_event(setup.ns).items
        return [e.message for e in events if e.reason == "LDAPSyncFailed"]

    assert wait_until(warned, what="LDAPSyncFailed event")
    everything = "\n".join([operator.log(), operator.audit_file.read_text(),
                            json.dumps(setup.policy()),
                            *(e.message or "" for e in setup.core.list_namespaced_event(setup.ns).items)])
    for password in (wrong, ldap_info["bind_password"]):
        assert password not in everything
