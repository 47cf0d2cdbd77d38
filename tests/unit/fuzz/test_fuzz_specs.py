"""Fuzzing the API models and the builders with hypothesis-generated specs (issue 9).

- Valid specs of every kind validate; a ModelDeployment with a policy goes through every builder
  (children, compliance, Vault) without an exception, twice with equal results, and what comes out
  has names and labels the API server accepts.
- Invalid specs (one mutation of a valid one) raise pydantic's ValidationError — never anything
  else — and validation_messages names the broken field (``spec.secrets[0].path: ...``).
- Arbitrary JSON in place of a spec raises ValidationError or validates; every message names a
  field under ``spec``.

≈200 examples per test here (``make test``); a bounded long run of ≥ 10,000 per test:
``MLSEC_FUZZ_EXAMPLES=10000 .venv/bin/pytest -q tests/unit/fuzz`` (random seeds then).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from fuzz_strategies import (
    Mutation,
    approval_spec,
    dns_label,
    invalid_approval_spec,
    invalid_model_spec,
    invalid_policy_spec,
    junk_spec,
    model_spec,
    object_name,
    policy_spec,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from mlsec.api import (
    MLSecurityPolicy,
    MLSecurityPolicySpec,
    ModelApprovalSpec,
    ModelDeployment,
    ModelDeploymentSpec,
    validation_messages,
)
from mlsec.builders import compliance
from mlsec.builders import vault as vault_build
from mlsec.builders.children import CHILD_KINDS, desired_children
from mlsec.builders.naming import LABEL_INSTANCE, MANAGED_BY

# ≈200 examples per test in `make test` (fixed seed); a bounded long run: MLSEC_FUZZ_EXAMPLES=10000.
EXAMPLES = int(os.environ.get("MLSEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MLSEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
UID = "6f1c1a52-0b7e-4a57-9a41-3c1f5f2b9d10"


def _messages(model: type[BaseModel], spec: Any) -> list[str] | None:
    """None if ``spec`` validates, else the messages; any other exception fails the test."""
    try:
        model.model_validate(spec)
    except ValidationError as exc:
        lines = validation_messages(exc)
        assert lines, "a ValidationError without a message"
        return lines
    return None


def _assert_names_field(messages: list[str] | None, path: str) -> None:
    assert messages is not None, f"expected a validation error naming {path}"
    assert any(m.startswith(f"{path}:") or m.startswith(f"{path}.") or m.startswith(f"{path}[")
               for m in messages), f"no message names {path}: {messages}"
    for m in messages:
        where, sep, text = m.partition(": ")
        assert sep and where.startswith("spec") and text.strip(), f"message without field or text: {m!r}"


# --- valid specs: models and builders -----------------------------------------------------------


@FUZZ
@given(spec=model_spec(), pol=policy_spec(for_builders=True), name=object_name, namespace=dns_label)
def test_valid_specs_build_children_without_crash(spec: dict[str, Any], pol: dict[str, Any],
                                                  name: str, namespace: str) -> None:
    md = ModelDeployment.model_validate(
        {"metadata": {"name": name, "namespace": namespace, "uid": UID}, "spec": spec})
    policy = MLSecurityPolicy.model_validate({"metadata": {"name": "default", "namespace": namespace},
                                              "spec": pol})
    children = desired_children(md, policy)
    assert children == desired_children(md, policy), "builders are not deterministic"
    kinds = [(c["apiVersion"], c["kind"]) for c in children]
    assert kinds == [k for k in CHILD_KINDS if k in kinds], "apply order changed"
    assert ("apps/v1", "Deployment") in kinds and ("v1", "Service") in kinds
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == namespace
        if child["kind"] == "Service":  # a DNS-1035 label; every other kind: a DNS subdomain
            assert len(meta["name"]) <= 63 and DNS1035.match(meta["name"]), meta["name"]
        else:
            assert len(meta["name"]) <= 253 and DNS_SUBDOMAIN.match(meta["name"]), meta["name"]
        assert meta["ownerReferences"][0]["uid"] == UID
        for key, value in meta["labels"].items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
        assert meta["labels"]["app.kubernetes.io/managed-by"] == MANAGED_BY
        assert meta["labels"][LABEL_INSTANCE] == children[0]["metadata"]["labels"][LABEL_INSTANCE]
    deployment = next(c for c in children if c["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
    assert deployment["spec"]["replicas"] == spec.get("replicas", 1)
    compliance.violations(md, policy)
    if vault_build.needs_vault(md):
        vault_build.policy_hcl(md)
        vault_build.role_definition(md)
        vault_build.disallowed_paths(md, policy)
        vault_build.vault_annotations(md, policy)


@FUZZ
@given(spec=policy_spec())
def test_valid_policy_specs_validate(spec: dict[str, Any]) -> None:
    assert _messages(MLSecurityPolicySpec, spec) is None, spec


@FUZZ
@given(spec=approval_spec())
def test_valid_approval_specs_validate(spec: dict[str, Any]) -> None:
    assert _messages(ModelApprovalSpec, spec) is None, spec


# --- invalid specs: a message naming the field --------------------------------------------------


@FUZZ
@given(case=invalid_model_spec())
def test_invalid_model_spec_names_the_field(case: Mutation) -> None:
    path, spec = case
    _assert_names_field(_messages(ModelDeploymentSpec, spec), path)


@FUZZ
@given(case=invalid_policy_spec())
def test_invalid_policy_spec_names_the_field(case: Mutation) -> None:
    path, spec = case
    _assert_names_field(_messages(MLSecurityPolicySpec, spec), path)


@FUZZ
@given(case=invalid_approval_spec())
def test_invalid_approval_spec_names_the_field(case: Mutation) -> None:
    path, spec = case
    _assert_names_field(_messages(ModelApprovalSpec, spec), path)


# --- anything at all ----------------------------------------------------------------------------

FIELDS = {
    ModelDeploymentSpec: ["model", "version", "image", "stage", "dataClassification", "owner", "replicas",
                          "port", "resources", "secrets", "tls"],
    MLSecurityPolicySpec: ["enforcement", "ldap", "roleMappings", "promotion", "network", "vault", "images"],
    ModelApprovalSpec: ["modelDeployment", "version", "imageDigest", "stage", "decision", "comment",
                        "approvedBy", "approverGroups"],
}


@pytest.mark.parametrize("model", list(FIELDS), ids=lambda m: m.__name__)
@FUZZ
@given(data=st.data())
def test_arbitrary_input_never_crashes_validation(model: type[BaseModel], data: st.DataObject) -> None:
    spec = data.draw(junk_spec(FIELDS[model]))
    messages = _messages(model, spec)
    for m in messages or []:
        where, sep, text = m.partition(": ")
        assert sep and where.startswith("spec") and text.strip(), m


@FUZZ
@given(spec=model_spec(), pol=policy_spec(for_builders=True), body=st.dictionaries(
    st.sampled_from(["metadata", "spec", "status", "kind", "apiVersion"]),
    st.none() | st.integers() | st.text(max_size=5) | st.dictionaries(st.text(max_size=5), st.integers(),
                                                                      max_size=2), max_size=3))
def test_broken_envelopes_fail_cleanly_in_the_builders(spec: dict[str, Any], pol: dict[str, Any],
                                                        body: dict[str, Any]) -> None:
    """A body missing its name, namespace or uid is refused with ValueError, never a crash."""
    merged = {"spec": spec, **{k: v for k, v in body.items() if k != "spec"}}
    try:
        md = ModelDeployment.model_validate(merged)
    except ValidationError:
        return
    policy = MLSecurityPolicy.model_validate({"metadata": {"name": "p", "namespace": "ns"}, "spec": pol})
    try:
        desired_children(md, policy)
    except ValueError as exc:
        assert "metadata" in str(exc) or "name" in str(exc) or "uid" in str(exc)
