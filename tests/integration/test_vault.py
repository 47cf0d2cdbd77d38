"""Per-model Vault policy and Kubernetes-auth role against real OpenBao and the real API server.

OpenBao's kubernetes auth asks our kube-apiserver to review every token (TokenReview), so a login
here is the same check a pod's Vault agent goes through — only the kubelet is missing, and
TokenRequest gives us the token it would mount.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import kubernetes
import pytest

from mlsec.api import MLSecurityPolicy, ModelDeployment
from mlsec.builders import vault as build
from mlsec.clients.vault import KubernetesLogin, Vault, token_request
from mlsec.handlers import vault as vault_step
from mlsec.local import env as local

from . import resources
from .conftest import OperatorProcess, wait_until

GROUP, VERSION = "mlsec.io", "v1alpha1"
KV = "secret/data/ml-models/mri-classifier"
DB = "database/creds/mri-preprocessing-role"
PKI = "pki/issue/ml-serving-cert"
ALLOWED = ["secret/data/ml-models/*", "database/creds/*", "pki/issue/ml-serving-*"]
SECRET_VALUES = {"learning_rate": "0.001", "dropout_rate": "0.5"}


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def root(vault_info: dict[str, str]) -> hvac.Client:
    """OpenBao as its administrator (the root token of the dev server)."""
    return hvac.Client(url=vault_info["addr"], token=vault_info["token"])


@pytest.fixture
def operator_vault(localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient) -> Vault:
    """The client the operator uses: its own ServiceAccount's token, kubernetes auth."""
    jwt = token_request(admin_client, local.OPERATOR_NAMESPACE, local.OPERATOR_SERVICE_ACCOUNT)
    return Vault(localenv.vault_addr, KubernetesLogin(local.OPERATOR_VAULT_ROLE, jwt))


def policy_body(localenv: local.LocalEnv, namespace: str, **vault: Any) -> dict[str, Any]:
    return resources.policy(namespace, vault={"address": localenv.vault_addr,
                                              "kubernetesAuthMount": "kubernetes",
                                              "allowedSecretPaths": ALLOWED, **vault})


def typed(localenv: local.LocalEnv, namespace: str, name: str = "mri-classifier",
          policy_vault: dict[str, Any] | None = None,
          **spec: Any) -> tuple[ModelDeployment, MLSecurityPolicy]:
    md = resources.model(namespace, name, vault=True, **spec)
    md["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    return (ModelDeployment.model_validate(md),
            MLSecurityPolicy.model_validate(policy_body(localenv, namespace, **(policy_vault or {}))))


