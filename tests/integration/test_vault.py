"""Per-model Vault policy and Kubernetes-auth role against real OpenBao and the real API server.

OpenBao's kubernetes auth asks our kube-apiserver to review every token (TokenReview), so a login
here is the same check a pod's Vault agent goes through — only the kubelet is missing, and
TokenRequest gives us the token it would mount.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    kubernetes.client.CoreV1Api(admin_client).create_namespaced_service_account(
        namespace, {"metadata": {"name": name}})


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


def test_other_vault_address_is_refused_without_contacting_it(localenv: local.LocalEnv,
                                                              namespace: str) -> None:
    md, pol = typed(localenv, namespace, policy_vault={"address": "https://vault.attacker.example:8200"})
    from mlsec.handlers.settings import CONFIG

    saved = CONFIG.vault.addr
    CONFIG.vault.addr = localenv.vault_addr
    vault_step.vault_client.cache_clear()
    try:
        outcome = vault_step.ensure(md, pol)
    finally:
        CONFIG.vault.addr = saved
        vault_step.vault_client.cache_clear()
    assert (outcome.ok, outcome.reason) == (False, "VaultAddressMismatch")
    assert "vault.attacker.example" in outcome.message


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
    assert outcome.ok and len(outcome.written) == 2, outcome
    assert vault_objects(root, name)[0] == build.policy_hcl(md)
    secrets = [localenv.vault_token, *operator_vault._login.secrets()]
    assert secrets_in(repr(outcome) + outcome.message, secrets) == []
