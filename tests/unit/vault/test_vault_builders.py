"""The model's Vault policy, Kubernetes auth role and injector annotations: exact and deterministic."""

from __future__ import annotations

import re
from typing import Any

import pytest
from vault_cases import make_md, make_policy

from mlsec.builders import vault as v
from mlsec.builders.compliance import vault_violations, violation_messages
from mlsec.builders.naming import service_account_name
from mlsec.builders.workload import NONROOT_ID, deployment

SAMPLE_HCL = """\
# Managed by mlsec-operator for ModelDeployment radiology-ml/mri-classifier.
# Rewritten on every change: edit the ModelDeployment's secrets or tls instead.

path "database/creds/mri-preprocessing-role" {
  capabilities = ["read"]
}

path "pki/issue/ml-serving-cert" {
  capabilities = ["update"]
}

path "secret/data/ml-models/mri-classifier" {
  capabilities = ["read"]
}

path "transit/decrypt/mlsec-radiology-ml-mri-classifier" {
  capabilities = ["update"]
}

path "transit/encrypt/mlsec-radiology-ml-mri-classifier" {
  capabilities = ["update"]
}
"""

KV = "secret/data/ml-models/mri-classifier"
DB = "database/creds/mri-preprocessing-role"
PKI = "pki/issue/ml-serving-cert"
INJ = "vault.hashicorp.com/"


def test_names() -> None:
    md = make_md()
    assert v.vault_name(md) == v.policy_name(md) == v.role_name(md) == "mlsec-radiology-ml-mri-classifier"
    assert v.vault_name(make_md(name="mri.v2", namespace="ns")) == "mlsec-ns-mri.v2"


def test_policy_hcl_of_the_sample_is_exact() -> None:
    assert v.policy_hcl(make_md()) == SAMPLE_HCL


def test_transit_stanza_only_for_pii_and_phi_on_the_own_key() -> None:
    assert "transit/" not in v.policy_hcl(make_md(dataClassification="internal"))
    pii = v.policy_hcl(make_md(dataClassification="pii", name="other"), "kms")
    assert 'path "kms/encrypt/mlsec-radiology-ml-other"' in pii
    assert 'path "kms/decrypt/mlsec-radiology-ml-other"' in pii
    assert "mri-classifier" not in pii.split("transit")[0].split("kms/")[-1]
    assert v.transit_grants(make_md(dataClassification="confidential")) == {}


def test_policy_grants_exactly_the_listed_paths() -> None:
    md = make_md(tls=None, secrets=[{"name": "a", "path": KV}])
    assert v.grants(md) == {KV: ["read"]}
    assert v.policy_hcl(md).count("path ") == 1 + len(v.transit_grants(md))
    # nothing but secrets and tls: no globs, no metadata paths, no extra capabilities
    md = make_md(secrets=[], tls={"pkiRole": "ml-serving-x", "commonName": "a.b"})
    assert v.grants(md) == {"pki/issue/ml-serving-x": ["update"]}


def test_policy_is_independent_of_secret_order_and_merges_duplicates() -> None:
    a = make_md(secrets=[{"name": "a", "path": KV}, {"name": "b", "path": DB}])
    b = make_md(secrets=[{"name": "b", "path": DB}, {"name": "a", "path": KV}])
    assert v.policy_hcl(a) == v.policy_hcl(b)
    twice = make_md(tls=None, secrets=[{"name": "a", "path": KV}, {"name": "b", "path": KV}])
    assert v.grants(twice) == {KV: ["read"]}
    # the same path read and used to issue: one block, both capabilities
    both = make_md(secrets=[{"name": "a", "path": PKI}])
    assert v.grants(both) == {PKI: ["read", "update"]}
    assert 'path "pki/issue/ml-serving-cert" {\n  capabilities = ["read", "update"]\n}' in v.policy_hcl(both)


def test_role_definition_binds_exactly_the_models_service_account() -> None:
    assert v.role_definition(make_md()) == {
        "bound_service_account_names": ["mri-classifier"],
        "bound_service_account_namespaces": ["radiology-ml"],
        "audience": "vault",
        "alias_name_source": "serviceaccount_uid",
        "token_policies": ["mlsec-radiology-ml-mri-classifier"],
        "token_ttl": 900,
        "token_max_ttl": 3600,
        "token_type": "default",
    }
    # an odd name: the ServiceAccount is the children's base name, not the raw name
    md = make_md(name="mri.classifier.v2")
    [sa] = v.role_definition(md)["bound_service_account_names"]
    assert sa == service_account_name(md) and sa.startswith("mri-classifier-v2-")