def create_sa(admin_client: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
    """The ServiceAccount (the operator's reconcile may have created it already)."""
    try:
        kubernetes.client.CoreV1Api(admin_client).create_namespaced_service_account(
            namespace, {"metadata": {"name": name}})
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise


def sa_token(admin_client: kubernetes.client.ApiClient, namespace: str, name: str,
             audience: str = "vault") -> str:
    return token_request(admin_client, namespace, name, audience)()


def login(addr: str, role: str, jwt: str) -> hvac.Client:
    client = hvac.Client(url=addr)
    client.auth.kubernetes.login(role, jwt)
    return client


def vault_objects(root: hvac.Client, name: str,
                  mount: str = "kubernetes") -> tuple[str | None, dict[str, Any] | None]:
    try:
        text = root.sys.read_acl_policy(name)["data"]["policy"]
    except hvac.exceptions.InvalidPath:
        text = None
    try:
        role = root.read(f"auth/{mount}/role/{name}")
    except hvac.exceptions.InvalidPath:
        role = None
    return text, (role or {}).get("data") if role else None


@contextlib.contextmanager
def openbao_stopped(localenv: local.LocalEnv) -> Iterator[None]:
    """OpenBao down for the block; always started again (it comes back empty: dev mode)."""
    local.stop_component(localenv, "openbao")
    try:
        yield
    finally:
        local.start_component(localenv, "openbao")


def secrets_in(text: str, secrets: list[str]) -> list[str]:
    """Which of ``secrets`` occur in ``text`` (shown shortened: never print a secret)."""
    return [s[:6] + "…" for s in secrets if s and s in text]


# --- ensure(): exact content, idempotence, drift ------------------------------------------------


def test_ensure_writes_exactly_the_expected_policy_and_role(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault) -> None:
    md, pol = typed(localenv, namespace)
    name = f"mlsec-{namespace}-mri-classifier"

    outcome = vault_step.ensure(md, pol, operator_vault)
    assert outcome.ok, outcome
    assert (outcome.reason, outcome.role, outcome.policy_name) == ("Written", name, name)
    assert KV in outcome.message and f"auth/kubernetes/role/{name}" in outcome.message

    text, role = vault_objects(root, name)
    assert text == (
        f"# Managed by mlsec-operator for ModelDeployment {namespace}/mri-classifier.\n"
        "# Rewritten on every change: edit the ModelDeployment's secrets or tls instead.\n"
        "\n"
        f'path "{DB}" {{\n  capabilities = ["read"]\n}}\n'
        "\n"
        f'path "{PKI}" {{\n  capabilities = ["update"]\n}}\n'
        "\n"
        f'path "{KV}" {{\n  capabilities = ["read"]\n}}\n'
        # the sample is phi: encrypt/decrypt on exactly its own transit key (issue 12)
        "\n"
        f'path "transit/decrypt/{name}" {{\n  capabilities = ["update"]\n}}\n'
        "\n"
        f'path "transit/encrypt/{name}" {{\n  capabilities = ["update"]\n}}\n'
    )
    assert role is not None
    assert {k: role[k] for k in build.role_definition(md)} == {
        "bound_service_account_names": ["mri-classifier"],
        "bound_service_account_namespaces": [namespace],
        "audience": "vault",
        "alias_name_source": "serviceaccount_uid",
        "token_policies": [name],
        "token_ttl": 900,
        "token_max_ttl": 3600,
        "token_type": "default",
    }
    # nothing else widens it
    assert role["token_bound_cidrs"] == [] and role["token_period"] == 0
    assert role["token_no_default_policy"] is False

    again = vault_step.ensure(md, pol, operator_vault)
    assert (again.ok, again.reason, again.written) == (True, "InSync", ())


def test_ensure_repairs_drift_and_writes_only_what_differs(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault) -> None:
    md, pol = typed(localenv, namespace)
    name = build.vault_name(md)
    assert vault_step.ensure(md, pol, operator_vault).ok
    # someone widens the role and the policy behind the operator's back
    root.write_data(f"auth/kubernetes/role/{name}", data={"bound_service_account_names": ["*"],
                                                         "token_ttl": "30m"})
    outcome = vault_step.ensure(md, pol, operator_vault)
    assert outcome.written == (f"role auth/kubernetes/role/{name} "
                               "(bound_service_account_names, token_ttl)",)
    root.sys.create_or_update_acl_policy(name, 'path "secret/*" { capabilities = ["read", "list"] }')
    outcome = vault_step.ensure(md, pol, operator_vault)
    assert outcome.written == (f"policy {name}",)
    text, role = vault_objects(root, name)
    assert text == build.policy_hcl(md)
    assert role and role["bound_service_account_names"] == ["mri-classifier"] and role["token_ttl"] == 900


# --- end to end: the model's own ServiceAccount token ----------------------------------------


def test_model_token_reads_its_secret_and_nothing_else(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault,
        admin_client: kubernetes.client.ApiClient) -> None:
    md, pol = typed(localenv, namespace)
    other, _ = typed(localenv, namespace, name="ct-segmenter")
    role = build.role_name(md)
    assert vault_step.ensure(md, pol, operator_vault).ok
    assert vault_step.ensure(other, pol, operator_vault).ok
    root.secrets.kv.v2.create_or_update_secret("ml-models/mri-classifier", secret=SECRET_VALUES)
    root.secrets.kv.v2.create_or_update_secret("ml-models/ct-segmenter", secret={"k": "v"})
    create_sa(admin_client, namespace, "mri-classifier")
    create_sa(admin_client, namespace, "frontend")

    model = login(localenv.vault_addr, role, sa_token(admin_client, namespace, "mri-classifier"))
    info = model.auth.token.lookup_self()["data"]
    assert sorted(info["policies"]) == ["default", role]
    assert info["ttl"] <= 900 and info["meta"]["service_account_name"] == "mri-classifier"

    data = model.secrets.kv.v2.read_secret_version("ml-models/mri-classifier",
                                                   raise_on_deleted_version=True)["data"]["data"]
    assert data == SECRET_VALUES
    with pytest.raises(hvac.exceptions.Forbidden):
        model.secrets.kv.v2.read_secret_version("ml-models/ct-segmenter", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        model.secrets.kv.v2.create_or_update_secret("ml-models/mri-classifier", secret={"x": "y"})

    # database and PKI: no engines needed to see that the policy grants exactly these
    caps = model.write_data("sys/capabilities-self", data={"paths": [KV, DB, PKI, "database/creds/other",
                                                                    "pki/issue/other", "secret/data/x"]})
    assert {p: caps[p] for p in (KV, DB, PKI)} == {KV: ["read"], DB: ["read"], PKI: ["update"]}
    assert caps["database/creds/other"] == caps["pki/issue/other"] == caps["secret/data/x"] == ["deny"]

    # another ServiceAccount of the namespace, and the right one with the wrong audience: refused
    frontend = sa_token(admin_client, namespace, "frontend")
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)) as refused:
        login(localenv.vault_addr, role, frontend)
    assert "not authorized" in str(refused.value)
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
        login(localenv.vault_addr, role, sa_token(admin_client, namespace, "mri-classifier",
                                                  audience="https://kubernetes.default.svc.cluster.local"))
    # the other model's role does not take this model's token either
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
        login(localenv.vault_addr, build.role_name(other),
              sa_token(admin_client, namespace, "mri-classifier"))


