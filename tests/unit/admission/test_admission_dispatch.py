"""Our admission dispatch answers exactly as kopf's own per-request pipeline does.

kopf's ``serve_admission_request`` (the path the webhooks took before) is run here as the
oracle, with a real kopf registry holding our handlers, on the same AdmissionReviews.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
from pathlib import Path
from typing import Any

import jsonpatch
import kopf
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kopf._cogs.structs import references
from kopf._core.engines import admission as engine
from tests.unit.admission.test_admission_handlers import DIGEST, NS, World, _approval, _model

from mlsec.audit import AuditLog
from mlsec.handlers import admission, context, model_store, webhook, webhook_tls
from mlsec.handlers import admission_dispatch as dispatch

OPERATOR = "system:serviceaccount:mlsec-system:mlsec-operator"
RESOURCES = {plural: references.Resource("mlsec.io", "v1alpha1", plural, kind=kind, namespaced=True,
                                         subresources=frozenset({"status"}))
             for plural, kind in (("modeldeployments", "ModelDeployment"),
                                  ("modelapprovals", "ModelApproval"),
                                  ("mlsecuritypolicies", "MLSecurityPolicy"))}


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission.STATE, "indexed", True)
    listed = threading.Event()
    listed.set()
    monkeypatch.setattr(model_store.STORE, "listed", listed)
    monkeypatch.setattr(admission.STATE, "identity", OPERATOR)
    log = AuditLog(tmp_path / "audit.jsonl", sink=None)
    monkeypatch.setattr(context, "audit", lambda: log)
    admission.register(kopf.OperatorRegistry())  # fills admission.ROUTES


class Memories(engine.MemoGetter):
    async def recall_memo(self, raw_body: Any, *, memobase: Any = None, ephemeral: bool = False) -> Any:
        return kopf.Memo()


def kopf_answer(review: dict[str, Any], hook: str, indexes: dict[str, Any]) -> dict[str, Any]:
    """What kopf's own pipeline answers (the oracle)."""
    registry = kopf.OperatorRegistry()
    admission.register(registry)
    insights = references.Insights()
    insights.webhook_resources.update(RESOURCES.values())
    return asyncio.run(engine.serve_admission_request(
        copy.deepcopy(review), webhook=hook, settings=kopf.OperatorSettings(), memories=Memories(),
        memobase=kopf.Memo(), registry=registry, insights=insights,
        indices=indexes))  # type: ignore[arg-type]  # kopf spreads any mapping of indexes


