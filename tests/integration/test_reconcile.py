"""ModelDeployment reconcile against the real API server and the real Istio CRDs (issue 4)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mlsec.clients.kube import Kube, KubeError
from mlsec.local import env as local

from . import resources as r
from .conftest import OperatorProcess, wait_until
from .gate_env import native_bindings_suspended

KINDS = [
    ("v1", "ServiceAccount", "mri-classifier"),
    ("apps/v1", "Deployment", "mri-classifier"),
    ("v1", "Service", "mri-classifier"),
    ("security.istio.io/v1", "PeerAuthentication", "mri-classifier"),
    ("networking.istio.io/v1", "DestinationRule", "mri-classifier"),
    ("security.istio.io/v1", "AuthorizationPolicy", "mri-classifier"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter", "mri-classifier-ratelimit"),
]


def _ready(kube: Kube, namespace: str, name: str = "mri-classifier") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(r.API, "ModelDeployment", namespace, name)
        return obj if r.has_condition(obj, "Ready", "True") else None

    out = wait_until(check, timeout=30, what=f"{name} Ready=True")
    assert isinstance(out, dict)
    return out


def _setup(kube: Kube, namespace: str, **policy_changes: Any) -> dict[str, Any]:
    kube.create(r.policy(namespace, **policy_changes))
    kube.create(r.model(namespace))
    return _ready(kube, namespace)


def test_children_have_exact_security_settings(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    md = _setup(kube, namespace)
    uid = md["metadata"]["uid"]
    children = {kind: kube.get(api, kind, namespace, name) for api, kind, name in KINDS}
    for kind, obj in children.items():
        assert obj is not None, f"{kind} missing"
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": r.API, "kind": "ModelDeployment", "name": "mri-classifier",
                         "uid": uid, "controller": True, "blockOwnerDeletion": True}], kind
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlsec-operator"
    assert md["status"]["children"]["EnvoyFilter"] == "mri-classifier-ratelimit"

    pod = children["Deployment"]["spec"]["template"]  # type: ignore[index]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "true"
    labels = pod["metadata"]["labels"]
    assert labels["mlsec.io/stage"] == "staging" and labels["mlsec.io/data-classification"] == "phi"
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["spec"]["containers"]
    csc = container["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] == "4Gi"
    assert children["ServiceAccount"]["automountServiceAccountToken"] is False  # type: ignore[index]

    assert children["PeerAuthentication"]["spec"]["mtls"] == {"mode": "STRICT"}  # type: ignore[index]
    tls = children["DestinationRule"]["spec"]["trafficPolicy"]["tls"]  # type: ignore[index]
    assert tls == {"mode": "ISTIO_MUTUAL"}
    authz = children["AuthorizationPolicy"]["spec"]  # type: ignore[index]
    assert authz["action"] == "ALLOW"
    principals = authz["rules"][0]["from"][0]["source"]["principals"]
    assert principals == r.policy(namespace)["spec"]["network"]["allowedPrincipals"]
    bucket = _token_bucket(children["EnvoyFilter"])
    rate = r.policy(namespace)["spec"]["network"]["rateLimit"]
    assert bucket["max_tokens"] == rate["burst"] and bucket["tokens_per_fill"] == rate["requestsPerSecond"]


def _token_bucket(envoy_filter: dict[str, Any] | None) -> dict[str, Any]:
    value = envoy_filter["spec"]["configPatches"][0]["patch"]["value"]  # type: ignore[index]
    return dict(value["typed_config"]["token_bucket"])


def test_hand_edits_are_reverted(operator: OperatorProcess, kube: Kube, namespace: str,
                                 localenv: local.LocalEnv) -> None:
    _setup(kube, namespace)
    localenv.kubectl("scale", "deployment/mri-classifier", "-n", namespace, "--replicas=7")
    started = time.monotonic()
    def replicas() -> int:
        return int(kube.get("apps/v1", "Deployment", namespace, "mri-classifier")["spec"]["replicas"])  # type: ignore[index]

    wait_until(lambda: replicas() == 2, timeout=10, what="replicas restored to 2")
    kube.delete("security.istio.io/v1", "AuthorizationPolicy", namespace, "mri-classifier")
    wait_until(lambda: kube.get("security.istio.io/v1", "AuthorizationPolicy", namespace, "mri-classifier"),
               timeout=10, what="AuthorizationPolicy re-created")
    assert time.monotonic() - started < 20


def test_rate_limit_change_updates_every_envoy_filter(operator: OperatorProcess, kube: Kube,
                                                      namespace: str) -> None:
    _setup(kube, namespace)
    kube.create(r.model(namespace, "ecg-detector"))
    _ready(kube, namespace, "ecg-detector")
    kube.patch(r.API, "MLSecurityPolicy", namespace, "default",
               {"spec": {"network": {"rateLimit": {"requestsPerSecond": 7, "burst": 9}}}})

    def updated() -> bool:
        buckets = [_token_bucket(kube.get("networking.istio.io/v1alpha3", "EnvoyFilter", namespace,
                                          f"{m}-ratelimit")) for m in ("mri-classifier", "ecg-detector")]
        return all(b["tokens_per_fill"] == 7 and b["max_tokens"] == 9 for b in buckets)

    wait_until(updated, timeout=15, what="both EnvoyFilters carry the new rate limit")


def test_delete_leaves_no_child(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    _setup(kube, namespace)
    kube.delete(r.API, "ModelDeployment", namespace, "mri-classifier")
    wait_until(lambda: all(kube.get(api, kind, namespace, name) is None for api, kind, name in KINDS),
               timeout=45, what="garbage collector removed every child")


@pytest.mark.parametrize(("image", "rule"), [
    ("registry.hospital.com/ml/mri-classifier:latest", "images.requireDigest"),
    (f"docker.io/evil/mri@{r.digest('x')}", "images.allowedRegistries"),
])
def test_bad_image_is_refused_and_never_rolled_out_in_enforce_mode(
    operator: OperatorProcess, kube: Kube, namespace: str, localenv: local.LocalEnv, image: str, rule: str,
) -> None:
    before = _setup(kube, namespace)
    good_image = before["spec"]["image"]
    wait_until(lambda: kube.get(r.API, "PromotionLedger", namespace, "promotion-ledger"),
               timeout=15, what="the namespace's ledger (the native image rules' parameters)")
    change = {"spec": {"image": image}}

    # First layer: the API server itself refuses the image (ValidatingAdmissionPolicy). Its
    # parameters (the ledger) reach the API server's policy cache a moment after they are written.
    def refusal() -> str | None:
        try:
            kube.patch(r.API, "ModelDeployment", namespace, "mri-classifier", change)
        except KubeError as exc:
            return exc.message
        kube.patch(r.API, "ModelDeployment", namespace, "mri-classifier", {"spec": {"image": good_image}})
        return None

    assert rule in str(wait_until(refusal, timeout=20, interval=1, what="the native image rules"))

    # Last layer: with the native policies bypassed, the reconcile still rolls nothing out.
    with native_bindings_suspended(localenv):
        wait_until(lambda: _patched(kube, namespace, change), timeout=20,
                   what="the write accepted once the native bindings are gone")

        def blocked() -> dict[str, Any] | None:
            obj = kube.get(r.API, "ModelDeployment", namespace, "mri-classifier")
            return obj if r.has_condition(obj, "PolicyCompliant", "False", "PolicyViolation") else None

        obj = wait_until(blocked, timeout=15, what="PolicyCompliant=False")
        message = r.condition(obj, "PolicyCompliant")["message"]  # type: ignore[arg-type,index]
        assert rule in message
        assert r.condition(obj, "Ready")["reason"] == "RolloutBlocked"  # type: ignore[arg-type,index]
        time.sleep(1)
        live = kube.get("apps/v1", "Deployment", namespace, "mri-classifier")
        assert live["spec"]["template"]["spec"]["containers"][0]["image"] == good_image  # type: ignore[index]


def _patched(kube: Kube, namespace: str, change: dict[str, Any]) -> bool:
    try:
        kube.patch(r.API, "ModelDeployment", namespace, "mri-classifier", change)
    except KubeError:
        return False
    return True


def test_bad_image_is_rolled_out_and_reported_in_audit_mode(operator: OperatorProcess, kube: Kube,
                                                            namespace: str) -> None:
    _setup(kube, namespace, enforcement="audit")
    tag = "registry.hospital.com/ml/mri-classifier:latest"
    kube.patch(r.API, "ModelDeployment", namespace, "mri-classifier", {"spec": {"image": tag}})

    def rolled_out() -> bool:
        live = kube.get("apps/v1", "Deployment", namespace, "mri-classifier")
        return bool(live and live["spec"]["template"]["spec"]["containers"][0]["image"] == tag)

    wait_until(rolled_out, timeout=15, what="the tagged image rolled out in audit mode")

    def reported() -> dict[str, Any] | None:
        obj = kube.get(r.API, "ModelDeployment", namespace, "mri-classifier")
        return obj if r.has_condition(obj, "PolicyCompliant", "False", "PolicyViolation") else None

    obj = wait_until(reported, timeout=10, what="PolicyCompliant=False in audit mode")
    assert "images.requireDigest" in r.condition(obj, "PolicyCompliant")["message"]  # type: ignore[arg-type,index]


def test_no_policy_fails_closed_then_reconciles(operator: OperatorProcess, kube: Kube,
                                                namespace: str) -> None:
    kube.create(r.model(namespace))

    def refused() -> dict[str, Any] | None:
        obj = kube.get(r.API, "ModelDeployment", namespace, "mri-classifier")
        return obj if r.has_condition(obj, "Ready", "False", "NoPolicy") else None

    obj = wait_until(refused, timeout=15, what="Ready=False NoPolicy")
    assert "no MLSecurityPolicy" in r.condition(obj, "Ready")["message"]  # type: ignore[arg-type,index]
    assert kube.get("apps/v1", "Deployment", namespace, "mri-classifier") is None
    kube.create(r.policy(namespace))
    _ready(kube, namespace)
    assert kube.get("apps/v1", "Deployment", namespace, "mri-classifier") is not None


def _operator_writes(localenv: local.LocalEnv, namespace: str, since: float) -> list[dict[str, Any]]:
    out = []
    for line in localenv.audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        agent = entry.get("userAgent", "")
        if ref.get("namespace") != namespace or not agent.startswith(("mlsec-operator", "kopf")):
            continue
        stamp = entry.get("requestReceivedTimestamp", "")
        if time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone >= since:
            out.append(entry)
    return out


def test_idle_operator_writes_nothing(operator: OperatorProcess, kube: Kube, namespace: str,
                                      localenv: local.LocalEnv) -> None:
    kube.create(r.policy(namespace))
    names = [f"model-{i:02d}" for i in range(50)]
    for name in names:
        kube.create(r.model(namespace, name))
    for name in names:
        _ready(kube, namespace, name)
    time.sleep(3)  # let the echoes of our own writes pass
    since = time.time() + 1
    time.sleep(120)
    writes = _operator_writes(localenv, namespace, since)
    assert writes == [], [f"{w['verb']} {w['requestURI']}" for w in writes[:10]]
