"""Shared set-up of the promotion-gate tests: the kopf webhook as the gate, real users, real LDAP.

The tests model a cluster *without* the native admission policies (the webhook's fallback role):
the bindings of the native policies, if installed from crds/, are removed for the module and put
back afterwards; the session's operator is stood down for an operator that serves the webhooks.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from mlsec.clients.kube import Kube, KubeError
from mlsec.local import env as local
from mlsec.local import procs, slapd
from mlsec.plugin import Client, Refused

from . import resources as r
from .conftest import OperatorProcess, wait_until

NATIVE = "app.kubernetes.io/part-of=mlsec-operator"
NATIVE_BINDINGS = "validatingadmissionpolicybindings,mutatingadmissionpolicybindings"
WEBHOOK_CONFIGS = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
HOSPITAL = {"data_scientists": "model_developer", "ml_engineers": "model_deployer",
            "ml_leads": "model_approver", "compliance": "compliance_reviewer"}
EXPECTED_BINDINGS = {"model_developer": ["alice"], "model_deployer": ["bob"],
                     "model_approver": ["carol"], "compliance_reviewer": ["dave"]}
RBAC = "rbac.authorization.k8s.io/v1"


@contextmanager
def native_bindings_suspended(localenv: local.LocalEnv) -> Iterator[int]:
    """Remove the native admission policies' bindings (a cluster without them); restore after."""
    saved = yaml.safe_load(localenv.kubectl("get", NATIVE_BINDINGS, "-l", NATIVE, "-o", "yaml").stdout)
    items = saved.get("items") or []
    if items:
        localenv.kubectl("delete", NATIVE_BINDINGS, "-l", NATIVE, "--wait=true")
    try:
        yield len(items)
    finally:
        for item in items:
            meta = item["metadata"]
            item["metadata"] = {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}
        if items:
            localenv.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             input=yaml.safe_dump_all(items))


def delete_webhook_configs(localenv: local.LocalEnv) -> None:
    for kind in WEBHOOK_CONFIGS:
        localenv.kubectl("delete", kind, "mlsec.io", "--ignore-not-found")


def running_shared_operator(request: pytest.FixtureRequest) -> OperatorProcess | None:
    """The session's operator if an earlier module started it (without starting it otherwise)."""
    for fixturedef in request._fixturemanager.getfixturedefs("operator", request.node) or ():
        if getattr(fixturedef, "cached_result", None) is not None:
            op = request.getfixturevalue("operator")
            return op if isinstance(op, OperatorProcess) else None
    return None


@contextmanager
def webhook_operator(localenv: local.LocalEnv, shared: OperatorProcess | None, workdir: Path,
                     *flags: str) -> Iterator[OperatorProcess]:
    """The only operator replica while the module runs, serving the admission webhooks; the
    session's operator (if running) is stood down meanwhile."""
    restart = shared is not None and shared.proc is not None and shared.proc.poll() is None
    if shared is not None:
        shared.stop()
    port = procs.free_port()
    with native_bindings_suspended(localenv):
        op = OperatorProcess(localenv, workdir, "--webhook-port", str(port), *flags)
        op.webhook_port = port  # type: ignore[attr-defined]
        try:
            op.start()
            wait_until(lambda: _registered(localenv, port), timeout=30, what="webhooks registered")
            yield op
        finally:
            op.stop()
            delete_webhook_configs(localenv)  # persistent registrations outlive the process
    if shared is not None and restart:
        shared.start()


def _registered(localenv: local.LocalEnv, port: int) -> bool:
    for kind in WEBHOOK_CONFIGS:
        got = localenv.kubectl("get", kind, "mlsec.io", "-o", "yaml", check=False)
        if got.returncode != 0:
            return False
        hooks = (yaml.safe_load(got.stdout) or {}).get("webhooks") or []
        if not hooks or any(f":{port}/" not in (h.get("clientConfig") or {}).get("url", "") for h in hooks):
            return False
    return True


def webhook_configs(localenv: local.LocalEnv) -> dict[str, dict[str, Any]]:
    return {kind: yaml.safe_load(localenv.kubectl("get", kind, "mlsec.io", "-o", "yaml").stdout)
            for kind in WEBHOOK_CONFIGS}


# --- a namespace with the hospital policy and working LDAP ----------------------------------------


def ldap_policy(namespace: str, ldap_info: dict[str, str], **changes: Any) -> dict[str, Any]:
    """The hospital sample policy with LDAP pointed at the local slapd (RBAC follows LDAP)."""
    ldap = {
        "url": ldap_info["url"], "caSecretRef": {"name": "ldap-ca", "key": "ca.crt"},
        "bindDN": ldap_info["bind_dn"], "bindPasswordSecretRef": {"name": "ldap-bind", "key": "password"},
        "userSearchBase": slapd.USERS_OU, "groupSearchBase": slapd.GROUPS_OU,
        "userIdAttribute": "uid", "syncInterval": "5m",
    }
    mappings = [{"ldapGroup": slapd.group_dn(g), "platformRole": role} for g, role in HOSPITAL.items()]
    return r.policy(namespace, ldap=ldap, roleMappings=mappings, **changes)