# --- refusals -----------------------------------------------------------------------------------


def test_path_outside_allowed_secret_paths_is_refused_and_nothing_written(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault) -> None:
    md, pol = typed(localenv, namespace, policy_vault={"allowedSecretPaths": ["secret/data/ml-models/*",
                                                                              "pki/issue/ml-serving-*"]})
    outcome = vault_step.ensure(md, pol, operator_vault)
    assert (outcome.ok, outcome.reason) == (False, "SecretPathNotAllowed")
    assert DB in outcome.message and KV not in outcome.message
    assert vault_objects(root, build.vault_name(md)) == (None, None)


def test_other_vault_address_is_refused_without_contacting_it(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client,
        admin_client: kubernetes.client.ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlsec.clients.kube import Kube
    from mlsec.handlers import context
    from mlsec.handlers.settings import CONFIG

    monkeypatch.setattr(context, "kube", lambda: Kube(admin_client))  # for the TokenRequest
    monkeypatch.setattr(CONFIG.vault, "addr", localenv.vault_addr)
    vault_step.vault_client.cache_clear()
    try:
        md, pol = typed(localenv, namespace, policy_vault={"address": "https://vault.attacker.example:8200"})
        outcome = vault_step.ensure(md, pol)
        assert (outcome.ok, outcome.reason) == (False, "VaultAddressMismatch")
        assert "vault.attacker.example" in outcome.message and localenv.vault_addr in outcome.message
        # another name of the same Vault, declared by the operator's admin: accepted
        monkeypatch.setattr(CONFIG.vault, "addr_aliases", ["https://vault.hospital.example:8200"])
        md, pol = typed(localenv, namespace, policy_vault={"address": "https://vault.hospital.example:8200/"})
        assert vault_step.ensure(md, pol).ok
        assert vault_objects(root, build.vault_name(md))[0] == build.policy_hcl(md)
    finally:
        vault_step.vault_client.cache_clear()


def test_ambiguous_name_owned_by_another_namespace_is_left_alone(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault,
        admin_client: kubernetes.client.ApiClient) -> None:
    # namespace "<ns>-x" + model "y" and namespace "<ns>" + model "x-y" map to the same Vault name
    other_ns = f"{namespace}-x"
    core = kubernetes.client.CoreV1Api(admin_client)
    core.create_namespace({"metadata": {"name": other_ns, "labels": {"mlsec.io/test": "true"}}})
    try:
        first, pol_first = typed(localenv, other_ns, name="y")
        second, pol_second = typed(localenv, namespace, name="x-y")
        assert build.vault_name(first) == build.vault_name(second)
        assert vault_step.ensure(first, pol_first, operator_vault).ok
        outcome = vault_step.ensure(second, pol_second, operator_vault)
        assert (outcome.ok, outcome.reason) == (False, "VaultNameConflict")
        assert f"{other_ns}/y" in outcome.message
        _, role = vault_objects(root, build.vault_name(first))
        assert role and role["bound_service_account_namespaces"] == [other_ns]
        assert vault_step.remove(second, "kubernetes", operator_vault) == []  # not its to remove
        assert vault_objects(root, build.vault_name(first))[1] is not None
        assert vault_step.remove(first, "kubernetes", operator_vault)
    finally:
        core.delete_namespace(other_ns)


def test_remove_deletes_role_and_policy(localenv: local.LocalEnv, namespace: str, root: hvac.Client,
                                        operator_vault: Vault) -> None:
    md, pol = typed(localenv, namespace)
    name = build.vault_name(md)
    assert vault_step.ensure(md, pol, operator_vault).ok
    assert vault_step.remove(md, "kubernetes", operator_vault) == [
        f"role auth/kubernetes/role/{name}", f"policy {name}"]
    assert vault_objects(root, name) == (None, None)
    assert vault_step.remove(md, "kubernetes", operator_vault) == []  # idempotent


# --- outage -------------------------------------------------------------------------------------


def test_outage_is_reported_without_secrets_and_state_is_rewritten_after_restart(
        localenv: local.LocalEnv, namespace: str, operator_vault: Vault,
        admin_client: kubernetes.client.ApiClient) -> None:
    md, pol = typed(localenv, namespace)
    name = build.vault_name(md)
    assert vault_step.ensure(md, pol, operator_vault).ok
    with openbao_stopped(localenv):
        outcome = vault_step.ensure(md, pol, operator_vault)
        assert (outcome.ok, outcome.reason) == (False, "VaultUnavailable")
        assert localenv.vault_addr in outcome.message and f"auth/kubernetes/role/{name}" in outcome.message
    # dev mode: OpenBao came back empty; the operator logs in again and rewrites everything
    root = hvac.Client(url=localenv.vault_addr, token=localenv.vault_token)
    assert vault_objects(root, name) == (None, None)
    outcome = vault_step.ensure(md, pol, operator_vault)
    assert outcome.ok and len(outcome.written) == 3, outcome  # transit key, policy, role
    assert vault_objects(root, name)[0] == build.policy_hcl(md)
    secrets = [localenv.vault_token, *operator_vault._login.secrets()]
    assert secrets_in(repr(outcome) + outcome.message, secrets) == []


# --- through the operator: finalizer, outage during deletion, resync ---------------------------

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
VAULT_TOKEN = re.compile(r"\b(hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}")
FINALIZER = "mlsec.io/finalizer"


def reconcile_calls_vault() -> bool:
    """Whether the ModelDeployment reconcile runs the Vault step yet (the lead's module)."""
    from mlsec.handlers import deployment

    return "vault_step.ensure" in Path(deployment.__file__).read_text()


@pytest.fixture(scope="module")
def vault_operator(localenv: local.LocalEnv, crds_installed: None,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """`mlsec run` as deployed: kubernetes auth with its own ServiceAccount, a fast resync.

    Without leader election: it must act even when the session's operator holds the Lease
    (both acting is harmless, everything here is idempotent)."""
    op = OperatorProcess(localenv, tmp_path_factory.mktemp("vault-operator"),
                         "--vault-resync-seconds", "3", "--no-leader-election").start()
    try:
        yield op
    finally:
        op.stop()


class Models:
    """ModelDeployments and policies of one test namespace, as a user writes them."""

    def __init__(self, localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
                 namespace: str) -> None:
        self.localenv, self.namespace = localenv, namespace
        self.api = kubernetes.client.CustomObjectsApi(admin_client)
        self.core = kubernetes.client.CoreV1Api(admin_client)

    def create_policy(self, **vault: Any) -> None:
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "mlsecuritypolicies",
                                                 policy_body(self.localenv, self.namespace, **vault))

    def create(self, name: str = "mri-classifier", vault: bool = True, **spec: Any) -> None:
        body = resources.model(self.namespace, name, vault=vault, **spec)

        def created() -> bool:
            try:
                self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                         "modeldeployments", body)
            except kubernetes.client.ApiException as exc:
                # Native admission may wait for the operator's per-namespace objects (its params).
                if exc.status == 422 and "no params found" in str(exc.body):
                    return False
                raise
            return True

        wait_until(created, timeout=30, what=f"ModelDeployment {name} accepted")

    def get(self, name: str = "mri-classifier") -> dict[str, Any] | None:
        try:
            return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                              "modeldeployments", name))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str = "mri-classifier") -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "modeldeployments", name)

    def events(self) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [{"reason": e.reason, "message": e.message, "object": e.involved_object.name}
                for e in items]

    def typed(self, name: str = "mri-classifier") -> tuple[ModelDeployment, MLSecurityPolicy]:
        body = self.get(name)
        assert body is not None
        pol = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                    "mlsecuritypolicies", "default")
        return ModelDeployment.model_validate(body), MLSecurityPolicy.model_validate(pol)