# What OpenBao 2.6 returns for the sample's role: more fields than we set, TTLs in seconds.
LIVE_ROLE = {
    "alias_name_source": "serviceaccount_uid", "audience": "vault",
    "bound_service_account_names": ["mri-classifier"], "bound_service_account_namespace_selector": "",
    "bound_service_account_namespaces": ["radiology-ml"], "token_bound_cidrs": [],
    "token_explicit_max_ttl": 0, "token_max_ttl": 3600, "token_no_default_policy": False,
    "token_num_uses": 0, "token_period": 0, "token_policies": ["mlsec-radiology-ml-mri-classifier"],
    "token_strictly_bind_ip": False, "token_ttl": 900, "token_type": "default",
}


def test_role_differences() -> None:
    desired = v.role_definition(make_md())
    assert v.role_differences(desired, LIVE_ROLE) == []
    assert v.role_differences(desired, None) == sorted(desired)
    widened = {**LIVE_ROLE, "bound_service_account_names": ["mri-classifier", "*"], "token_ttl": 86400}
    assert v.role_differences(desired, widened) == ["bound_service_account_names", "token_ttl"]
    assert v.role_differences(desired, {**LIVE_ROLE, "audience": ""}) == ["audience"]


def test_owned_by() -> None:
    md = make_md()
    assert v.owned_by(LIVE_ROLE, md)
    assert not v.owned_by({**LIVE_ROLE, "bound_service_account_namespaces": ["radiology"]}, md)
    # drift inside our namespace is ours to repair
    assert v.owned_by({**LIVE_ROLE, "bound_service_account_names": ["*"]}, md)
    assert v.owned_by({**LIVE_ROLE, "bound_service_account_namespaces": ["*"]}, md)
    assert v.owned_by({**LIVE_ROLE, "bound_service_account_namespaces": ["x", "radiology-ml"]}, md)
    # namespace a-b + model c and namespace a + model b-c share a name; the binding tells them apart
    x, y = make_md(name="c", namespace="a-b"), make_md(name="b-c", namespace="a")
    assert v.vault_name(x) == v.vault_name(y)
    assert not v.owned_by(v.role_definition(x), y)


@pytest.mark.parametrize(
    ("path", "glob", "allowed"),
    [
        (KV, "secret/data/ml-models/*", True),
        ("secret/data/ml-models/a/b", "secret/data/ml-models/*", True),  # Vault: * spans segments
        ("secret/data/ml-models", "secret/data/ml-models/*", False),
        ("secret/data/other/x", "secret/data/ml-models/*", False),
        (PKI, "pki/issue/ml-serving-*", True),
        ("pki/issue/admin", "pki/issue/ml-serving-*", False),
        (DB, "database/creds/*", True),
        (KV, KV, True),  # exact
        (KV + "x", KV, False),
        ("secret/data/a/team", "secret/data/+/team", True),
        ("secret/data/a/b/team", "secret/data/+/team", False),  # + is one segment
        ("secret/data/a+b/team", "secret/data/a+b/team", True),  # + inside a segment is literal
        ("secret/data/ab/team", "secret/data/a+b/team", False),
        ("secret/data/x/y", "secret/*/x/y", False),  # * not at the end is literal: fail closed
        ("secretXdata/a", "secret.data/*", False),  # regex characters are literal
    ],
)
def test_path_allowed(path: str, glob: str, allowed: bool) -> None:
    assert v.path_allowed(path, [glob]) is allowed


def test_disallowed_paths_and_violations() -> None:
    md = make_md()
    assert v.disallowed_paths(md, make_policy()) == []
    policy = make_policy(allowedSecretPaths=["secret/data/ml-models/*"])
    assert v.disallowed_paths(md, policy) == [DB, PKI]
    assert violation_messages(md, policy) == [
        f"vault.allowedSecretPaths: {DB} is not in [secret/data/ml-models/*]",
        f"vault.allowedSecretPaths: {PKI} is not in [secret/data/ml-models/*]",
    ]
    no_vault = make_policy(drop=True)
    assert [str(x) for x in vault_violations(md, no_vault)] == [
        f"vault.allowedSecretPaths: {p} is not in [] (the policy has no vault section)"
        for p in (DB, PKI, KV)
    ]
    assert vault_violations(make_md(secrets=[], tls=None), no_vault) == []


def test_secret_names_too_long_for_the_injector() -> None:
    ok = "a" * v.MAX_SECRET_NAME
    long = "a" * (v.MAX_SECRET_NAME + 1)
    assert vault_violations(make_md(secrets=[{"name": ok, "path": KV}]), make_policy()) == []
    [bad] = vault_violations(make_md(secrets=[{"name": long, "path": KV}]), make_policy())
    assert bad.rule == "vault" and long in bad.message


# --- annotations ------------------------------------------------------------------------------

