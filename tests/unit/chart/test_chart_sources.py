"""One source each: the chart's CRDs and admission policies are crds/, its RBAC is
mlsec.config.rbac, install.yaml is `helm template` of the chart; nothing grants `*` or lists
secrets cluster-wide."""

from __future__ import annotations

import copy

import pytest
import yaml
from chart_cases import CHART, REPO, Obj, of_kind, one, render, yaml_docs

from mlsec.api.crdgen import render_crds
from mlsec.config import chart, rbac
from mlsec.local import manifests

RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount")


def _crd_docs() -> list[Obj]:
    return [d for p in sorted((REPO / "crds").glob("*.yaml")) for d in yaml_docs(p)
            if d["kind"] == "CustomResourceDefinition"]


def _admission_docs() -> list[Obj]:
    return [d for p in sorted((REPO / "crds").glob("*.yaml")) for d in yaml_docs(p)
            if d["kind"] != "CustomResourceDefinition"]


def _without_keep(obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    assert obj["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    return obj


def test_nothing_drifted() -> None:
    """crds/, the chart's generated files and install.yaml are what `mlsec manifests` writes."""
    assert manifests.check(REPO) == [], "run `make manifests` and commit the result"


def test_chart_files_are_crds_dir_byte_for_byte() -> None:
    for rel, text in chart.split_generated(render_crds()).items():
        assert (CHART / rel).read_text() == text
        assert (REPO / "crds" / rel.rsplit("/", 1)[1]).read_text() == text


def test_rendered_crds_equal_crds_dir() -> None:
    crds = of_kind(render(), "CustomResourceDefinition")
    rendered = {d["metadata"]["name"]: _without_keep(d) for d in crds}
    expected = {d["metadata"]["name"]: d for d in _crd_docs()}
    assert expected, "crds/ has no CRD"
    assert rendered == expected


def test_crds_keep_and_enabled() -> None:
    loose = of_kind(render({"crds.keep": False}), "CustomResourceDefinition")
    assert loose and all("annotations" not in d["metadata"] for d in loose)
    assert of_kind(render({"crds.enabled": False}), "CustomResourceDefinition") == []


@pytest.mark.parametrize(("namespace", "sa"), [("mlsec-system", "mlsec-operator"), ("platform", "guard")])
def test_rendered_admission_policies_equal_crds_dir(namespace: str, sa: str) -> None:
    expected = _admission_docs()
    assert expected, "crds/ has no admission policies"
    rendered = [d for d in render({"serviceAccount.name": sa}, namespace=namespace)
                if d["apiVersion"].startswith("admissionregistration.k8s.io/")]
    identity = f"system:serviceaccount:{namespace}:{sa}"
    want = yaml.safe_load(yaml.safe_dump(expected).replace(chart.DEFAULT_IDENTITY, identity))
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731 - helm sorts by kind
    assert sorted(rendered, key=key) == sorted(want, key=key)
    if namespace != "mlsec-system":
        assert "mlsec-system" not in repr(rendered), "a reference to the default namespace was not templated"


def test_mutating_policies_only_where_served() -> None:
    served = ("--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")

    def mutating(kube: str, values: dict[str, object] | None = None,
                 extra: tuple[str, ...] = ()) -> list[Obj]:
        docs = render(values, kube_version=kube, extra=extra)
        return [d for d in docs if d["kind"].startswith("Mutating")]

    assert mutating("1.35.0") == []
    assert mutating("1.36.0")
    assert mutating("1.35.0", extra=served)
    assert mutating("1.37.0", {"admissionPolicies.mutating": "false"}) == []
    assert mutating("1.35.0", {"admissionPolicies.mutating": True})
    assert not any(d["apiVersion"].startswith("admissionregistration")
                   for d in render({"admissionPolicies.enabled": False}))


@pytest.mark.parametrize(("namespace", "release", "sa"),
                         [("mlsec-system", "mlsec-operator", "mlsec-operator"),
                          ("ops", "canary", "mlsec-operator")])
def test_rbac_is_config_rbac(namespace: str, release: str, sa: str) -> None:
    docs = render(namespace=namespace, release=release)
    fullname = release if "mlsec-operator" in release else f"{release}-mlsec-operator"
    expected = {d["kind"]: d for d in rbac.manifests(namespace=namespace, name=sa)}
    for kind in RBAC_KINDS:
        got = one(docs, kind)
        want = expected[kind]
        assert got["metadata"]["name"] == (sa if kind == "ServiceAccount" else fullname)
        assert got["metadata"].get("namespace") == want["metadata"].get("namespace")
        assert set(want["metadata"]["labels"].items()) <= set(got["metadata"]["labels"].items())
        for key in ("rules", "subjects"):
            assert got.get(key) == want.get(key), f"{kind}.{key}"
        if "roleRef" in want:
            assert got["roleRef"] == {**want["roleRef"], "name": fullname}
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa


def _rules(docs: list[Obj]) -> list[tuple[str, Obj]]:
    return [(d["kind"], r) for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d.get("rules", [])]


@pytest.mark.parametrize("source", ["chart", "install.yaml"])
def test_no_wildcards_and_no_cluster_wide_secret_reads(source: str) -> None:
    docs = render() if source == "chart" else yaml_docs(REPO / chart.INSTALL)
    rules = _rules(docs)
    assert rules
    for kind, rule in rules:
        for key in ("verbs", "resources", "apiGroups", "resourceNames"):
            assert "*" not in rule.get(key, []), f"{kind} grants * in {key}: {rule}"
        assert not any("*" in r for r in rule.get("resources", [])), rule
        if kind == "ClusterRole" and "secrets" in rule.get("resources", []):
            assert set(rule["verbs"]) <= {"get"}, f"cluster-wide secret access beyond get: {rule}"
    binds = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert all(b["roleRef"]["name"] != "cluster-admin" for b in binds)


def test_install_yaml_is_the_chart_rendered_with_install_values() -> None:
    text = (REPO / chart.INSTALL).read_text()
    assert text == manifests.render_install(CHART)
    docs = yaml_docs(REPO / chart.INSTALL)
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["name"] == chart.INSTALL_NAMESPACE
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # No private key in a file every user shares: cert-manager issues it in the cluster.
    assert of_kind(docs, "Secret") == []
    assert "PRIVATE KEY" not in text and "tls.key" not in text
    assert {d["kind"] for d in docs} >= {"CustomResourceDefinition", "Deployment", "ClusterRole",
                                         "ValidatingAdmissionPolicy", "MutatingAdmissionPolicy",
                                         "Certificate", "Issuer", "PodDisruptionBudget"}


def test_openreports_crds_only_when_asked() -> None:
    def reports(values: dict[str, object] | None = None) -> list[Obj]:
        return [d for d in of_kind(render(values), "CustomResourceDefinition")
                if d["spec"]["group"] == "openreports.io"]

    assert reports() == []
    installed = reports({"reports.installCRDs": True})
    assert sorted(d["spec"]["names"]["kind"] for d in installed) == ["ClusterReport", "Report"]
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in installed)
    expected = {d["metadata"]["name"]: d["spec"] for t in manifests.openreports_crds().values()
                for d in yaml.safe_load_all(t) if d}
    assert {d["metadata"]["name"]: d["spec"] for d in installed} == expected
