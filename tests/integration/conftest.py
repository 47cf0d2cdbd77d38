"""Fixtures for integration tests: the real local environment, per-test namespaces, per-user clients.

The environment is started once per test session in a temporary directory and stopped (by PID) at
the end. To iterate quickly, start one with `mlsec local up` and export MLSEC_LOCAL_DIR (as
`mlsec local env` prints): a running, ready environment there is reused and left running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest

from mlsec.local import env as local

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def localenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalEnv]:
    reuse = os.environ.get("MLSEC_LOCAL_DIR")
    if reuse:
        try:
            env = local.LocalEnv.load(Path(reuse))
            if all(env.readiness().values()):
                yield env
                return
        except FileNotFoundError:
            pass
    directory = tmp_path_factory.mktemp("localenv")
    env = local.up(directory)
    try:
        yield env
    finally:
        local.down(directory)


@pytest.fixture(scope="session")
def api_client_for(localenv: local.LocalEnv) -> Callable[[str], kubernetes.client.ApiClient]:
    """An API client authenticated as one of: admin, alice, bob, carol, dave, erin."""
    cache: dict[str, kubernetes.client.ApiClient] = {}

    def make(user: str = "admin") -> kubernetes.client.ApiClient:
        if user not in cache:
            cache[user] = kubernetes.config.new_client_from_config(
                config_file=str(localenv.kubeconfig), context=user
            )
        return cache[user]

    return make


@pytest.fixture(scope="session")
def admin_client(api_client_for: Callable[[str], kubernetes.client.ApiClient]) -> kubernetes.client.ApiClient:
    return api_client_for("admin")


@pytest.fixture
def namespace(admin_client: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (the namespace controller cleans it up)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = kubernetes.client.CoreV1Api(admin_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"mlsec.io/test": "true"}}})
    yield name
    try:
        core.delete_namespace(name)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def ldap_info(localenv: local.LocalEnv) -> dict[str, str]:
    """How to reach the test directory (local only credentials)."""
    e = localenv.exports()
    return {
        "url": e["MLSEC_LDAP_URL"], "plain_url": localenv.ldap_plain_url,
        "ca_file": e["MLSEC_LDAP_CA_FILE"], "bind_dn": e["MLSEC_LDAP_BIND_DN"],
        "bind_password": e["MLSEC_LDAP_BIND_PASSWORD"], "user_password": e["MLSEC_LDAP_USER_PASSWORD"],
    }


@pytest.fixture(scope="session")
def vault_info(localenv: local.LocalEnv) -> dict[str, str]:
    return {"addr": localenv.vault_addr, "token": localenv.vault_token}
