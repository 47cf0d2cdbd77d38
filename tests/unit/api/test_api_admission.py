"""The generated admission policies and the PromotionLedger: names, bindings, identities, CEL
wiring, and agreement with the code that writes the ledger and builds the children.

What the expressions decide is tested against the real API server in
tests/integration/test_native_policies.py; here, the shape and the contracts with other modules.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from api_cases import APPROVAL, DEPLOYMENT, POLICY, load_sample
from pydantic import ValidationError

from mlsec.api import LEDGER, RESOURCES, MLSecurityPolicy, ModelDeployment, PromotionLedgerSpec
from mlsec.api import admission as adm
from mlsec.api.approval import MAX_APPROVER_GROUPS, ModelApprovalSpec
from mlsec.api.crdgen import HEADER, crd, render_admission, render_crds
from mlsec.api.deployment import REQUESTED_BY
from mlsec.api.ledger import (
    LEDGER_NAME,
    MAX_MESSAGE,
    MAX_PACKED,
    pack,
    unpack_releases,
)
from mlsec.builders.children import CHILD_KINDS
from mlsec.builders.naming import LABEL_STAGE, selector_labels
from mlsec.builders.rbac import SELECTOR as RBAC_SELECTOR
from mlsec.gate import review
from mlsec.gate.adapt import approval_of, ledger_spec

SA = "system:serviceaccount:mlsec-system:mlsec-operator"
DIGEST = "sha256:" + "c" * 64
Obj = dict[str, Any]


def _objects(**identity: str) -> list[Obj]:
    return adm.admission_objects(**identity)


def _by(kind: str, objs: list[Obj] | None = None) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in (objs or _objects()) if o["kind"] == kind}


def _vaps() -> dict[str, Obj]:
    return _by("ValidatingAdmissionPolicy")


def _bindings() -> dict[str, Obj]:
    return _by("ValidatingAdmissionPolicyBinding")


def _expressions(obj: Obj) -> list[str]:
    spec = obj["spec"]
    found = [v["expression"] for v in spec.get("validations", [])]
    found += [v["messageExpression"] for v in spec.get("validations", []) if "messageExpression" in v]
    found += [v["expression"] for v in spec.get("variables", [])]
    found += [m["expression"] for m in spec.get("matchConditions", [])]
    for m in spec.get("mutations", []):
        found.append((m.get("jsonPatch") or m.get("applyConfiguration"))["expression"])
    return found


# --- the objects ------------------------------------------------------------------------------


def test_every_policy_has_its_binding() -> None:
    objs = _objects()
    assert {o["apiVersion"] for o in objs} == {"admissionregistration.k8s.io/v1"}
    vaps, maps = _vaps(), _by("MutatingAdmissionPolicy")
    assert set(vaps) == {
        adm.GATE,
        adm.GATE_AUDIT,
        adm.IMAGE_RULES,
        adm.IMAGE_RULES_AUDIT,
        adm.LEDGER_GUARD,
        adm.STAMP_CHECK,
        adm.CHILDREN_GUARD,
        adm.SCALE_GUARD,
        adm.STATUS_GUARD,
    }
    assert set(maps) == {adm.APPROVER_STAMP, adm.DEPLOYMENT_STAMP}
    assert {n: b["spec"]["policyName"] for n, b in _bindings().items()} == {
        **{n: n for n in vaps},
        adm.GATE_NO_LEDGER: adm.GATE,
    }
    map_bindings = _by("MutatingAdmissionPolicyBinding")
    assert {n: b["spec"]["policyName"] for n, b in map_bindings.items()} == {n: n for n in maps}
    for o in objs:
        assert o["metadata"]["labels"] == {"app.kubernetes.io/part-of": "mlsec-operator"}
        if o["kind"].endswith("Policy"):
            # fail closed on our API group; fail open where another group is matched by a policy
            # that needs our CRD (the scale guard: never block the cluster's other Deployments)
            expected = "Ignore" if o["metadata"]["name"] == adm.SCALE_GUARD else "Fail"
            assert o["spec"]["failurePolicy"] == expected, o["metadata"]["name"]
    # Mutations are declared before the validations that rely on them (readability only: the
    # API server always runs every mutating policy first).
    kinds = [o["kind"] for o in objs]
    assert kinds.index("MutatingAdmissionPolicy") < kinds.index("ValidatingAdmissionPolicy")


def test_rendered_beside_the_crds() -> None:
    files = render_crds()
    text = files[adm.ADMISSION_FILENAME]
    assert text == render_admission() and text.startswith(HEADER)
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs == _objects()
    # `kubectl apply -f crds/` reads files in name order: the policies may come first, the API
    # server resolves their paramKind once the CRDs are established (checked in integration).
    assert all(
        yaml.safe_load(t)["kind"] == "CustomResourceDefinition"
        for n, t in files.items()
        if n != adm.ADMISSION_FILENAME
    )


def test_operator_identity_is_a_parameter() -> None:
    default = "\n".join(e for o in _objects() for e in _expressions(o))
    assert SA in default
    other = _objects(namespace="platform", name="mlsec")
    text = "\n".join(e for o in other for e in _expressions(o))
    assert "system:serviceaccount:platform:mlsec" in text
    assert SA not in text
    assert render_crds("platform", "mlsec")[adm.ADMISSION_FILENAME].count(
        '"system:serviceaccount:platform:mlsec"'
    ) == render_admission().count(f'"{SA}"')


def test_cel_literals_are_balanced() -> None:
    for obj in _objects():
        for expr in _expressions(obj):
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("[") == expr.count("]"), expr
            assert expr.count("{") == expr.count("}"), expr
            assert expr.count("'") % 2 == 0, expr


# --- the promotion gate -----------------------------------------------------------------------


def test_gate_reads_the_namespace_ledger_and_fails_closed_on_production() -> None:
    gate = _vaps()[adm.GATE]
    assert gate["spec"]["paramKind"] == {"apiVersion": "mlsec.io/v1alpha1", "kind": "PromotionLedger"}
    [rule] = gate["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["modeldeployments"]  # not status: reports never promote
    assert rule["operations"] == ["CREATE", "UPDATE"]
    # wherever there is a ledger, whatever the labels
    binding = _bindings()[adm.GATE]["spec"]
    assert binding["paramRef"] == {"name": LEDGER_NAME, "parameterNotFoundAction": "Allow"}
    assert binding["validationActions"] == ["Deny"]
    assert "matchResources" not in binding
    # params are resolved before matchConditions: Deny-when-missing only for production objects
    no_ledger = _bindings()[adm.GATE_NO_LEDGER]["spec"]
    assert no_ledger["policyName"] == adm.GATE
    assert no_ledger["paramRef"] == {"name": LEDGER_NAME, "parameterNotFoundAction": "Deny"}
    assert no_ledger["validationActions"] == ["Deny"]
    assert no_ledger["matchResources"] == {
        "objectSelector": {"matchLabels": {"mlsec.io/stage": "production"}}
    }
    audit = _bindings()[adm.GATE_AUDIT]
    assert audit["spec"]["paramRef"]["parameterNotFoundAction"] == "Allow"
    assert audit["spec"]["validationActions"] == ["Warn", "Audit"]


def test_gate_checks_the_whole_release_and_the_requester() -> None:
    variables = {v["name"]: v["expression"] for v in _vaps()[adm.GATE]["spec"]["variables"]}
    key = variables["key"]
    fields = ["variables.name", "object.spec.version", "variables.digest", "object.spec.owner",
              "object.spec.dataClassification"]
    # every field of the release, in the ledger's order, each closed by a tab
    assert key == "'\\n' + " + " + '\\t' + ".join(fields) + " + '\\t'"
    assert variables["releases"] == "params.spec.?releases.orValue('')"
    assert variables["at"] == "variables.releases.indexOf(variables.key)"
    assert "variables.approvers.contains('\\t' + request.userInfo.username + '\\t')" in variables["byOthers"]
    assert variables["allowed"] == "!variables.blocked && variables.byOthers"
    conditions = dict(
        (m["name"], m["expression"]) for m in _vaps()[adm.GATE]["spec"]["matchConditions"]
    )
    assert conditions["production"] == "object.spec.stage == 'production'"
    for field in ("stage", "version", "image", "owner", "dataClassification"):
        assert f"oldObject.spec.{field} !=" in conditions["release-changes"]


def test_enforce_and_audit_flavours_share_the_decision() -> None:
    enforce, audit = _vaps()[adm.GATE]["spec"], _vaps()[adm.GATE_AUDIT]["spec"]
    assert enforce["variables"] == audit["variables"]
    assert enforce["matchConditions"] == audit["matchConditions"]
    assert enforce["validations"][0]["expression"] == "variables.audit || variables.allowed"
    assert audit["validations"][0]["expression"] == "!variables.audit || variables.allowed"
    rules, rules_audit = _vaps()[adm.IMAGE_RULES]["spec"], _vaps()[adm.IMAGE_RULES_AUDIT]["spec"]
    assert rules["variables"] == rules_audit["variables"]
    for v, va in zip(rules["validations"], rules_audit["validations"], strict=True):
        assert v["expression"].startswith("variables.audit || ")
        assert va["expression"].startswith("!variables.audit || ")
        assert v["expression"].removeprefix("variables.audit || ") == va["expression"].removeprefix(
            "!variables.audit || "
        )


def test_gate_message_comes_from_the_ledger_and_the_operators_status() -> None:
    variables = {v["name"]: v["expression"] for v in _vaps()[adm.GATE]["spec"]["variables"]}
    assert "params.spec.blocked" in variables["message"]
    assert "variables.pending" in variables["message"]
    assert "oldObject.?status.?promotionPending.orValue('')" in variables["pending"]
    assert "params.spec.pending" not in json.dumps(_vaps())  # kept out of the params: cost


def test_image_rules_allow_namespaces_without_a_policy() -> None:
    binding = _bindings()[adm.IMAGE_RULES]
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Allow"
    messages = [v["messageExpression"] for v in _vaps()[adm.IMAGE_RULES]["spec"]["validations"]]
    assert "images.allowedRegistries: " in messages[0]
    assert "images.requireDigest: " in messages[1]


# --- stamps and guards ------------------------------------------------------------------------


def test_approver_stamp_overwrites_on_create_only() -> None:
    stamp = _by("MutatingAdmissionPolicy")[adm.APPROVER_STAMP]["spec"]
    [rule] = stamp["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["modelapprovals"], ["CREATE"])
    assert stamp["reinvocationPolicy"] == "Never"
    [mutation] = stamp["mutations"]
    assert mutation["patchType"] == "JSONPatch"
    patch = mutation["jsonPatch"]["expression"]
    assert "path: '/spec/approvedBy', value: request.userInfo.username" in patch
    assert f"path: '/spec/approverGroups', value: {adm.STAMPED_GROUPS}" in patch
    check = _vaps()[adm.STAMP_CHECK]["spec"]
    assert check["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"]
    assert any(adm.STAMPED_GROUPS in v["expression"] for v in check["validations"])


def test_stamped_groups_fit_the_crd() -> None:
    schema = crd(RESOURCES[2])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    groups = schema["properties"]["spec"]["properties"]["approverGroups"]
    assert groups["maxItems"] == MAX_APPROVER_GROUPS
    assert f"slice(0, {MAX_APPROVER_GROUPS})" in adm.STAMPED_GROUPS
    # the sample approval (no stamp) and a stamped one both validate; the spec stays immutable
    spec = load_sample(APPROVAL)["spec"]
    ModelApprovalSpec.model_validate(spec)
    ModelApprovalSpec.model_validate({**spec, "approvedBy": "carol", "approverGroups": ["a"]})
    with pytest.raises(ValidationError):
        ModelApprovalSpec.model_validate({**spec, "approverGroups": ["x"] * 129})


def test_the_deployment_stamp_labels_the_stage_and_follows_the_release_fields() -> None:
    """The stage label is the children's; the requester changes on the same fields as in
    mlsec.gate.review.requester_after (what the webhook stamps). Its behaviour is tested against
    the API server in tests/integration/test_native_policies.py."""
    assert adm.STAGE_LABEL_KEY == LABEL_STAGE
    stamp = _by("MutatingAdmissionPolicy")[adm.DEPLOYMENT_STAMP]["spec"]
    [rule] = stamp["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["modeldeployments"], ["CREATE", "UPDATE"])
    changed = next(v["expression"] for v in stamp["variables"] if v["name"] == "changed")
    for field in review.RELEASE_FIELDS:
        assert f"oldObject.spec.{field} != object.spec.{field}" in changed
    assert changed.count("!=") == len(review.RELEASE_FIELDS)
    [mutation] = stamp["mutations"]
    patch = mutation["jsonPatch"]["expression"]
    assert '"/metadata/labels/mlsec.io~1stage", value: object.spec.stage' in patch
    assert '"/metadata/annotations/mlsec.io~1requested-by"' in patch
    assert "/metadata/annotations/" + REQUESTED_BY.replace("/", "~1") == adm.REQUESTED_BY_PATH


def test_ledger_guard_trusts_only_the_operator() -> None:
    guard = _vaps()[adm.LEDGER_GUARD]["spec"]
    assert "paramKind" not in guard
    [rule] = guard["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["promotionledgers"]
    assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]
    [validation] = guard["validations"]
    assert f'request.userInfo.username == "{SA}"' in validation["expression"]
    assert "system:masters" not in validation["expression"]  # not even a cluster admin
    assert "object.spec == oldObject.spec" in validation["expression"]
    assert "NamespaceContentRemaining" in validation["expression"]
    assert "modeldeployments.mlsec.io" in validation["expression"]
    assert _bindings()[adm.LEDGER_GUARD]["spec"] == {
        "policyName": adm.LEDGER_GUARD,
        "validationActions": ["Deny"],
    }


def test_children_guard_covers_every_child_kind() -> None:
    guard = _vaps()[adm.CHILDREN_GUARD]["spec"]
    assert guard["matchConstraints"]["objectSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "mlsec-operator"}
    }
    covered = {
        (g, r)
        for rule in guard["matchConstraints"]["resourceRules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for rule in guard["matchConstraints"]["resourceRules"]:
        assert rule["operations"] == ["UPDATE"]  # deletes are restored by the operator
    plural = {
        "ServiceAccount": "serviceaccounts",
        "Service": "services",
        "Deployment": "deployments",
        "PeerAuthentication": "peerauthentications",
        "AuthorizationPolicy": "authorizationpolicies",
        "DestinationRule": "destinationrules",
        "EnvoyFilter": "envoyfilters",
    }
    for api_version, kind in CHILD_KINDS:
        group = api_version.rpartition("/")[0]
        assert (group, plural[kind]) in covered, kind
    assert ("rbac.authorization.k8s.io", "roles") in covered
    assert ("rbac.authorization.k8s.io", "rolebindings") in covered
    assert "app.kubernetes.io/managed-by=mlsec-operator" in RBAC_SELECTOR
    expr = guard["validations"][0]["expression"]
    assert SA in expr and "system:masters" in expr and "system:serviceaccount:kube-system:" in expr


def test_scale_guard_recognises_the_model_deployments_selector() -> None:
    md = ModelDeployment.model_validate(load_sample(DEPLOYMENT))
    assert selector_labels(md) == {adm.INSTANCE_LABEL: md.metadata.name}
    guard = _vaps()[adm.SCALE_GUARD]["spec"]
    [rule] = guard["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["deployments/scale"]
    [condition] = guard["matchConditions"]
    assert condition["expression"] == (
        "oldObject.status.?selector.orValue('') == \"app.kubernetes.io/instance=\" + request.name"
    )
    assert _bindings()[adm.SCALE_GUARD]["spec"]["paramRef"]["parameterNotFoundAction"] == "Allow"


def test_status_guard_covers_the_status_of_our_kinds() -> None:
    spec = _vaps()[adm.STATUS_GUARD]["spec"]
    assert spec["validations"][0]["expression"] == f'request.userInfo.username == "{SA}"'
    rules = spec["matchConstraints"]["resourceRules"]
    assert sorted(r["resources"][0] for r in rules) == [
        "mlsecuritypolicies/status",
        "modelapprovals/status",
        "modeldeployments/status",
    ]


# --- the ledger -------------------------------------------------------------------------------


def test_ledger_crd_is_bounded_and_has_no_status() -> None:
    doc = crd(LEDGER)
    assert doc["metadata"]["name"] == "promotionledgers.mlsec.io"
    assert doc["spec"]["names"]["shortNames"] == ["mlledger"]
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    # packed strings, not maps: the API server's per-request cost grows with the entries
    assert props["releases"]["type"] == "string" and props["releases"]["maxLength"] == MAX_PACKED
    assert "pending" not in props
    assert props["blocked"]["maxLength"] == MAX_MESSAGE
    assert props["enforcement"]["enum"] == ["enforce", "audit"]
    assert "status" not in doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]


def test_what_the_operator_writes_is_a_valid_ledger() -> None:
    """The operator's ledger writer (mlsec.gate.adapt.ledger_spec) against this schema."""
    policy = MLSecurityPolicy.model_validate(load_sample(POLICY))
    md = load_sample(DEPLOYMENT)
    spec = md["spec"]
    digest = spec["image"].rsplit("@", 1)[1]
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    roles = {"carol": "model_approver", "dave": "compliance_reviewer"}

    def approval(who: str) -> Any:
        body = {"modelDeployment": md["metadata"]["name"], "version": spec["version"],
                "imageDigest": digest, "decision": "approve", "approvedBy": who}  # fmt: skip
        return approval_of(f"a-{who}", body, now - timedelta(hours=1),
                           lambda user, _groups: frozenset({roles[user]}))  # fmt: skip

    approved, _, _ = ledger_spec(policy, {md["metadata"]["name"]: spec},
                                 [approval("carol"), approval("dave")], now)  # fmt: skip
    ledger = PromotionLedgerSpec.model_validate(pack(approved))
    [release] = unpack_releases(ledger.releases)[md["metadata"]["name"]]
    assert (release["version"], release["digest"], release["approvers"]) == (
        spec["version"], digest, ["carol", "dave"],
    )  # fmt: skip
    pending, _, _ = ledger_spec(policy, {md["metadata"]["name"]: spec}, [], now, "Vault is down")
    ledger = PromotionLedgerSpec.model_validate(pack(pending))
    assert ledger.blocked == "Vault is down" and ledger.releases == ""
    assert "needs" in pending["pending"][md["metadata"]["name"]]  # for the model's status


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"enforcement": "block"}, "enforcement"),
        ({"blocked": "x" * 513}, "blocked"),
        ({"releases": "x" * (MAX_PACKED + 1)}, "releases"),
    ],
)
def test_ledger_rejects(change: Obj, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PromotionLedgerSpec.model_validate({"policy": "default", **change})
    assert field in str(err.value)