def our_answer(review: dict[str, Any], hook: str, indexes: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(dispatch.serve(copy.deepcopy(review), hook, admission.ROUTES[hook], indexes))


def review(plural: str, operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None = None,
           user: str = "bob", groups: tuple[str, ...] = ("ml_engineers",), subresource: str | None = None,
           dry_run: bool = False) -> dict[str, Any]:
    body = obj if obj is not None else old
    assert body is not None
    req: dict[str, Any] = {
        "uid": "uid-1", "kind": {"group": "mlsec.io", "version": "v1alpha1", "kind": body["kind"]},
        "resource": {"group": "mlsec.io", "version": "v1alpha1", "resource": plural},
        "name": body["metadata"]["name"], "namespace": NS, "operation": operation,
        "userInfo": {"username": user, "groups": [*groups, "system:authenticated"]},
        "object": obj, "oldObject": old, "dryRun": dry_run}
    if subresource:
        req["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def model_body(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "mri", "namespace": NS}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "mlsec.io/v1alpha1", "kind": "ModelDeployment", "metadata": meta,
            "spec": _model(**spec)}


def approval_body(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlsec.io/v1alpha1", "kind": "ModelApproval",
            "metadata": {"name": "a1", "namespace": NS},
            "spec": {"modelDeployment": "mri", "version": "3", "imageDigest": DIGEST, "decision": "approve",
                     **spec}}


def approved_world() -> World:
    world = World()
    world.approvals = [_approval("a1", "carol"), _approval("a2", "dave")]
    return world


CASES = {
    "gate: promotion denied": (
        "deployment-gate", World(),
        review("modeldeployments", "UPDATE", model_body(stage="production"), model_body())),
    "gate: promotion allowed": (
        "deployment-gate", approved_world(),
        review("modeldeployments", "UPDATE", model_body(stage="production"), model_body())),
    "gate: audit enforcement warns": (
        "deployment-gate", World({**World().policies[0][3], "enforcement": "audit"}),
        review("modeldeployments", "UPDATE", model_body(stage="production"), model_body())),
    "gate: stage skipped": (
        "deployment-gate", World(),
        review("modeldeployments", "UPDATE", model_body(stage="production"),
               model_body(stage="development"))),
    "gate: not a promotion": (
        "deployment-gate", World(), review("modeldeployments", "CREATE", model_body())),
    "gate: a dry run": (
        "deployment-gate", World(),
        review("modeldeployments", "UPDATE", model_body(stage="production"), model_body(), dry_run=True)),
    "stamp: no annotations yet": (
        "deployment-stamp", World(), review("modeldeployments", "CREATE", model_body(), user="alice")),
    "stamp: forged requester replaced": (
        "deployment-stamp", World(),
        review("modeldeployments", "UPDATE", model_body({"mlsec.io/requested-by": "carol", "x": "y"},
                                                        stage="production"),
               model_body({"mlsec.io/requested-by": "alice"}))),
    "stamp: unchanged": (
        "deployment-stamp", World(),
        review("modeldeployments", "UPDATE", model_body({"mlsec.io/requested-by": "alice"}, replicas=3),
               model_body({"mlsec.io/requested-by": "alice"}))),
    "approval stamp: the creator": (
        "approval-stamp", World(),
        review("modelapprovals", "CREATE", approval_body(approvedBy="dave"), user="carol",
               groups=("ml_leads",))),
    "approval check: refused": (
        "approval-check", World(),
        review("modelapprovals", "CREATE", approval_body(approvedBy="erin", approverGroups=[]), user="erin",
               groups=())),
    "approval check: immutable": (
        "approval-check", World(),
        review("modelapprovals", "UPDATE", approval_body(version="4"), approval_body())),
    "approval check: warns of another version": (
        "approval-check", World(),
        review("modelapprovals", "CREATE", approval_body(version="4", approvedBy="carol",
                                                         approverGroups=["ml_leads", "system:authenticated"]),
               user="carol", groups=("ml_leads",))),
    "status: by someone else": (
        "status-guard-modeldeployments", World(),
        review("modeldeployments", "UPDATE", model_body(), model_body(), subresource="status")),
    "status: by the operator": (
        "status-guard-modeldeployments", World(),
        review("modeldeployments", "UPDATE", model_body(), model_body(), user=OPERATOR,
               subresource="status")),
}


@pytest.mark.parametrize("case", CASES)
def test_same_answer_as_kopf(case: str) -> None:
    hook, world, rev = CASES[case]
    ours = our_answer(rev, hook, world.indexes())
    theirs = kopf_answer(rev, hook, world.indexes())
    ours_patch = ours["response"].pop("patch", None)
    theirs_patch = theirs["response"].pop("patch", None)
    assert ours == theirs
    if theirs_patch is None:
        assert ours_patch is None
        return
    body = rev["request"]["object"]
    patched = [jsonpatch.apply_patch(copy.deepcopy(body), json.loads(base64.b64decode(p)))
               for p in (ours_patch, theirs_patch)]
    assert patched[0] == patched[1] != body


def test_what_the_answers_say() -> None:
    """Spot checks of the oracle itself, so the equivalence above cannot hold vacuously."""
    hook, world, rev = CASES["gate: promotion denied"]
    denied = our_answer(rev, hook, world.indexes())["response"]
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert denied["status"]["message"].startswith("promotion of mri version 3 to production: needs")
    assert denied["uid"] == "uid-1"
    hook, world, rev = CASES["stamp: no annotations yet"]
    stamped = our_answer(rev, hook, world.indexes())["response"]
    assert stamped["allowed"] is True and stamped["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(stamped["patch"])) == [
        {"op": "add", "path": "/metadata/annotations", "value": {"mlsec.io/requested-by": "alice"}}]


def test_operations_the_hook_was_not_registered_for_are_allowed_untouched() -> None:
    rev = review("modelapprovals", "DELETE", None, approval_body())
    answer = our_answer(rev, "approval-stamp", World().indexes())
    assert answer["response"] == {"uid": "uid-1", "allowed": True}


def test_a_failing_handler_denies_without_details(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**_: Any) -> None:
        raise RuntimeError("secret detail")

    route = dispatch.Route.of(broken, ["CREATE"])
    out = asyncio.run(dispatch.serve(review("modeldeployments", "CREATE", model_body()), "x", route, {}))
    assert out["response"]["allowed"] is False and out["response"]["status"]["code"] == 500
    assert "secret detail" not in json.dumps(out)


@pytest.mark.parametrize("broken", [{}, {"request": {"uid": "u"}},
                                    {"request": {"uid": "u", "userInfo": {"username": "x"}}}])
def test_malformed_reviews_are_bad_requests(broken: dict[str, Any]) -> None:
    with pytest.raises(dispatch.BadReview):
        asyncio.run(dispatch.serve(broken, "approval-stamp", admission.ROUTES["approval-stamp"], {}))


def test_indexes_override_keyword_arguments_as_in_kopf() -> None:
    seen: dict[str, Any] = {}

    async def handler(name: str, models_by_namespace: Any, **_: Any) -> None:
        seen.update(name=name, models=models_by_namespace)

    route = dispatch.Route.of(handler, ["CREATE"], indexes=["models_by_namespace"])
    asyncio.run(dispatch.serve(review("modeldeployments", "CREATE", model_body()), "x", route,
                               {"models_by_namespace": "the index"}))
    assert seen == {"name": "mri", "models": "the index"}


def test_the_server_routes_our_hooks_and_leaves_the_rest_to_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []

    async def kopf_fn(request: Any, *, webhook: str | None = None, **_: Any) -> dict[str, Any]:
        calls.append(webhook)
        return {"from": "kopf"}

    import functools

    fn = functools.partial(kopf_fn, indices=World().indexes())
    server = webhook.Server(routes=admission.ROUTES)

    async def main() -> tuple[Any, Any]:
        served: list[Any] = []

        async def fake_listen(self: Any, traced: Any) -> Any:
            served.append(traced)
            yield {"url": "https://x"}

        monkeypatch.setattr(webhook.Server, "_listen", fake_listen)
        async for _ in server(fn):
            break
        traced = served[0]
        rev = CASES["gate: promotion denied"][2]
        return (await traced(rev, webhook="deployment-gate", headers={}),
                await traced(rev, webhook="someone-elses-hook", headers={}))

    ours, theirs = asyncio.run(main())
    assert ours["response"]["allowed"] is False
    assert theirs == {"from": "kopf"} and calls == ["someone-elses-hook"]


# --- the JSON patch -----------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c/d", "e~f", "metadata", "annotations"])
leaves = st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["x", "y"]), st.booleans())
bodies = st.recursive(leaves.filter(lambda v: v is not None),
                      lambda inner: st.dictionaries(keys, inner, max_size=3), max_leaves=8)
