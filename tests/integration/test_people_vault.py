"""Issue 12 against the real thing: slapd, OpenBao 2.6.2 (LDAP auth, transit, database engine on
PostgreSQL), the API server. One roleMappings entry governs people's Vault access; per-model
transit keys; real dynamic database credentials; the audit-device check.

The people sync runs here in-process with the operator's own Vault identity (its ServiceAccount
through kubernetes auth, its real Vault policy); the operator-driven part (condition, promotion
refusal) is at the end of the file, since a running operator syncs from the API server's state.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import kubernetes
import ldap3
import pytest

from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.builders import people as build
from mlsec.clients.kube import Kube, KubeError
from mlsec.clients.vault import KubernetesLogin, Vault, token_request
from mlsec.handlers import people
from mlsec.handlers import vault as vault_step
from mlsec.local import env as local
from mlsec.local import slapd

from . import resources
from .conftest import OperatorProcess, wait_until
from .gate_env import Gate, ldap_policy, unique

DB = "database/creds/mri-preprocessing-role"


@pytest.fixture
def root(vault_info: dict[str, str]) -> hvac.Client:
    return hvac.Client(url=vault_info["addr"], token=vault_info["token"])


@pytest.fixture
def operator_vault(localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
                   operators_paused: None) -> Vault:
    """The operator's Vault identity, for syncs run in-process (any operator process is paused:
    its own people sync owns every `mlsec-<namespace>-<role>` name and would race the test)."""
    jwt = token_request(admin_client, local.OPERATOR_NAMESPACE, local.OPERATOR_SERVICE_ACCOUNT)
    return Vault(localenv.vault_addr, KubernetesLogin(local.OPERATOR_VAULT_ROLE, jwt))


@pytest.fixture
def other_namespace(admin_client: kubernetes.client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = kubernetes.client.CoreV1Api(admin_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"mlsec.io/test": "true"}}})
    yield name
    core.delete_namespace(name)


def kv_path(namespace: str, model: str) -> str:
    return f"secret/data/ml-models/{namespace}/{model}"


def pol(localenv: local.LocalEnv, namespace: str, **vault: Any) -> MLSecurityPolicy:
    body = resources.policy(namespace, vault={
        "address": localenv.vault_addr, "kubernetesAuthMount": "kubernetes", "ldapAuthMount": "ldap",
        "requireAuditDevice": True,
        "allowedSecretPaths": ["secret/data/ml-models/*", "database/creds/*"], **vault})
    return MLSecurityPolicy.model_validate(body)


def md(namespace: str, name: str, stage: str = "staging", classification: str = "phi",
       db: bool = True) -> ModelDeployment:
    secrets = [{"name": "hyperparams", "path": kv_path(namespace, name)}]
    if db:
        secrets.append({"name": "db", "path": DB})
    body = resources.model(namespace, name, stage=stage, vault=True, secrets=secrets, tls=None,
                           dataClassification=classification)
    body["metadata"]["uid"] = str(uuid.uuid4())
    return ModelDeployment.model_validate(body)


def ldap_login(addr: str, user: str, password: str) -> hvac.Client:
    client = hvac.Client(url=addr)
    client.auth.ldap.login(username=user, password=password)
    return client


def forbidden(fn: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        fn(*args, **kwargs)
    except hvac.exceptions.Forbidden:
        return True
    return False


def kv_of(client: hvac.Client, path: str) -> dict[str, Any]:
    rel = path.split("/data/", 1)[1]
    return dict(client.secrets.kv.v2.read_secret_version(path=rel, mount_point="secret",
                                                         raise_on_deleted_version=True)["data"]["data"])


def kv_write(client: hvac.Client, path: str, data: dict[str, str]) -> None:
    client.secrets.kv.v2.create_or_update_secret(path=path.split("/data/", 1)[1], secret=data,
                                                 mount_point="secret")


def group_policies(root: hvac.Client, group: str) -> list[str]:
    try:
        data = root.read(f"auth/ldap/groups/{group}")
    except hvac.exceptions.InvalidPath:
        return []
    pols = (data or {}).get("data", {}).get("policies") or []
    return sorted(pols.split(",") if isinstance(pols, str) else pols)


# --- the environment ---------------------------------------------------------------------------------


def test_postgres_runs_as_postgres_and_is_exported(localenv: local.LocalEnv) -> None:
    import pwd

    url = localenv.exports()["MLSEC_PG_URL"]
    proc = subprocess.run(["psql", url, "-tAc", "select current_user"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "postgres", proc.stderr
    assert Path(localenv.pg_dir).stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert localenv.readiness()["postgres"] is True
    # the server process itself (a child of runuser, which the environment stops by its group)
    children = subprocess.run(["pgrep", "-P", str(localenv.pids["postgres"])], capture_output=True,
                              text=True).stdout.split()
    uids = {Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0] for pid in children}
    assert uids == {str(pwd.getpwnam("postgres").pw_uid)}


# --- people ----------------------------------------------------------------------------------------


def test_ldap_people_get_exactly_their_role_access(
        localenv: local.LocalEnv, namespace: str, other_namespace: str, root: hvac.Client,
        operator_vault: Vault, ldap_info: dict[str, str]) -> None:
    staging, prod = md(namespace, "mri-classifier"), md(namespace, "ct-segmenter", stage="production")
    elsewhere = md(other_namespace, "mri-classifier")
    for m in (staging, prod, elsewhere):
        kv_write(root, m.spec.secrets[0].path, {"learning_rate": "0.001", "dropout_rate": "0.5"})
    started = time.monotonic()
    report = people.sync(operator_vault, [pol(localenv, namespace)], {namespace: [staging, prod]})
    assert f"mlsec-{namespace}-model_developer" in report.policies_written
    assert time.monotonic() - started < 10
    assert not people.sync(operator_vault, [pol(localenv, namespace)],
                           {namespace: [staging, prod]}).changed  # idempotent: nothing written
    pw = ldap_info["user_password"]
    addr = localenv.vault_addr

    alice = ldap_login(addr, "alice", pw)
    assert f"mlsec-{namespace}-model_developer" in alice.auth.token.lookup_self()["data"]["policies"]
    kv_write(alice, staging.spec.secrets[0].path, {"learning_rate": "0.002"})
    assert kv_of(alice, staging.spec.secrets[0].path) == {"learning_rate": "0.002"}
    assert kv_of(alice, prod.spec.secrets[0].path)["learning_rate"] == "0.001"
    assert forbidden(kv_write, alice, prod.spec.secrets[0].path, {"learning_rate": "9"})
    assert forbidden(kv_of, alice, elsewhere.spec.secrets[0].path)
    assert forbidden(alice.read, DB)

    bob = ldap_login(addr, "bob", pw)  # model_deployer: read all of the namespace, write nothing
    assert kv_of(bob, staging.spec.secrets[0].path)
    assert forbidden(kv_write, bob, staging.spec.secrets[0].path, {"x": "1"})

    dave = ldap_login(addr, "dave", pw)  # compliance_reviewer: metadata, never values
    rel = staging.spec.secrets[0].path.split("/data/", 1)[1]
    meta = dave.secrets.kv.v2.read_secret_metadata(path=rel, mount_point="secret")
    assert meta["data"]["current_version"] >= 1
    assert forbidden(kv_of, dave, staging.spec.secrets[0].path)

    erin = ldap_login(addr, "erin", pw)  # no group: default only
    assert erin.auth.token.lookup_self()["data"]["policies"] == ["default"]
    assert forbidden(kv_of, erin, staging.spec.secrets[0].path)
    assert forbidden(erin.secrets.kv.v2.read_secret_metadata, path=rel, mount_point="secret")

    with pytest.raises(hvac.exceptions.VaultError):
        ldap_login(addr, "alice", pw + "-wrong")

    # promoted: alice may only read it now
    promoted = md(namespace, "mri-classifier", stage="production")
    people.sync(operator_vault, [pol(localenv, namespace)], {namespace: [promoted, prod]})
    alice = ldap_login(addr, "alice", pw)
    assert forbidden(kv_write, alice, staging.spec.secrets[0].path, {"learning_rate": "0.003"})
    assert kv_of(alice, staging.spec.secrets[0].path) == {"learning_rate": "0.002"}


def test_group_entry_unions_namespaces_and_keeps_hand_added_policies(
        localenv: local.LocalEnv, namespace: str, other_namespace: str, root: hvac.Client,
        operator_vault: Vault) -> None:
    a, b = pol(localenv, namespace), pol(localenv, other_namespace)
    root.sys.create_or_update_acl_policy(
        "team-readers", 'path "secret/data/team/*" { capabilities = ["read"] }')
    people.sync(operator_vault, [a, b], {})
    both = {f"mlsec-{namespace}-model_developer", f"mlsec-{other_namespace}-model_developer"}
    assert both <= set(group_policies(root, "data_scientists"))
    root.write("auth/ldap/groups/data_scientists",
               policies=",".join([*group_policies(root, "data_scientists"), "team-readers"]))
    assert not people.sync(operator_vault, [a, b], {}).changed
    report = people.sync(operator_vault, [a], {}, mounts=["ldap"])  # other_namespace's policy deleted
    assert f"mlsec-{other_namespace}-model_developer" in report.policies_removed
    now = set(group_policies(root, "data_scientists"))
    assert f"mlsec-{namespace}-model_developer" in now and "team-readers" in now
    assert f"mlsec-{other_namespace}-model_developer" not in now
    assert "team-readers" in root.sys.list_acl_policies()["data"]["keys"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.sys.read_acl_policy(f"mlsec-{other_namespace}-model_developer")


def test_removed_from_the_ldap_group_next_login_lacks_the_policy(
        localenv: local.LocalEnv, namespace: str, operator_vault: Vault,
        ldap_info: dict[str, str]) -> None:
    people.sync(operator_vault, [pol(localenv, namespace)], {})
    name = f"mlsec-{namespace}-model_developer"
    pw = ldap_info["user_password"]
    assert name in ldap_login(localenv.vault_addr, "alice", pw).auth.token.lookup_self()["data"]["policies"]
    group = f"cn=data_scientists,{slapd.GROUPS_OU}"
    alice = f"uid=alice,{slapd.USERS_OU}"
    server = ldap3.Server(localenv.ldap_plain_url)
    with ldap3.Connection(server, slapd.ADMIN_DN, localenv.ldap_admin_password, auto_bind=True) as conn:
        # groupOfNames needs a member: alice is the only one, a placeholder takes her place
        placeholder = f"uid=placeholder,{slapd.USERS_OU}"
        assert conn.modify(group, {"member": [(ldap3.MODIFY_REPLACE, [placeholder])]}), conn.result
        try:
            pols = ldap_login(localenv.vault_addr, "alice", pw).auth.token.lookup_self()["data"]["policies"]
            assert name not in pols
        finally:
            assert conn.modify(group, {"member": [(ldap3.MODIFY_REPLACE, [alice])]}), conn.result


# --- transit and database credentials ----------------------------------------------------------------


def sa_login(localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
             m: ModelDeployment) -> hvac.Client:
    from mlsec.builders.naming import service_account_name

    ns, sa = str(m.metadata.namespace), service_account_name(m)
    try:
        kubernetes.client.CoreV1Api(admin_client).create_namespaced_service_account(
            ns, {"metadata": {"name": sa}})
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    client = hvac.Client(url=localenv.vault_addr)
    client.auth.kubernetes.login(vault_step.build.role_name(m), token_request(admin_client, ns, sa)())
    return client


def test_phi_model_transit_key_and_database_credentials(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault,
        admin_client: kubernetes.client.ApiClient) -> None:
    p = pol(localenv, namespace)
    phi, other = md(namespace, "mri-classifier"), md(namespace, "ct-segmenter", db=False)
    for m in (phi, other):
        outcome = vault_step.ensure(m, p, client=operator_vault)
        assert outcome.ok, outcome.message
    key = f"mlsec-{namespace}-mri-classifier"
    assert outcome.transit_key == f"mlsec-{namespace}-ct-segmenter"
    cfg = root.read(f"transit/keys/{key}")["data"]
    assert cfg["exportable"] is False and cfg["deletion_allowed"] is False
    assert 'path "transit/encrypt/' + key + '"' in root.sys.read_acl_policy(key)["data"]["policy"]

    client = sa_login(localenv, admin_client, phi)
    plaintext = "c2Vuc2l0aXZlIHBhdGllbnQgaW5mbw=="  # base64("sensitive patient info")
    ct = client.secrets.transit.encrypt_data(key, plaintext)["data"]["ciphertext"]
    assert client.secrets.transit.decrypt_data(key, ct)["data"]["plaintext"] == plaintext
    assert forbidden(client.secrets.transit.encrypt_data, f"mlsec-{namespace}-ct-segmenter", plaintext)
    assert forbidden(client.secrets.transit.read_key, key)  # use, never read or export

    # real dynamic database credentials: psql logs in with them
    creds = client.read(DB)["data"]
    host, port = "127.0.0.1", localenv.ports["postgres"]
    proc = subprocess.run(["psql", "-h", host, "-p", str(port), "-U", creds["username"], "-d", "postgres",
                           "-tAc", "select current_user"], capture_output=True, text=True, timeout=30,
                          env={"PGPASSWORD": creds["password"], "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == creds["username"]
    other_client = sa_login(localenv, admin_client, other)
    assert forbidden(other_client.read, DB)

    # deleted: role and policy go, the key stays and still decrypts
    vault_step.remove(phi, "kubernetes", operator_vault)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.sys.read_acl_policy(key)
    assert root.secrets.transit.decrypt_data(key, ct)["data"]["plaintext"] == plaintext

    # removed only on purpose, by an administrator
    from mlsec import cli

    env = {"VAULT_ADDR": localenv.vault_addr, "VAULT_TOKEN": localenv.vault_token}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert cli.main(["vault", "delete-transit-key", namespace, "mri-classifier"]) == 1
        assert root.read(f"transit/keys/{key}") is not None
        assert cli.main(["vault", "delete-transit-key", namespace, "mri-classifier", "--yes"]) == 0
        assert root.read(f"transit/keys/{key}") is None
        assert cli.main(["vault", "delete-transit-key", namespace, "mri-classifier", "--yes"]) == 1


# --- the audit device ---------------------------------------------------------------------------------


def test_audit_device_check_and_blocker(localenv: local.LocalEnv, namespace: str, root: hvac.Client,
                                        operator_vault: Vault) -> None:
    p = pol(localenv, namespace)
    assert people.check_audit_devices(operator_vault) == (True, "Vault audit devices enabled: file/")
    device = root.sys.list_enabled_audit_devices()["data"]["file/"]
    root.sys.disable_audit_device("file")
    try:
        enabled, message = people.check_audit_devices(operator_vault)
        assert enabled is False and "no audit device" in message
        assert "no audit device enabled (spec.vault.requireAuditDevice)" in people.audit_blocker(namespace, p)
        lax = pol(localenv, namespace, requireAuditDevice=False)
        assert people.audit_blocker(namespace, lax) == ""
    finally:
        root.sys.enable_audit_device("file", options=device["options"])
    assert people.check_audit_devices(operator_vault)[0] is True
    assert people.audit_blocker(namespace, p) == ""


def test_people_sync_200_groups(localenv: local.LocalEnv, operator_vault: Vault, root: hvac.Client) -> None:
    """The full people-policy sync for 200 groups (100 namespaces, 2 mappings each), against OpenBao."""
    pols = []
    for i in range(100):
        body = resources.policy(f"bench-{i}", vault={"address": localenv.vault_addr, "ldapAuthMount": "ldap"})
        body["spec"]["roleMappings"] = [
            {"ldapGroup": f"cn=bench-dev-{i},{slapd.GROUPS_OU}", "platformRole": "model_developer"},
            {"ldapGroup": f"cn=bench-dep-{i},{slapd.GROUPS_OU}", "platformRole": "model_deployer"}]
        pols.append(MLSecurityPolicy.model_validate(body))
    first = people.sync(operator_vault, pols, {})
    assert len([g for g in first.groups_written if "/bench-" in g]) == 200
    again = people.sync(operator_vault, pols, {})
    assert not again.changed
    print(f"\npeople sync, 200 groups: first {first.seconds:.2f}s, in sync {again.seconds:.2f}s")
    people.sync(operator_vault, [], {}, mounts=["ldap"])  # clean up: only mlsec's names go
    assert all(not build.is_people_policy(n) for n in root.sys.list_acl_policies()["data"]["keys"])


# --- through the operator: people from the API server, the condition, the promotion gate -------------


@pytest.fixture
def people_operator(localenv: local.LocalEnv, crds_installed: None, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[OperatorProcess]:
    """`mlsec run` with a 2 s audit-device check; without leader election (acts beside any
    session operator: everything here is idempotent)."""
    monkeypatch.setenv("MLSEC_VAULT_AUDIT_SECONDS", "2")
    op = OperatorProcess(localenv, tmp_path, "--no-leader-election").start()
    try:
        yield op
    finally:
        op.stop()


def test_operator_reports_audit_device_and_gates_promotions(
        localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
        kube_as: Callable[[str], Kube], ldap_info: dict[str, str], root: hvac.Client,
        people_operator: OperatorProcess) -> None:
    gate = Gate(localenv, admin_client, kube_as, unique("ppl"))
    gate.create_namespace()
    try:
        gate.ldap_secrets(ldap_info)
        vault = {"address": localenv.vault_addr, "kubernetesAuthMount": "kubernetes", "ldapAuthMount": "ldap",
                 "requireAuditDevice": True, "allowedSecretPaths": ["secret/data/ml-models/*"]}
        gate.admin.create(ldap_policy(gate.ns, ldap_info, vault=vault))

        def policy_cond(status: str) -> dict[str, Any] | None:
            obj = gate.admin.get(resources.API, "MLSecurityPolicy", gate.ns, "default") or {}
            c = resources.condition(obj, people.CONDITION)
            return c if c and c["status"] == status else None

        wait_until(lambda: policy_cond("True"), timeout=30, what="VaultAuditEnabled=True")
        # people's access from the API server's state, by the operator
        name = f"mlsec-{gate.ns}-model_developer"
        wait_until(lambda: name in group_policies(root, "data_scientists"), timeout=30,
                   what="the data_scientists group entry")

        # carol approves through the RBAC the LDAP sync writes: a handler of its own, which may
        # finish after the audit-device condition and the Vault groups above.
        wait_until(lambda: gate.can("carol", "create", "modelapprovals"), timeout=30,
                   what="carol's RoleBinding from the LDAP sync")
        gate.model("admin", "mri", dataClassification="internal")
        gate.counted(gate.approve("carol", "mri"))
        device = root.sys.list_enabled_audit_devices()["data"]["file/"]
        root.sys.disable_audit_device("file")
        try:
            cond = wait_until(lambda: policy_cond("False"), timeout=30, what="VaultAuditEnabled=False")
            assert isinstance(cond, dict) and cond["reason"] == "NoAuditDevice"

            def refused_for_audit() -> str | None:
                try:
                    gate.change("admin", "mri", stage="production")
                except KubeError as exc:
                    return str(exc) if "audit device" in str(exc) else None
                raise AssertionError("promotion allowed without an audit device")

            message = wait_until(refused_for_audit, timeout=30, what="promotion refused for the audit device")
            assert "requireAuditDevice" in str(message)
        finally:
            root.sys.enable_audit_device("file", options=device["options"])
        wait_until(lambda: policy_cond("True"), timeout=30, what="VaultAuditEnabled=True again")

        def promoted() -> bool:
            try:
                gate.change("admin", "mri", stage="production")
            except KubeError:
                return False
            return True

        wait_until(promoted, timeout=30, what="promotion allowed again")
        events = gate.admin.list("v1", "Event", gate.ns)
        assert any(e.get("reason") == "NoAuditDevice" for e in events)
        assert "mlsec_vault_audit_enabled 1.0" in people_operator.metrics()
        # nothing secret anywhere we write
        secrets = [ldap_info["user_password"], ldap_info["bind_password"], localenv.vault_token,
                   localenv.pg_password]
        texts = [people_operator.log(), people_operator.audit_file.read_text(), json.dumps(events),
                 json.dumps(gate.admin.get(resources.API, "MLSecurityPolicy", gate.ns, "default")),
                 (localenv.dir / "logs" / "openbao-audit.log").read_text()]
        assert not [s[:4] for s in secrets for t in texts if s in t]
    finally:
        gate.delete_namespace()
