"""Acceptance of the local environment: every component is real and behaves like a cluster's."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import hvac
import kubernetes
import ldap3
import pytest
from ldap3.core.exceptions import LDAPBindError

from mlsec.local import env as local
from mlsec.local import slapd

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.mlsec.io"},
    "spec": {
        "group": "smoke.mlsec.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
            }}},
        }],
    },
}


def test_status_reports_every_component_ready(localenv: local.LocalEnv) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mlsec", "local", "status", "--dir", str(localenv.dir)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "slapd", "openbao"):
        assert f"{name}" in proc.stdout


def test_second_up_refuses(localenv: local.LocalEnv) -> None:
    with pytest.raises(local.AlreadyRunning, match="already running"):
        local.up(localenv.dir)


def test_crd_and_object_are_served(localenv: local.LocalEnv, namespace: str,
                                   admin_client: kubernetes.client.ApiClient) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(admin_client)
    try:
        ext.create_custom_resource_definition(CRD)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    localenv.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{CRD['metadata']['name']}")
    custom = kubernetes.client.CustomObjectsApi(admin_client)
    body = {"apiVersion": "smoke.mlsec.io/v1", "kind": "Widget", "metadata": {"name": "w1"},
            "spec": {"size": 3}}
    custom.create_namespaced_custom_object("smoke.mlsec.io", "v1", namespace, "widgets", body)
    got = custom.get_namespaced_custom_object("smoke.mlsec.io", "v1", namespace, "widgets", "w1")
    assert got["spec"]["size"] == 3
    # The schema is enforced by the real API server.
    bad = {**body, "metadata": {"name": "w2"}, "spec": {"size": 0}}
    with pytest.raises(kubernetes.client.ApiException) as err:
        custom.create_namespaced_custom_object("smoke.mlsec.io", "v1", namespace, "widgets", bad)
    assert err.value.status == 422 and "spec.size" in err.value.body


@pytest.mark.parametrize(("user", "answer"), [("admin", "yes"), ("erin", "no"), ("alice", "no")])
def test_rbac_distinguishes_users(localenv: local.LocalEnv, user: str, answer: str) -> None:
    proc = localenv.kubectl("auth", "can-i", "create", "deployments", "-n", "default", user=user, check=False)
    assert proc.stdout.strip() == answer, proc.stdout + proc.stderr


def test_garbage_collector_removes_owned_child(namespace: str,
                                               admin_client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(admin_client)
    parent = core.create_namespaced_config_map(namespace, {"metadata": {"name": "parent"}})
    core.create_namespaced_config_map(namespace, {"metadata": {
        "name": "child",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent",
                             "uid": parent.metadata.uid}],
    }})
    core.delete_namespaced_config_map("parent", namespace)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_config_map("child", namespace)
        except kubernetes.client.ApiException as exc:
            assert exc.status == 404
            return
        time.sleep(0.5)
    pytest.fail("the garbage collector did not delete the owned child within 30s")


def _ldaps(ldap_info: dict[str, str]) -> ldap3.Server:
    tls = ldap3.Tls(ca_certs_file=ldap_info["ca_file"], validate=ssl.CERT_REQUIRED)
    return ldap3.Server(ldap_info["url"], use_ssl=True, tls=tls, connect_timeout=5)


def test_ldaps_bind_and_search(ldap_info: dict[str, str]) -> None:
    with ldap3.Connection(_ldaps(ldap_info), ldap_info["bind_dn"], ldap_info["bind_password"],
                          auto_bind=True) as conn:
        conn.search(slapd.GROUPS_OU, "(cn=data_scientists)", attributes=["member"])
        assert [str(m) for m in conn.entries[0].member] == [slapd.user_dn("alice")]
        conn.search(slapd.USERS_OU, "(uid=alice)", attributes=["memberOf", "mail"])
        assert slapd.group_dn("data_scientists") in [str(g) for g in conn.entries[0].memberOf]


def test_ldaps_refuses_wrong_password(ldap_info: dict[str, str]) -> None:
    with pytest.raises(LDAPBindError):
        ldap3.Connection(_ldaps(ldap_info), ldap_info["bind_dn"], "wrong-password", auto_bind=True)


def test_ldaps_rejects_untrusted_certificate(ldap_info: dict[str, str]) -> None:
    # Without our CA the server's certificate must not be accepted.
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ssl.get_default_verify_paths().cafile)
    server = ldap3.Server(ldap_info["url"], use_ssl=True, tls=tls, connect_timeout=5)
    with pytest.raises(Exception, match=r"(?i)certificate|ssl|socket"):
        ldap3.Connection(server, ldap_info["bind_dn"], ldap_info["bind_password"], auto_bind=True)


def test_serviceaccount_token_logs_in_to_openbao(
    localenv: local.LocalEnv, namespace: str, admin_client: kubernetes.client.ApiClient,
    vault_info: dict[str, str],
) -> None:
    core = kubernetes.client.CoreV1Api(admin_client)
    for sa in ("reader", "other"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    root = hvac.Client(url=vault_info["addr"], token=vault_info["token"])
    secret_path = f"smoke/{uuid.uuid4().hex[:8]}"
    root.secrets.kv.v2.create_or_update_secret(path=secret_path, secret={"answer": "42"})
    policy = f"smoke-{namespace}"
    hcl = f'path "secret/data/{secret_path}" {{ capabilities = ["read"] }}'
    root.sys.create_or_update_policy(policy, hcl)
    role = f"smoke-{namespace}"
    root.auth.kubernetes.create_role(
        role, bound_service_account_names=["reader"], bound_service_account_namespaces=[namespace],
        policies=[policy], audience=local.VAULT_AUDIENCE, ttl="5m",
    )

    def token(sa: str) -> str:
        req = {"spec": {"audiences": [local.VAULT_AUDIENCE], "expirationSeconds": 600}}
        return str(core.create_namespaced_service_account_token(sa, namespace, req).status.token)

    client = hvac.Client(url=vault_info["addr"])
    client.auth.kubernetes.login(role, token("reader"))
    data = client.secrets.kv.v2.read_secret_version(path=secret_path, raise_on_deleted_version=True)
    assert data["data"]["data"] == {"answer": "42"}

    stranger = hvac.Client(url=vault_info["addr"])
    with pytest.raises(hvac.exceptions.VaultError, match="not authorized"):
        stranger.auth.kubernetes.login(role, token("other"))


def test_istio_schema_rejects_bogus_mtls_mode(localenv: local.LocalEnv, namespace: str) -> None:
    doc = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: bogus, namespace: {namespace}}}\nspec: {{mtls: {{mode: BOGUS}}}}\n"
    )
    proc = localenv.kubectl("apply", "-f", "-", input=doc, check=False)
    assert proc.returncode != 0
    assert "mode" in proc.stderr and "BOGUS" in proc.stderr
    ok = doc.replace("BOGUS", "STRICT").replace("name: bogus", "name: strict")
    localenv.kubectl("apply", "-f", "-", input=ok)


@pytest.mark.parametrize("tool", ["helm", "kubectl"])
def test_cached_clients_run(localenv: local.LocalEnv, tool: str) -> None:
    args = ["version", "--client"] if tool == "kubectl" else ["version", "--short"]
    proc = subprocess.run([str(localenv.bin(tool)), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "v3.22.0" in proc.stdout if tool == "helm" else "v1.37.1" in proc.stdout


def test_api_server_reports_pinned_version(
    api_client_for: Callable[[str], kubernetes.client.ApiClient],
) -> None:
    info = kubernetes.client.VersionApi(api_client_for("erin")).get_code()
    assert info.git_version == "v1.37.2"
