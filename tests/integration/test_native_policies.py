"""Native enforcement by the API server itself — with NO operator running.

The ValidatingAdmissionPolicies and MutatingAdmissionPolicies that `mlsec crds` writes beside the
CRDs (crds/mlsec.io_admission-policies.yaml, installed by `crds_installed`) hold the promotion gate,
the approver identity, the image rules and the operator's ownership of the ledger and its children.
The operator's part is played here by its ServiceAccount (a real token, with the generated RBAC)
writing the PromotionLedger the way the operator does.

RBAC is deliberately generous in these tests (Roles granted below), so that every denial asserted
here comes from an admission policy and names it.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from mlsec.api.admission import (
    CHILDREN_GUARD,
    DEPLOYMENT_STAMP,
    GATE,
    GATE_AUDIT,
    IMAGE_RULES,
    IMAGE_RULES_AUDIT,
    LEDGER_GUARD,
    SCALE_GUARD,
    STATUS_GUARD,
)
from mlsec.api.deployment import REQUESTED_BY
from mlsec.api.ledger import LEDGER_NAME, pack, pack_releases, unpack
from mlsec.clients.kube import Kube, KubeError
from mlsec.local import env as local

from . import resources as r
from .conftest import wait_authorized, wait_until

API = r.API
OPERATOR = "system:serviceaccount:mlsec-system:mlsec-operator"
MANAGED = {"app.kubernetes.io/managed-by": "mlsec-operator"}
RBAC = "rbac.authorization.k8s.io/v1"
Obj = dict[str, Any]


# --- helpers ----------------------------------------------------------------------------------


def _grant(kube: Kube, namespace: str, name: str, rules: list[Obj], *subjects: Obj) -> None:
    """A Role + RoleBinding (as admin), so RBAC is never what stops the people in these tests."""
    kube.apply({"apiVersion": RBAC, "kind": "Role",
                "metadata": {"name": name, "namespace": namespace}, "rules": rules})  # fmt: skip
    kube.apply({"apiVersion": RBAC, "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": list(subjects)})  # fmt: skip
    wait_authorized(kube, namespace, rules, list(subjects))


def _user(name: str) -> Obj:
    return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}


ALL = ["get", "list", "watch", "create", "update", "patch", "delete"]
PEOPLE = ("alice", "bob", "carol", "dave", "erin")


def _people_may_work(kube: Kube, namespace: str) -> None:
    _grant(kube, namespace, "mlsec-people", [
        {"apiGroups": ["mlsec.io"], "resources": ["modeldeployments", "modelapprovals"], "verbs": ALL},
        {"apiGroups": ["mlsec.io"], "resources": ["modeldeployments/status"], "verbs": ALL},
    ], *(_user(p) for p in PEOPLE))  # fmt: skip


def _digest_of(md: Obj) -> str:
    return str(md["spec"]["image"]).rsplit("@", 1)[1]


def _release(md: Obj, approvers: tuple[str, ...] = ("carol", "dave")) -> Obj:
    spec = md["spec"]
    return {"version": spec["version"], "digest": _digest_of(md), "owner": spec["owner"],
            "dataClassification": spec["dataClassification"], "approvers": list(approvers),
            "validUntil": "2099-01-01T00:00:00Z"}  # fmt: skip


def _ledger(namespace: str, *, releases: dict[str, list[Obj]] | None = None,
            enforcement: str = "enforce", blocked: str = "",
            registries: tuple[str, ...] = ("registry.hospital.com/",),
            require_digest: bool = True) -> Obj:  # fmt: skip
    return {
        "apiVersion": API, "kind": "PromotionLedger",
        "metadata": {"name": LEDGER_NAME, "namespace": namespace, "labels": MANAGED},
        "spec": {"policy": "default", "enforcement": enforcement,
                 "images": {"allowedRegistries": list(registries), "requireDigest": require_digest},
                 "blocked": blocked, "releases": pack_releases(releases or {})},
    }  # fmt: skip


def _promoted(md: Obj, **changes: Any) -> Obj:
    out = copy.deepcopy(md)
    out["spec"]["stage"] = "production"
    out["spec"].update(changes)
    return out


def _denied(call: Callable[[], object], policy: str) -> str:
    """Run ``call``; it must be refused by the admission policy ``policy``; returns the message."""
    with pytest.raises(KubeError) as err:
        call()
    message = err.value.message
    assert f"ValidatingAdmissionPolicy '{policy}'" in message, message
    return message


def _eventually(call: Callable[[], Obj], timeout: float = 10) -> Obj:
    """Retry ``call`` while the API server refuses it: a ledger the operator just wrote reaches
    the admission policies through an informer, a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KubeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