# Deletions (None) at the top only: below it kopf also drops a parent its deletion emptied, a
# quirk our handlers never meet (they only set values).
nested = st.recursive(bodies.filter(lambda v: not isinstance(v, dict)),
                      lambda inner: st.dictionaries(keys, inner, max_size=3), max_leaves=8)
merges = st.one_of(st.none(), nested)


@settings(max_examples=500, deadline=None)
@given(body=st.dictionaries(keys, bodies, max_size=4), merge=st.dictionaries(keys, merges, max_size=4))
def test_json_patch_does_what_kopf_does(body: dict[str, Any], merge: dict[str, Any]) -> None:
    patch = kopf.Patch(body=kopf.Body(copy.deepcopy(body)))
    patch.update(copy.deepcopy(merge))
    try:
        expected = jsonpatch.apply_patch(copy.deepcopy(body), patch.as_json_patch())
    except TypeError:  # kopf cannot merge an object into a scalar either; our handlers never ask
        assume(False)
    ops = dispatch.json_patch(body, merge)
    assert jsonpatch.apply_patch(copy.deepcopy(body), ops) == expected
    if expected == body:
        assert ops == []


def test_a_handler_naming_an_unknown_argument_is_refused_at_registration() -> None:
    async def typo(usrinfo: Any, **_: Any) -> None:  # userinfo misspelt: would always be None
        return None

    async def indexed(approvals_by_namespace: Any, spec: Any) -> None:
        return None

    with pytest.raises(TypeError, match="usrinfo"):
        dispatch.Route.of(typo, ["CREATE"])
    with pytest.raises(TypeError, match="approvals_by_namespace"):
        dispatch.Route.of(indexed, ["CREATE"])
    route = dispatch.Route.of(indexed, ["CREATE"], indexes=["approvals_by_namespace"])
    assert route.params == {"approvals_by_namespace", "spec"} and not route.takes_indexes
    # every argument serve() offers is one a handler may name
    for name in dispatch.ARGUMENTS:
        exec(f"async def h({name}): pass", globals())
        assert dispatch.Route.of(globals()["h"], ["CREATE"]).params == {name}