@pytest.fixture
def models(localenv: local.LocalEnv, admin_client: kubernetes.client.ApiClient,
           namespace: str) -> Iterator[Models]:
    m = Models(localenv, admin_client, namespace)
    yield m
    # Never leave an object whose finalizer no operator will handle (it would hold the namespace).
    for item in m.api.list_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments")["items"]:
        if item["metadata"].get("finalizers"):
            m.api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments",
                                                 item["metadata"]["name"], {"metadata": {"finalizers": None}})


def bound_in_vault(models: Models, operator_vault: Vault, name: str = "mri-classifier") -> str:
    """Role and policy of the model in Vault: written by the operator's reconcile once that runs
    the Vault step, else by ensure() here (the deletion path under test is the operator's)."""
    md, pol = models.typed(name)
    vname = build.vault_name(md)
    if reconcile_calls_vault():
        root = hvac.Client(url=models.localenv.vault_addr, token=models.localenv.vault_token)
        wait_until(lambda: all(vault_objects(root, vname)), timeout=30, what=f"{vname} in Vault")
    else:
        assert vault_step.ensure(md, pol, operator_vault).ok
    return vname


def test_deleting_a_model_removes_its_role_and_policy(
        vault_operator: OperatorProcess, models: Models, root: hvac.Client, operator_vault: Vault) -> None:
    models.create_policy()
    models.create()
    wait_until(lambda: FINALIZER in ((models.get() or {}).get("metadata", {}).get("finalizers") or []),
               what="the operator's finalizer on a model using Vault")
    name = bound_in_vault(models, operator_vault)

    models.delete()
    wait_until(lambda: models.get() is None, timeout=30, what="the model to be gone")
    assert vault_objects(root, name) == (None, None)
    # Every replica may run the finalizer (cleanup is idempotent), so the session's operator can
    # be the one that removed it: look for the record in every operator's audit file.
    audit_files = sorted(vault_operator.workdir.parent.glob("*/audit.jsonl"))
    assert any("VAULT_ROLE_REMOVED" in f.read_text() for f in audit_files), audit_files
    wait_until(lambda: any(e["reason"] == "VaultCleanedUp" and name in e["message"]
                           for e in models.events()), what="a VaultCleanedUp event")