PROBE = "ledger-probe"


def _publish(operator: Kube, admin: Kube, ledger: Obj, timeout: float = 15) -> None:
    """Write ``ledger`` as the operator, and wait until the admission policies read it.

    The API server hands params to the policies through an informer, a moment after the write.
    The ledger carries one more approved release, of a ModelDeployment that does not exist, under
    a fresh version; a dry-run promotion of exactly that release by the admin is allowed (or refused
    with this ledger's own ``blocked`` text) only once this very ledger is in force.
    """
    ledger = copy.deepcopy(ledger)
    nonce = uuid.uuid4().hex[:12]
    namespace = ledger["metadata"]["namespace"]
    probe = r.model(namespace, PROBE, version=nonce, stage="production")
    spec = unpack(ledger["spec"])
    spec["releases"][PROBE] = [_release(probe, ("nobody",))]
    ledger["spec"] = pack(spec)
    operator.apply(ledger)
    blocked = ledger["spec"]["blocked"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.apply(probe, dry_run=True)
            if not blocked:
                return
        except KubeError as exc:
            if blocked and blocked in exc.message:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"the admission policies did not read the new ledger in {timeout}s")
        time.sleep(0.05)


PENDING = "needs 1 approval from compliance_reviewer (required for phi models); have 0"


def _pending(operator: Kube, md: Obj, text: str = PENDING) -> None:
    """What the operator writes in a model's status when its release is not approved (the gate's
    denial message reads it from there)."""
    # Own field manager: a running operator (the session's, reconciling this policy-less namespace)
    # applies its status under its manager without this field, which must not remove ours.
    operator.apply_status(API, "ModelDeployment", md["metadata"]["namespace"], md["metadata"]["name"],
                          {"promotionPending": text}, manager="mlsec-tests-pending")  # fmt: skip


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_kube(localenv: local.LocalEnv, crds_installed: None,
                  tmp_path_factory: pytest.TempPathFactory) -> Kube:  # fmt: skip
    """The operator's ServiceAccount (a real token, the generated RBAC) — not the operator."""
    path = local.operator_kubeconfig(localenv, tmp_path_factory.mktemp("native") / "op.kubeconfig")
    return Kube(kubernetes.config.new_client_from_config(config_file=str(path)),
                field_manager="mlsec-operator")  # fmt: skip


@pytest.fixture(scope="module")
def policies(localenv: local.LocalEnv, kube: Kube, kube_as: Callable[[str], Kube],
             operator_kube: Kube) -> Iterator[float]:  # fmt: skip
    """Wait until the API server enforces every policy (it loads them asynchronously after
    `kubectl apply`); yields how long that took. Probes are dry runs in a scratch namespace."""
    ns = f"t-probe-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(kube.api)
    core.create_namespace({"metadata": {"name": ns, "labels": {"mlsec.io/test": "true"}}})
    bare = f"t-probe-{uuid.uuid4().hex[:8]}"  # no ledger
    core.create_namespace({"metadata": {"name": bare, "labels": {"mlsec.io/test": "true"}}})
    _people_may_work(kube, ns)
    _grant(kube, ns, "bob-services", [{"apiGroups": [""], "resources": ["services"], "verbs": ALL}],
           _user("bob"))  # fmt: skip
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "probe", "namespace": ns, "labels": MANAGED},
           "spec": {"ports": [{"port": 80}]}}  # fmt: skip
    kube.apply(svc)
    started = time.monotonic()
    _eventually(lambda: operator_kube.apply(_ledger(ns)), timeout=30)  # RBAC takes a moment
    bob = kube_as("bob")

    def refused(call: Callable[[], object], policy: str) -> bool:
        try:
            call()
        except KubeError as exc:
            return f"'{policy}'" in exc.message
        return False

    probes: dict[str, Callable[[], bool]] = {
        GATE: lambda: refused(
            lambda: kube.apply(r.model(bare, stage="production"), dry_run=True), GATE),
        LEDGER_GUARD: lambda: refused(lambda: kube.apply(_ledger(ns), dry_run=True), LEDGER_GUARD),
        IMAGE_RULES: lambda: refused(
            lambda: kube.apply(r.model(ns, image="nginx"), dry_run=True), IMAGE_RULES),
        CHILDREN_GUARD: lambda: refused(lambda: bob.apply(svc, dry_run=True), CHILDREN_GUARD),
        "mlsec-approver-stamp": lambda: kube.apply(
            {"apiVersion": API, "kind": "ModelApproval",
             "metadata": {"name": "probe", "namespace": ns},
             "spec": {"modelDeployment": "m", "version": "1", "imageDigest": r.digest("p"),
                      "decision": "approve", "approvedBy": "nobody"}},
            dry_run=True)["spec"].get("approvedBy") == "admin",
        DEPLOYMENT_STAMP: lambda: _stamps(kube.apply(_forged(r.model(bare), "nobody"), dry_run=True))
        == ("staging", "admin"),
    }
    for name, probe in probes.items():
        wait_until(probe, timeout=30, interval=0.2, what=f"{name} in force")
    yield time.monotonic() - started
    core.delete_namespace(ns)
    core.delete_namespace(bare)