KV_TEMPLATE = (
    '{{ with secret "secret/data/ml-models/mri-classifier" }}'
    "{{ range $k, $v := .Data.data }}{{ $k }}={{ $v }}\n{{ end }}{{ end }}"
)
DB_TEMPLATE = (
    '{{ with secret "database/creds/mri-preprocessing-role" }}'
    "username={{ .Data.username }}\npassword={{ .Data.password }}\n{{ end }}"
)
PKI_CALL = '{{ with secret "pki/issue/ml-serving-cert" "common_name=model-server.hospital.com" }}'


def test_annotations_of_the_sample_are_exact() -> None:
    assert v.vault_annotations(make_md(), make_policy()) == {
        INJ + "agent-init-first": "true",
        INJ + "agent-inject": "true",
        INJ + "agent-inject-perms-tls.key": "0400",
        INJ + "agent-inject-secret-db": DB,
        INJ + "agent-inject-secret-hyperparams": KV,
        INJ + "agent-inject-secret-tls.crt": PKI,
        INJ + "agent-inject-secret-tls.key": PKI,
        INJ + "agent-inject-template-db": DB_TEMPLATE,
        INJ + "agent-inject-template-hyperparams": KV_TEMPLATE,
        INJ + "agent-inject-template-tls.crt":
            PKI_CALL + "{{ .Data.certificate }}\n{{ .Data.issuing_ca }}\n{{ end }}",
        INJ + "agent-inject-template-tls.key": PKI_CALL + "{{ .Data.private_key }}\n{{ end }}",
        INJ + "agent-run-as-group": "65532",
        INJ + "agent-run-as-user": "65532",
        INJ + "auth-path": "auth/kubernetes",
        INJ + "role": "mlsec-radiology-ml-mri-classifier",
        INJ + "service": "https://vault.hospital.com:8200",
    }


@pytest.mark.parametrize(
    ("spec", "pre_populate_only"),
    [
        ({"secrets": [{"name": "h", "path": KV}], "tls": None}, True),  # static: init container only
        ({"secrets": [{"name": "c", "path": "secret/config"}], "tls": None}, True),  # kv v1
        ({"secrets": [{"name": "d", "path": DB}], "tls": None}, False),  # leases need the sidecar
        ({"secrets": [{"name": "h", "path": KV}]}, False),  # certificates expire
    ],
)
def test_pre_populate_only_where_nothing_needs_renewal(spec: dict[str, Any], pre_populate_only: bool) -> None:
    a = v.vault_annotations(make_md(**spec), make_policy())
    assert (a.get(INJ + "agent-pre-populate-only") == "true") is pre_populate_only


def test_generic_path_template_reads_data() -> None:
    a = v.vault_annotations(make_md(secrets=[{"name": "c", "path": "secret/config"}], tls=None),
                            make_policy())
    assert a[INJ + "agent-inject-template-c"] == (
        '{{ with secret "secret/config" }}{{ range $k, $v := .Data }}{{ $k }}={{ $v }}\n{{ end }}{{ end }}'
    )


def test_annotations_follow_the_policy() -> None:
    policy = make_policy(kubernetesAuthMount="k8s/prod", address="https://vault.example:8200/",
                         caSecretRef={"name": "vault-ca", "key": "ca.crt"})
    a = v.vault_annotations(make_md(), policy)
    assert a[INJ + "auth-path"] == "auth/k8s/prod"
    assert a[INJ + "service"] == "https://vault.example:8200"
    assert a[INJ + "tls-secret"] == "vault-ca"
    assert a[INJ + "ca-cert"] == "/vault/tls/ca.crt"


def test_no_annotations_without_vault_use_or_vault_section() -> None:
    assert v.vault_annotations(make_md(secrets=[], tls=None), make_policy()) == {}
    assert v.vault_annotations(make_md(), make_policy(drop=True)) == {}


def test_annotation_keys_are_valid_and_sorted() -> None:
    md = make_md(secrets=[{"name": "a" * v.MAX_SECRET_NAME, "path": KV}])
    a = v.vault_annotations(md, make_policy())
    assert list(a) == sorted(a)
    name = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    for key in a:
        prefix, _, rest = key.partition("/")
        assert prefix == "vault.hashicorp.com"
        assert len(rest) <= 63 and name.match(rest), key


def test_agent_runs_as_the_pods_user_and_deployment_carries_the_annotations() -> None:
    assert v.AGENT_UID == v.AGENT_GID == NONROOT_ID
    md, policy = make_md(), make_policy()
    template = deployment(md, policy)["spec"]["template"]
    assert v.vault_annotations(md, policy).items() <= template["metadata"]["annotations"].items()
    assert template["spec"]["securityContext"]["runAsUser"] == v.AGENT_UID


def test_deterministic() -> None:
    md, policy = make_md(), make_policy()
    assert v.vault_annotations(md, policy) == v.vault_annotations(make_md(), make_policy())
    assert v.policy_hcl(md) == v.policy_hcl(make_md())