def test_model_without_vault_gets_no_finalizer(vault_operator: OperatorProcess, models: Models) -> None:
    models.create_policy()
    models.create("plain", vault=False)
    models.create("with-vault")
    wait_until(lambda: FINALIZER in ((models.get("with-vault") or {})["metadata"].get("finalizers") or []),
               what="finalizer on the model using Vault")
    assert FINALIZER not in ((models.get("plain") or {})["metadata"].get("finalizers") or [])


def test_deletion_waits_for_openbao_and_completes_when_it_is_back(
        vault_operator: OperatorProcess, models: Models, localenv: local.LocalEnv,
        operator_vault: Vault) -> None:
    models.create_policy()
    models.create()
    wait_until(lambda: FINALIZER in ((models.get() or {}).get("metadata", {}).get("finalizers") or []),
               what="finalizer")
    name = bound_in_vault(models, operator_vault)

    with openbao_stopped(localenv):
        models.delete()

        def pending() -> dict[str, Any] | None:
            obj = models.get()
            cond = resources.condition(obj, "VaultReady")
            return cond if cond and cond["reason"] == "VaultCleanupPending" else None

        cond = wait_until(pending, timeout=30, what="VaultReady=False VaultCleanupPending")
        assert isinstance(cond, dict) and cond["status"] == "False"
        assert name in cond["message"] and "stays" in cond["message"]
        assert localenv.vault_addr in cond["message"]
        wait_until(lambda: any(e["reason"] == "VaultCleanupPending" and name in e["message"]
                               for e in models.events()), what="a VaultCleanupPending event")
        obj = models.get()
        assert obj is not None and obj["metadata"].get("deletionTimestamp")  # still there

    # OpenBao (dev mode) came back empty. Put role and policy back as a persistent Vault would have
    # kept them: the operator's next attempt must remove them and let the object go.
    md, pol = models.typed() if models.get() else (None, None)
    if md is not None and pol is not None:
        assert vault_step.ensure(md, pol, operator_vault).ok  # it logs in again by itself
    wait_until(lambda: models.get() is None, timeout=90, what="the model to be gone after OpenBao is back")
    root = hvac.Client(url=localenv.vault_addr, token=localenv.vault_token)
    assert vault_objects(root, name) == (None, None)