@pytest.fixture
def publish(operator_kube: Kube, kube: Kube) -> Callable[[Obj], None]:
    """Write a ledger as the operator and wait until the admission policies read it."""
    return lambda ledger: _publish(operator_kube, kube, ledger)


@pytest.fixture
def ns(kube: Kube, namespace: str, policies: float) -> str:
    _people_may_work(kube, namespace)
    return namespace


# --- the promotion gate -----------------------------------------------------------------------


def test_promotion_needs_an_approved_release_in_the_ledger(
    kube_as: Callable[[str], Kube], publish: Callable[[Obj], None], ns: str, operator_kube: Kube
) -> None:
    bob = kube_as("bob")
    md = r.model(ns)  # phi, owner alice
    publish(_ledger(ns))

    bob.apply(md)  # staging: nothing to approve
    bob.apply({**md, "spec": {**md["spec"], "replicas": 3}})
    _pending(operator_kube, md)
    message = _denied(lambda: bob.apply(_promoted(md)), GATE)
    assert f"mri-classifier version 3 (image digest {_digest_of(md)}) is not approved for " \
           f"production: {PENDING}" in message  # fmt: skip

    # The operator found the release approved by carol and dave; bob may promote it.
    publish(_ledger(ns, releases={"mri-classifier": [_release(md)]}))
    bob.apply(_promoted(md))
    assert bob.get(API, "ModelDeployment", ns, "mri-classifier")["spec"]["stage"] == "production"

    # Anything else that changes what runs in production is a new release: refused again.
    other = r.digest("a different build")
    message = _denied(lambda: bob.apply(_promoted(
        md, image=f"registry.hospital.com/ml/mri-classifier@{other}")), GATE)  # fmt: skip
    assert f"(image digest {other}) is not an approved release in the promotion ledger" in message
    _denied(lambda: bob.apply(_promoted(md, version="4")), GATE)
    _denied(lambda: bob.apply(_promoted(md, owner="bob")), GATE)
    _denied(lambda: bob.apply(_promoted(md, dataClassification="internal")), GATE)
    # ... while the approved release itself stays editable in production (replicas, resources).
    bob.apply(_promoted(md, replicas=4))


def test_an_approver_never_promotes_their_own_approval(
    kube_as: Callable[[str], Kube], publish: Callable[[Obj], None], ns: str
) -> None:
    md = r.model(ns)
    publish(_ledger(ns, releases={"mri-classifier": [_release(md, ("carol", "dave"))]}))
    kube_as("alice").apply(md)
    for approver in ("carol", "dave"):
        message = _denied(lambda a=approver: kube_as(a).apply(_promoted(md)), GATE)
        assert f"{approver} approved mri-classifier version 3" in message
        assert "another person must" in message
    kube_as("bob").apply(_promoted(md))