def test_the_server_parses_and_answers_our_hooks_itself(tmp_path: Path) -> None:
    """HTTP/1.1 on the webhook port: our hooks parsed and answered without kopf's request copies;
    a body that is not JSON (or not UTF-8) is a 400, as with kopf; nothing else is served."""
    import ssl

    import aiohttp

    cert = webhook_tls.generate(["127.0.0.1"], tmp_path)
    server = webhook.Server(addr="127.0.0.1", port=0, host="127.0.0.1", routes=admission.ROUTES,
                            certfile=str(cert.certfile), pkeyfile=str(cert.keyfile), cadata=cert.cadata)

    async def traced(review: Any, *, webhook: str | None = None, **kwargs: Any) -> dict[str, Any]:
        if review.get("broken"):
            raise engine.WebhookError("not an AdmissionReview")
        return {"hook": webhook, "review": review, "kopf_kwargs": sorted(kwargs)}

    async def main() -> list[tuple[int, Any]]:
        listening = server._listen(traced)
        config = await listening.__anext__()
        ctx = ssl.create_default_context(cadata=cert.cadata.decode())
        out = []
        async with aiohttp.ClientSession() as client:
            for method, hook, data in (("POST", "deployment-gate?timeout=5s", '{"uid": "é"}'.encode()),
                                       ("POST", "deployment-gate", b'{"uid": '),
                                       ("POST", "approval-stamp", b"\xff\xfe"),
                                       ("POST", "approval-stamp", b'{"broken": true}'),
                                       ("POST", "someone-elses-hook", b'{"uid": "x"}'),
                                       ("GET", "deployment-gate", b""),
                                       ("POST", "deployment-gate", b" " * (1024**2 + 1))):
                async with client.request(method, f"{config['url']}/{hook}", data=data, ssl=ctx) as resp:
                    out.append((resp.status, await resp.json() if resp.status == 200 else None))
                    if resp.status == 200:
                        assert resp.content_type == "application/json"
        await listening.aclose()
        return out

    answers = asyncio.run(main())
    assert answers[0] == (200, {"hook": "deployment-gate", "review": {"uid": "é"}, "kopf_kwargs": []})
    assert [status for status, _ in answers[1:]] == [400, 400, 400, 404, 405, 413]  # 413: over 1 MiB