def test_dropping_all_secrets_removes_role_and_policy(
        vault_operator: OperatorProcess, models: Models, root: hvac.Client, operator_vault: Vault) -> None:
    models.create_policy()
    models.create()
    name = bound_in_vault(models, operator_vault)
    models.api.patch_namespaced_custom_object(GROUP, VERSION, models.namespace, "modeldeployments",
                                              "mri-classifier", {"spec": {"secrets": [], "tls": None}})
    wait_until(lambda: vault_objects(root, name) == (None, None), timeout=30,
               what="role and policy removed once the model lists no secrets")
    assert models.get() is not None
    # Nothing left in Vault to clean up: the finalizer goes, and a deletion completes at once.
    wait_until(lambda: FINALIZER not in ((models.get() or {})["metadata"].get("finalizers") or []),
               timeout=30, what="the finalizer removed once the model no longer uses Vault")
    models.delete()
    wait_until(lambda: models.get() is None, timeout=15, what="the model to be gone")


def test_the_finalizer_leaves_other_finalizers_alone(
        vault_operator: OperatorProcess, models: Models, root: hvac.Client, operator_vault: Vault) -> None:
    other = "example.com/keep-for-backup"
    models.create_policy()
    models.create()
    models.api.patch_namespaced_custom_object(GROUP, VERSION, models.namespace, "modeldeployments",
                                              "mri-classifier", {"metadata": {"finalizers": [other]}})
    # The merge patch replaced the list: the operator puts its finalizer back beside the other one.
    wait_until(lambda: set((models.get() or {})["metadata"].get("finalizers") or []) == {other, FINALIZER},
               timeout=30, what="both finalizers")
    name = bound_in_vault(models, operator_vault)
    models.delete()
    wait_until(lambda: ((models.get() or {})["metadata"].get("finalizers") or []) == [other], timeout=30,
               what="only the operator's finalizer removed")
    assert vault_objects(root, name) == (None, None)
    models.api.patch_namespaced_custom_object(GROUP, VERSION, models.namespace, "modeldeployments",
                                              "mri-classifier", {"metadata": {"finalizers": []}})
    wait_until(lambda: models.get() is None, timeout=15, what="the model to be gone")


def test_resync_rewrites_role_and_policy_after_openbao_lost_them(
        vault_operator: OperatorProcess, models: Models, localenv: local.LocalEnv,
        operator_vault: Vault) -> None:
    models.create_policy()
    models.create()
    name = bound_in_vault(models, operator_vault)
    with openbao_stopped(localenv):
        pass
    root = hvac.Client(url=localenv.vault_addr, token=localenv.vault_token)
    assert vault_objects(root, name) == (None, None)  # dev mode: empty after the restart
    wait_until(lambda: all(vault_objects(root, name)), timeout=30,
               what="the operator to rewrite role and policy")
    md, _ = models.typed()
    assert vault_objects(root, name)[0] == build.policy_hcl(md)
    wait_until(lambda: any(e["reason"] == "VaultDriftRepaired" for e in models.events()),
               what="a VaultDriftRepaired event")