def test_a_blocked_namespace_refuses_even_approved_releases(
    kube_as: Callable[[str], Kube], publish: Callable[[Obj], None], ns: str
) -> None:
    md = r.model(ns)
    publish(_ledger(ns, releases={"mri-classifier": [_release(md)]},
                                blocked="Vault has no audit device"))  # fmt: skip
    kube_as("bob").apply(md)
    message = _denied(lambda: kube_as("bob").apply(_promoted(md)), GATE)
    assert "promotion to production is blocked in this namespace: Vault has no audit device" in message


def test_without_a_ledger_production_is_denied_and_staging_allowed(
    kube: Kube, kube_as: Callable[[str], Kube], ns: str
) -> None:
    """No MLSecurityPolicy, hence no ledger: fail closed for production, not for the rest."""
    bob = kube_as("bob")
    md = r.model(ns)
    bob.apply(md)
    bob.apply({**md, "spec": {**md["spec"], "replicas": 2}})
    _denied(lambda: bob.apply(_promoted(md)), GATE)
    _denied(lambda: bob.apply(r.model(ns, "direct", stage="production")), GATE)
    _denied(lambda: kube.apply(_promoted(md)), GATE)  # a cluster admin too
    # Image rules need a policy: without one, none apply natively (the reconcile refuses).
    bob.apply(r.model(ns, "unpinned", image="nginx:latest"))
    # The label the gate's binding selects on cannot be forged: it follows spec.stage.
    forged = r.model(ns, "forged")
    forged["metadata"]["labels"] = {"mlsec.io/stage": "development"}
    bob.apply(forged)
    assert bob.get(API, "ModelDeployment", ns, "forged")["metadata"]["labels"] == {
        "mlsec.io/stage": "staging"
    }


def test_audit_enforcement_warns_and_allows(
    localenv: local.LocalEnv, publish: Callable[[Obj], None], ns: str, operator_kube: Kube
) -> None:
    md = r.model(ns)
    publish(_ledger(ns, enforcement="audit"))

    def kubectl_apply(doc: Obj) -> str:
        proc = localenv.kubectl("apply", "--server-side", "-f", "-", user="bob",
                                input=yaml.safe_dump(doc))  # fmt: skip
        return proc.stderr

    assert "Warning" not in kubectl_apply(md)
    _pending(operator_kube, md)
    warning = kubectl_apply(_promoted(md))
    assert f"Warning: Validation failed for ValidatingAdmissionPolicy '{GATE_AUDIT}'" in warning
    assert f"enforcement is audit, so this is allowed, but: mri-classifier version 3 (image digest " \
           f"{_digest_of(md)}) is not approved for production: {PENDING}" in warning  # fmt: skip
    warning = kubectl_apply(r.model(ns, "unpinned", image="docker.io/library/nginx:1.27"))
    assert f"'{IMAGE_RULES_AUDIT}'" in warning
    assert "images.allowedRegistries: image docker.io/library/nginx:1.27" in warning
    assert "images.requireDigest: image docker.io/library/nginx:1.27" in warning
    assert localenv.kubectl("get", "mld", "-n", ns, "unpinned", "-o", "name").stdout.strip()


# --- the ledger -------------------------------------------------------------------------------