class Gate:
    """One test namespace: its people (real identities), their objects, and what they see."""

    def __init__(self, localenv: local.LocalEnv, admin: kubernetes.client.ApiClient,
                 kube_as: Callable[[str], Kube], namespace: str) -> None:
        self.localenv = localenv
        self.ns = namespace
        self.kube_as = kube_as
        self.admin = kube_as("admin")
        self.core = kubernetes.client.CoreV1Api(admin)

    # --- set-up ---------------------------------------------------------------------------
    def create_namespace(self) -> None:
        self.core.create_namespace({"metadata": {"name": self.ns, "labels": {"mlsec.io/test": "true"}}})

    def delete_namespace(self) -> None:
        try:
            self.core.delete_namespace(self.ns)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise

    def ldap_secrets(self, ldap_info: dict[str, str]) -> None:
        for name, key, value in (("ldap-bind", "password", ldap_info["bind_password"]),
                                 ("ldap-ca", "ca.crt", Path(ldap_info["ca_file"]).read_text())):
            self.core.create_namespaced_secret(self.ns, {
                "metadata": {"name": name}, "data": {key: base64.b64encode(value.encode()).decode()}})

    def platform_bindings(self) -> dict[str, list[str]]:
        items = self.admin.list(RBAC, "RoleBinding", self.ns,
                                label_selector="app.kubernetes.io/managed-by=mlsec-operator")
        return {b["metadata"]["labels"]["mlsec.io/platform-role"]:
                [s["name"] for s in b.get("subjects") or []] for b in items}

    def grant(self, user: str, role: str, verb: str, resource: str, name: str | None = None) -> None:
        """Bind ``user`` to a Role of this namespace directly (besides what LDAP grants), and wait
        until the authorizer lets them ``verb`` ``resource``."""
        self.admin.create({
            "apiVersion": RBAC, "kind": "RoleBinding",
            "metadata": {"name": name or f"extra-{user}-{role}"[:63], "namespace": self.ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
        wait_until(lambda: self.can(user, verb, resource), timeout=10, what=f"{user} may {verb} {resource}")

    def can(self, user: str, verb: str, resource: str) -> bool:
        resource, _, sub = resource.partition("/")
        extra = [f"--subresource={sub}"] if sub else []
        proc = self.localenv.kubectl("auth", "can-i", verb, resource, *extra, "-n", self.ns, "--as", user,
                                     check=False)
        return proc.stdout.strip() == "yes"

    def role(self, name: str, rules: list[dict[str, Any]]) -> None:
        self.admin.create({"apiVersion": RBAC, "kind": "Role",
                           "metadata": {"name": name, "namespace": self.ns}, "rules": rules})

    # --- objects --------------------------------------------------------------------------
    def model(self, user: str, name: str, **kw: Any) -> dict[str, Any]:
        return self.kube_as(user).create(r.model(self.ns, name, **kw))

    def observed(self, name: str) -> dict[str, Any]:
        """Wait until the operator has reconciled ``name`` (so its indexes hold it)."""
        got = wait_until(lambda: (self.get(name).get("status") or {}).get("observedGeneration"),
                         timeout=30, what=f"{name} observed by the operator")
        assert got
        return self.get(name)

    def get(self, name: str) -> dict[str, Any]:
        obj = self.admin.get(r.API, "ModelDeployment", self.ns, name)
        assert obj is not None
        return obj

    def approve(self, user: str, model: str, *, version: str | None = None, digest: str | None = None,
                decision: str = "approve", **extra: Any) -> dict[str, Any]:
        spec = self.get(model)["spec"]
        body = {"apiVersion": r.API, "kind": "ModelApproval",
                "metadata": {"generateName": f"{model}-{user}-", "namespace": self.ns},
                "spec": {"modelDeployment": model, "version": version or spec["version"],
                         "imageDigest": digest or spec["image"].rsplit("@", 1)[1],
                         "decision": decision, **extra}}
        return self.kube_as(user).create(body)

    def counted(self, approval: dict[str, Any], expected: bool = True) -> dict[str, Any]:
        """Wait until the operator has evaluated ``approval`` (status written)."""
        name = approval["metadata"]["name"]

        def evaluated() -> dict[str, Any] | None:
            obj = self.admin.get(r.API, "ModelApproval", self.ns, name) or {}
            status = obj.get("status") or {}
            return obj if status.get("counted") is expected else None

        got = wait_until(evaluated, timeout=30, what=f"approval {name} counted={expected}")
        assert isinstance(got, dict)
        return got

    def change(self, user: str, model: str, **spec: Any) -> dict[str, Any]:
        return self.kube_as(user).patch(r.API, "ModelDeployment", self.ns, model, {"spec": spec})

    def refused(self, call: Callable[[], object]) -> KubeError:
        try:
            call()
        except KubeError as exc:
            return exc
        raise AssertionError("the request was allowed")

    def client(self, user: str) -> Client:
        """The plugin's client: JSON plus the API warnings of each response."""
        return Client(str(self.localenv.kubeconfig), user, self.ns)

    def with_warnings(self, user: str, method: str, path: str, body: Any,
                      content_type: str = "application/json") -> tuple[dict[str, Any], list[str]]:
        c = self.client(user)
        try:
            return c.call(method, path, body, content_type=content_type), c.warnings
        except Refused as exc:
            raise AssertionError(f"refused: {exc}") from None

    def rolled_out(self, name: str, version: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for the Deployment of ``name`` to run ``version`` (and the model to be Ready)."""
        def done() -> dict[str, Any] | None:
            md = self.get(name)
            dep = self.admin.get("apps/v1", "Deployment", self.ns, name)
            if not dep or not r.has_condition(md, "Ready", "True"):
                return None
            env = {e["name"]: e.get("value") for c in dep["spec"]["template"]["spec"]["containers"]
                   for e in c.get("env") or []}
            return dep if env.get("MODEL_VERSION") == version else None

        dep = wait_until(done, timeout=timeout, what=f"{name} rolled out at version {version}")
        assert isinstance(dep, dict)
        return dep


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def settle(seconds: float = 0.3) -> None:
    time.sleep(seconds)