def test_no_token_or_secret_value_in_logs_events_status_or_audit(
        vault_operator: OperatorProcess, models: Models, localenv: local.LocalEnv,
        admin_client: kubernetes.client.ApiClient, root: hvac.Client, operator_vault: Vault) -> None:
    secret_value = f"s3cr3t-{models.namespace}"
    root.secrets.kv.v2.create_or_update_secret("ml-models/mri-classifier", secret={"api_key": secret_value})
    models.create_policy()
    models.create()
    bound_in_vault(models, operator_vault)
    create_sa(admin_client, models.namespace, "mri-classifier")
    model_jwt = sa_token(admin_client, models.namespace, "mri-classifier")
    model = login(localenv.vault_addr, build.vault_name(models.typed()[0]), model_jwt)
    with openbao_stopped(localenv):
        models.delete()
        wait_until(lambda: resources.condition(models.get(), "VaultReady"), timeout=30,
                   what="the cleanup to report the outage")
        status = json.dumps((models.get() or {}).get("status"))
    wait_until(lambda: models.get() is None, timeout=90, what="cleanup after OpenBao is back")

    texts = {
        "operator log": vault_operator.log(),
        "audit log": vault_operator.audit_file.read_text(),
        "events": json.dumps(models.events()),
        "status": status,
    }
    known = [localenv.vault_token, model_jwt, str(model.token), secret_value,
             *operator_vault._login.secrets()]
    for where, text in texts.items():
        assert secrets_in(text, known) == [], where
        assert not JWT.search(text), f"a JWT in the {where}"
        assert not VAULT_TOKEN.search(text), f"a Vault token in the {where}"


# --- the injector's templates, rendered by a real agent with the model's own token ------------