def test_only_the_operator_writes_the_ledger(
    localenv: local.LocalEnv, kube: Kube, kube_as: Callable[[str], Kube], operator_kube: Kube,
    ns: str, tmp_path: Path
) -> None:  # fmt: skip
    writers = [{"apiGroups": ["mlsec.io"], "resources": ["promotionledgers"], "verbs": ALL}]
    _grant(kube, ns, "ledger-writers", writers, *(_user(p) for p in ("alice", "bob", "carol")),
           {"kind": "ServiceAccount", "name": "ci", "namespace": ns})  # fmt: skip
    # A ServiceAccount with the `edit` ClusterRole in the namespace (plus the rights above).
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ci", "namespace": ns}})
    kube.apply({"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "ci-edit", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": ns}]})  # fmt: skip
    token = localenv.kubectl("create", "token", "ci", "-n", ns).stdout.strip()
    cfg = yaml.safe_load(localenv.kubeconfig.read_text())
    cfg["users"] = [{"name": "ci", "user": {"token": token}}]
    cfg["contexts"] = [{"name": "ci", "context": {"cluster": "mlsec-local", "user": "ci"}}]
    cfg["current-context"] = "ci"
    (tmp_path / "ci.kubeconfig").write_text(yaml.safe_dump(cfg))
    ci = Kube(kubernetes.config.new_client_from_config(config_file=str(tmp_path / "ci.kubeconfig")))

    md = r.model(ns)
    forged = _ledger(ns, releases={"mri-classifier": [_release(md, ("erin",))]})
    writers_by_name = {"alice": kube_as("alice"), "bob": kube_as("bob"), "carol": kube_as("carol"),
                       f"system:serviceaccount:{ns}:ci": ci, "admin": kube}  # fmt: skip
    for who, client in writers_by_name.items():  # nobody may create it ...
        message = _denied(lambda c=client: c.apply(forged), LEDGER_GUARD)
        assert f"{who} may not create it" in message

    _publish(operator_kube, kube, _ledger(ns))
    for who, client in writers_by_name.items():  # ... change it, or delete it
        message = _denied(lambda c=client: c.apply(forged), LEDGER_GUARD)
        assert f"{who} may not update it" in message
        message = _denied(lambda c=client: c.delete(API, "PromotionLedger", ns, LEDGER_NAME),
                          LEDGER_GUARD)  # fmt: skip
        assert f"{who} may not delete it" in message
    ledger = operator_kube.get(API, "PromotionLedger", ns, LEDGER_NAME)
    assert ledger is not None and "mri-classifier" not in unpack(ledger["spec"])["releases"]
    # the operator may, of course
    operator_kube.apply(_ledger(ns, releases={"mri-classifier": [_release(md)]}))
    assert operator_kube.delete(API, "PromotionLedger", ns, LEDGER_NAME)


