"""kopf watches neither the models nor their children (mlsec.clients.watch does); the children's
watches are filtered by the API server, not in the operator."""

from __future__ import annotations

import kopf

from mlsec.builders.children import CHILD_KINDS
from mlsec.clients.kube import resource_of
from mlsec.handlers import deployment, models
from mlsec.handlers.main import HANDLER_MODULES
from mlsec.handlers.settings import apply_kopf_settings


def test_kopf_watches_no_child_kind_and_no_model() -> None:
    """kopf keeps per-object state for every object it watches: the models and their children
    are watched by mlsec.clients.watch instead, so no kopf resource handler may name them
    (admission webhooks do not make kopf watch)."""
    import importlib

    for module in HANDLER_MODULES:
        importlib.import_module(module)
    registry = kopf.get_default_registry()
    child_plurals = {resource_of(a, k).plural for a, k in CHILD_KINDS}
    selectors = [*registry._watching.get_all_selectors(), *registry._changing.get_all_selectors(),
                 *registry._spawning.get_all_selectors(), *registry._indexing.get_all_selectors()]
    watched = {sel.plural or sel.any_name for sel in selectors}
    assert watched, "no kopf resource handlers found: the check would be empty"
    assert not watched & child_plurals
    assert "modeldeployments" not in watched
    assert {"mlsecuritypolicies", "modelapprovals"} <= watched


def test_every_child_kind_is_watched_by_label_in_each_scope() -> None:
    everywhere = deployment.child_watches(transport=None, namespaces=[])  # type: ignore[arg-type]
    assert sorted(w.path for w in everywhere) == sorted(
        resource_of(a, k).path(None) for a, k in CHILD_KINDS)
    assert {w.label_selector for w in everywhere} == {"app.kubernetes.io/managed-by=mlsec-operator"}
    scoped = deployment.child_watches(transport=None, namespaces=["a", "b"])  # type: ignore[arg-type]
    assert len(scoped) == 2 * len(CHILD_KINDS)
    assert {w.path.split("/namespaces/")[1].split("/")[0] for w in scoped} == {"a", "b"}
    assert all(w.handler is deployment._child_seen for w in scoped)


def test_models_are_watched_unfiltered_in_each_scope() -> None:
    everywhere = models.model_watches(None, [])  # type: ignore[arg-type]
    assert [(w.path, w.label_selector) for w in everywhere] == [
        ("/apis/mlsec.io/v1alpha1/modeldeployments", "")]
    scoped = models.model_watches(None, ["a", "b"])  # type: ignore[arg-type]
    assert [w.path for w in scoped] == ["/apis/mlsec.io/v1alpha1/namespaces/a/modeldeployments",
                                        "/apis/mlsec.io/v1alpha1/namespaces/b/modeldeployments"]
    assert all(w.handler is models.seen for w in scoped)


def test_no_worker_limit_and_no_deprecated_settings() -> None:
    """A worker limit below the number of objects deadlocks kopf's start-up (see settings.py);
    the settings use kopf's current names (a deprecation warning is an error here)."""
    import warnings

    settings = kopf.OperatorSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_kopf_settings(settings)
    assert settings.queueing.worker_limit is None