def test_injector_templates_render_with_the_models_token(
        localenv: local.LocalEnv, namespace: str, root: hvac.Client, operator_vault: Vault,
        admin_client: kubernetes.client.ApiClient, tmp_path: Path) -> None:
    """What the Vault Agent Injector runs in the pod (kv and PKI; no database engine here):
    ``bao agent`` with the annotations' auth path, role and templates, exit after one render."""
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    md, pol = typed(localenv, namespace, secrets=[{"name": "hyperparams", "path": KV}])
    assert vault_step.ensure(md, pol, operator_vault).ok
    root.secrets.kv.v2.create_or_update_secret("ml-models/mri-classifier", secret=SECRET_VALUES)
    if "pki/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("pki", path="pki", config={"max_lease_ttl": "8760h"})
        root.write_data("pki/root/generate/internal", data={"common_name": "Hospital ML CA", "ttl": "8760h"})
    root.write_data("pki/roles/ml-serving-cert", data={"allowed_domains": "hospital.com",
                                                       "allow_subdomains": True, "max_ttl": "72h"})
    create_sa(admin_client, namespace, "mri-classifier")
    (tmp_path / "jwt").write_text(sa_token(admin_client, namespace, "mri-classifier"))

    a = build.vault_annotations(md, pol)
    inj = "vault.hashicorp.com/"
    templates = ""
    for key, text in a.items():
        if key.startswith(inj + "agent-inject-template-"):
            file = key.removeprefix(inj + "agent-inject-template-")
            (tmp_path / f"{file}.ctmpl").write_text(text)
            templates += (f'template {{\n  source = "{tmp_path}/{file}.ctmpl"\n'
                          f'  destination = "{tmp_path}/secrets/{file}"\n}}\n')
    (tmp_path / "agent.hcl").write_text(
        f'vault {{\n  address = "{a[inj + "service"]}"\n}}\nexit_after_auth = true\n'
        f'auto_auth {{\n  method "kubernetes" {{\n    mount_path = "{a[inj + "auth-path"]}"\n'
        f'    config = {{\n      role = "{a[inj + "role"]}"\n      token_path = "{tmp_path}/jwt"\n'
        "    }\n  }\n}\n" + templates)
    proc = subprocess.run([localenv.bins["bao"], "agent", "-config", str(tmp_path / "agent.hcl")],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    out = tmp_path / "secrets"
    assert (out / "hyperparams").read_text() == "dropout_rate=0.5\nlearning_rate=0.001\n"
    chain = x509.load_pem_x509_certificates((out / "tls.crt").read_bytes())
    private = serialization.load_pem_private_key((out / "tls.key").read_bytes(), None)
    assert chain[0].subject.rfc4514_string() == "CN=model-server.hospital.com"
    assert chain[1].subject.rfc4514_string() == "CN=Hospital ML CA"
    # one issue for both files: the key belongs to the certificate
    assert chain[0].public_key() == private.public_key()


# --- through the reconcile (the lead's ModelDeployment handler runs the Vault step) -----------

needs_reconcile = pytest.mark.skipif(not reconcile_calls_vault(),
                                     reason="the ModelDeployment reconcile does not run the Vault step yet")


def deployment_of(models: Models, name: str = "mri-classifier") -> dict[str, Any] | None:
    try:
        return dict(kubernetes.client.AppsV1Api(models.core.api_client).read_namespaced_deployment(
            name, models.namespace).to_dict())
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def vault_ready(models: Models, status: str, reason: str | None = None) -> dict[str, Any] | None:
    cond = resources.condition(models.get(), "VaultReady")
    if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
        return cond
    return None


@needs_reconcile
def test_reconcile_writes_role_and_policy_and_annotates_the_pods(
        vault_operator: OperatorProcess, models: Models, root: hvac.Client) -> None:
    models.create_policy()
    models.create()
    cond = wait_until(lambda: vault_ready(models, "True"), timeout=30, what="VaultReady=True")
    md, pol = models.typed()
    name = build.vault_name(md)
    assert isinstance(cond, dict) and name in cond["message"]
    assert vault_objects(root, name)[0] == build.policy_hcl(md)
    vault_status = (models.get() or {})["status"].get("vault") or {}
    assert vault_status.get("role") == name and vault_status.get("policy") == name
    dep = wait_until(lambda: deployment_of(models), timeout=30, what="the Deployment")
    assert isinstance(dep, dict)
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert build.vault_annotations(md, pol).items() <= annotations.items()
    assert annotations["vault.hashicorp.com/agent-inject-secret-db"] == DB
    assert f'secret "{DB}"' in annotations["vault.hashicorp.com/agent-inject-template-db"]


@needs_reconcile
def test_reconcile_refuses_a_path_outside_allowed_secret_paths(
        vault_operator: OperatorProcess, models: Models, root: hvac.Client) -> None:
    models.create_policy(allowedSecretPaths=["secret/data/ml-models/*", "pki/issue/ml-serving-*"])
    models.create()

    def refused() -> dict[str, Any] | None:
        cond = resources.condition(models.get(), "PolicyCompliant")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_until(refused, timeout=30, what="PolicyCompliant=False")
    assert isinstance(cond, dict)
    assert f"vault.allowedSecretPaths: {DB} is not in" in cond["message"]
    assert deployment_of(models) is None  # enforce: nothing rolled out
    md, _ = models.typed()
    assert vault_objects(root, build.vault_name(md)) == (None, None)


@needs_reconcile
def test_reconcile_during_an_outage_holds_the_rollout_until_vault_is_back(
        vault_operator: OperatorProcess, models: Models, localenv: local.LocalEnv) -> None:
    models.create_policy()
    with openbao_stopped(localenv):
        models.create()
        cond = wait_until(lambda: vault_ready(models, "False", "VaultUnavailable"), timeout=30,
                          what="VaultReady=False VaultUnavailable")
        assert isinstance(cond, dict) and localenv.vault_addr in cond["message"]
        assert deployment_of(models) is None  # no pod that would start without its role
    wait_until(lambda: vault_ready(models, "True"), timeout=90, what="VaultReady=True after the outage")
    wait_until(lambda: deployment_of(models), timeout=30, what="the Deployment after the outage")