def test_namespace_deletion_waits_for_the_models_then_takes_the_ledger(
    kube: Kube, kube_as: Callable[[str], Kube], operator_kube: Kube, policies: float
) -> None:
    """The ledger outlives the ModelDeployments of a namespace being deleted, so the operator can
    still finalize a production model (the gate's binding needs the ledger); then it goes too."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = kubernetes.client.CoreV1Api(kube.api)
    core.create_namespace({"metadata": {"name": name, "labels": {"mlsec.io/test": "true"}}})
    _people_may_work(kube, name)
    md = r.model(name)
    _publish(operator_kube, kube, _ledger(name, releases={"mri-classifier": [_release(md)]}))
    md["metadata"]["finalizers"] = ["mlsec.io/finalizer"]
    kube_as("bob").apply(_promoted(md))
    core.delete_namespace(name)
    time.sleep(2)
    assert operator_kube.get(API, "PromotionLedger", name, LEDGER_NAME) is not None
    operator_kube.patch(API, "ModelDeployment", name, "mri-classifier", {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, timeout=90, interval=0.5, what="namespace deleted")


# --- approvals --------------------------------------------------------------------------------


def test_the_approver_is_who_created_the_approval(kube_as: Callable[[str], Kube], ns: str) -> None:
    carol = kube_as("carol")
    md = r.model(ns)
    approval = {"apiVersion": API, "kind": "ModelApproval",
                "metadata": {"name": "mri-classifier-3-carol", "namespace": ns},
                "spec": {"modelDeployment": "mri-classifier", "version": "3",
                         "imageDigest": _digest_of(md), "decision": "approve",
                         "approvedBy": "dave", "approverGroups": ["compliance"]}}  # fmt: skip
    created = carol.create(approval)
    assert created["spec"]["approvedBy"] == "carol"
    assert created["spec"]["approverGroups"] == ["ml_leads", "system:authenticated"]
    with pytest.raises(KubeError) as err:  # immutable: not even the comment
        carol.patch(API, "ModelApproval", ns, approval["metadata"]["name"],
                    {"spec": {"approvedBy": "dave"}})  # fmt: skip
    assert "spec is immutable" in err.value.message
    with pytest.raises(KubeError) as err:
        carol.patch(API, "ModelApproval", ns, approval["metadata"]["name"], {"spec": {"comment": "x"}})
    assert "spec is immutable" in err.value.message
    stored = carol.get(API, "ModelApproval", ns, approval["metadata"]["name"])
    assert stored is not None and stored["spec"]["approvedBy"] == "carol"
    # Server-side apply, a second approval: same stamp.
    dave = kube_as("dave").apply({**approval, "metadata": {**approval["metadata"], "name": "by-dave"}})
    assert dave["spec"]["approvedBy"] == "dave" and dave["spec"]["approverGroups"][0] == "compliance"


def test_status_is_written_only_by_the_operator(
    kube_as: Callable[[str], Kube], operator_kube: Kube, ns: str
) -> None:
    md = r.model(ns)
    kube_as("bob").apply(md)
    fake = {"conditions": [{"type": "PromotionApproved", "status": "True", "reason": "Approved",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip
    for user in ("bob", "admin"):
        message = _denied(lambda u=user: kube_as(u).patch_status(
            API, "ModelDeployment", ns, "mri-classifier", fake), STATUS_GUARD)
        assert f"the status of ModelDeployment mri-classifier is written only by the operator " \
               f"({OPERATOR}); {user} may not change it" in message  # fmt: skip
    operator_kube.patch_status(API, "ModelDeployment", ns, "mri-classifier", fake)


# --- image rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "rule"),
    [
        ("registry.evil.io/ml/m@" + r.digest("x"), "images.allowedRegistries"),
        ("registry.hospital.com.evil.io/ml/m@" + r.digest("x"), "images.allowedRegistries"),
        ("nginx@" + r.digest("x"), "images.allowedRegistries"),  # docker.io/library/nginx
        ("registry.hospital.com/ml/m:3", "images.requireDigest"),
        ("registry.hospital.com/ml/m@sha256:abc", "images.requireDigest"),
    ],
    ids=["other-registry", "lookalike-host", "docker-hub-short-name", "tag-only", "short-digest"],
)
def test_image_rules(kube_as: Callable[[str], Kube], publish: Callable[[Obj], None], ns: str,
                     image: str, rule: str) -> None:  # fmt: skip
    publish(_ledger(ns))
    bob = kube_as("bob")
    message = _denied(lambda: bob.apply(r.model(ns, "m", image=image)), IMAGE_RULES)
    assert f"{rule}: image {image}" in message
    bob.apply(r.model(ns, "m"))  # registry.hospital.com/ml/…@sha256:…
    _denied(lambda: bob.apply(r.model(ns, "m", image=image)), IMAGE_RULES)


def test_image_rules_follow_the_policy_and_ratchet(
    kube_as: Callable[[str], Kube], publish: Callable[[Obj], None], ns: str
) -> None:
    bob = kube_as("bob")
    publish(_ledger(ns, registries=(), require_digest=False))
    bob.apply(r.model(ns, "m", image="docker.io/library/nginx:1.27"))
    publish(_ledger(ns))  # the policy became stricter
    # The existing model can still be changed (replicas), but not given another bad image.
    bob.apply(r.model(ns, "m", image="docker.io/library/nginx:1.27", replicas=2))
    _denied(lambda: bob.apply(r.model(ns, "m", image="docker.io/library/nginx:1.28")), IMAGE_RULES)


# --- operator-owned children ------------------------------------------------------------------


def test_only_the_operator_edits_its_children(
    localenv: local.LocalEnv, kube: Kube, kube_as: Callable[[str], Kube], operator_kube: Kube,
    publish: Callable[[Obj], None], ns: str
) -> None:  # fmt: skip
    _grant(kube, ns, "bob-apps", [
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ALL},
        {"apiGroups": [""], "resources": ["services"], "verbs": ALL},
    ], _user("bob"))  # fmt: skip
    publish(_ledger(ns))  # a namespace under a policy: the scale guard applies
    labels = {**MANAGED, "app.kubernetes.io/instance": "mri-classifier"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "mri-classifier", "namespace": ns, "labels": labels},
        "spec": {"replicas": 1,
                 "selector": {"matchLabels": {"app.kubernetes.io/instance": "mri-classifier"}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "model", "image": "registry.hospital.com/ml/m@"
                                                       + r.digest("m")}]}}},
    }  # fmt: skip
    operator_kube.apply(deployment)
    bob = kube_as("bob")
    # The guard decides, not RBAC: bob may edit an unlabelled Deployment.
    mine = copy.deepcopy(deployment)
    mine["metadata"] = {"name": "bobs", "namespace": ns}
    bob.apply(mine)
    bob.patch("apps/v1", "Deployment", ns, "bobs", {"spec": {"replicas": 2}})

    message = _denied(lambda: bob.patch("apps/v1", "Deployment", ns, "mri-classifier",
                                        {"spec": {"replicas": 5}}), CHILDREN_GUARD)  # fmt: skip
    assert "Deployment mri-classifier is managed by mlsec-operator" in message
    _denied(lambda: bob.patch("apps/v1", "Deployment", ns, "mri-classifier",
                              {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}}),
            CHILDREN_GUARD)  # fmt: skip
    scaled = localenv.kubectl("scale", "deployment", "mri-classifier", "-n", ns, "--replicas=5",
                              user="bob", check=False)  # fmt: skip
    assert scaled.returncode != 0 and f"'{SCALE_GUARD}'" in scaled.stderr, scaled.stderr
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "mri-classifier", "namespace": ns, "labels": labels},
           "spec": {"ports": [{"port": 8080}], "selector": {"app.kubernetes.io/instance": "mri-classifier"}}}
    operator_kube.apply(svc)  # fmt: skip
    _denied(lambda: bob.patch("v1", "Service", ns, "mri-classifier", {"spec": {"selector": {"x": "y"}}}),
            CHILDREN_GUARD)  # fmt: skip

    # The operator may; so may a cluster admin (documented break-glass); deleting is not blocked
    # (the operator restores what is deleted).
    operator_kube.patch("apps/v1", "Deployment", ns, "mri-classifier", {"spec": {"replicas": 2}})
    kube.patch("apps/v1", "Deployment", ns, "mri-classifier", {"spec": {"replicas": 3}})
    stored = kube.get("apps/v1", "Deployment", ns, "mri-classifier")
    assert stored is not None and stored["spec"]["replicas"] == 3
    assert bob.delete("v1", "Service", ns, "mri-classifier")


# --- the requester ----------------------------------------------------------------------------


def _forged(md: Obj, requester: str) -> Obj:
    md = copy.deepcopy(md)
    md["metadata"].setdefault("annotations", {})[REQUESTED_BY] = requester
    return md


def _requester(md: Obj) -> str | None:
    return (md["metadata"].get("annotations") or {}).get(REQUESTED_BY)


def _stamps(md: Obj) -> tuple[str | None, str | None]:
    return (md["metadata"].get("labels") or {}).get("mlsec.io/stage"), _requester(md)


def test_the_requester_is_who_last_changed_the_release(kube_as: Callable[[str], Kube], ns: str) -> None:
    """Stamped by the API server, with no operator and no webhook: whatever the client writes,
    mlsec.io/requested-by names whoever last changed stage, version, image, owner or data
    classification (the requester the reconcile loop's gate holds against the approvers)."""
    alice, bob = kube_as("alice"), kube_as("bob")
    md = r.model(ns, "who")
    assert _requester(alice.create(_forged(md, "carol"))) == "alice"
    other = bob.patch(API, "ModelDeployment", ns, "who", {"metadata": {
        "labels": {"team": "radiology"}, "annotations": {REQUESTED_BY: "dave"}}})  # fmt: skip
    assert _requester(other) == "alice"  # not a release change: the recorded requester stays
    erased = bob.patch(API, "ModelDeployment", ns, "who", {"metadata": {"annotations": {REQUESTED_BY: None}}})
    assert _requester(erased) == "alice"
    assert _requester(bob.patch(API, "ModelDeployment", ns, "who", {"spec": {"replicas": 2}})) == "alice"
    # Server-side apply by another manager, changing the version: bob requested this release.
    assert _requester(bob.apply(_forged(r.model(ns, "who", version="4"), "alice"))) == "bob"
    assert _requester(alice.patch(API, "ModelDeployment", ns, "who",
                                  {"spec": {"owner": "someone-else"}})) == "alice"  # fmt: skip
    # The stage label comes from the same policy: forged or dropped, it follows spec.stage.
    moved = bob.patch(API, "ModelDeployment", ns, "who", {
        "metadata": {"labels": {"mlsec.io/stage": "production"}}, "spec": {"stage": "development"}})
    assert _stamps(moved) == ("development", "bob")
    unlabelled = bob.request("PATCH", f"/apis/{API}/namespaces/{ns}/modeldeployments/who",
                             body=[{"op": "remove", "path": "/metadata/labels"}],
                             content_type="application/json-patch+json")
    assert _stamps(dict(unlabelled)) == ("development", "bob")


# --- without the mutating policies ------------------------------------------------------------


def test_without_the_mutating_policies_the_validating_ones_still_hold(
    localenv: local.LocalEnv, kube: Kube, kube_as: Callable[[str], Kube],
    publish: Callable[[Obj], None], ns: str, operator_kube: Kube
) -> None:  # fmt: skip
    """As if MutatingAdmissionPolicy were missing or unbound: a forged approver is refused (not
    overwritten), and a forged stage label dodges nothing where a ledger exists. Last in the
    module: it unbinds the mutating policies for a moment and puts them back."""
    md = r.model(ns)
    publish(_ledger(ns))
    kube_as("bob").apply(md)
    _pending(operator_kube, md)
    approval = {"apiVersion": API, "kind": "ModelApproval",
                "metadata": {"name": "forged", "namespace": ns},
                "spec": {"modelDeployment": "mri-classifier", "version": "3",
                         "imageDigest": _digest_of(md), "decision": "approve"}}  # fmt: skip
    bindings = "mutatingadmissionpolicybindings"
    saved = yaml.safe_load(localenv.kubectl("get", bindings, "-l", "app.kubernetes.io/part-of=mlsec-operator",
                                            "-o", "yaml").stdout)["items"]  # fmt: skip
    assert {b["metadata"]["name"] for b in saved} == {"mlsec-approver-stamp", DEPLOYMENT_STAMP}
    unstamped = r.model(ns, "unstamped")  # a model from before the requester stamp was bound
    localenv.kubectl("delete", bindings, "-l", "app.kubernetes.io/part-of=mlsec-operator")
    try:
        carol = kube_as("carol")
        forged = {**approval, "spec": {**approval["spec"], "approvedBy": "dave"}}
        wait_until(lambda: "mlsec-approval-stamp-check" in (
            _refusal(lambda: carol.apply(forged, dry_run=True)) or ""),
            timeout=30, what="the approver stamp unbound")  # fmt: skip
        message = _denied(lambda: carol.apply(forged), "mlsec-approval-stamp-check")
        assert "spec.approvedBy is stamped at admission with the authenticated user (carol)" in message
        honest = {**approval, "spec": {**approval["spec"], "approvedBy": "carol"}}
        assert carol.apply(honest)["spec"]["approvedBy"] == "carol"
        assert REQUESTED_BY not in (kube_as("alice").create(unstamped)["metadata"].get("annotations") or {})

        dodge = _promoted(md)
        dodge["metadata"]["labels"] = {"mlsec.io/stage": "staging"}
        message = _denied(lambda: kube_as("bob").apply(dodge), GATE)
        assert PENDING in message
    finally:
        for b in saved:
            b["metadata"] = {k: b["metadata"][k] for k in ("name", "labels")}
        localenv.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                         input=yaml.safe_dump_all(saved))  # fmt: skip

        def stamped() -> bool:
            probe = {**approval, "metadata": {**approval["metadata"], "name": "probe"},
                     "spec": {**approval["spec"], "approvedBy": "nobody"}}  # fmt: skip
            try:
                return kube.apply(probe, dry_run=True)["spec"]["approvedBy"] == "admin"
            except KubeError:  # refused by the stamp check until the stamp is back
                return False

        wait_until(stamped, timeout=30, what="the approver stamp bound again")
    # Bound again: a requester added to that model without a release change is taken off again.
    bob = kube_as("bob")
    wait_until(lambda: REQUESTED_BY not in (bob.apply(_forged(unstamped, "bob"), dry_run=True)["metadata"]
                                            .get("annotations") or {}),
               timeout=30, what="the requester stamp bound again")  # fmt: skip
    assert REQUESTED_BY not in (bob.apply(_forged(unstamped, "bob"))["metadata"].get("annotations") or {})


def _refusal(call: Callable[[], object]) -> str | None:
    try:
        call()
    except KubeError as exc:
        return exc.message
    return None
