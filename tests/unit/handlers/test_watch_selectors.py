"""The children's watches are filtered by the API server, not in the operator."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource

from mlsec.builders.children import CHILD_KINDS
from mlsec.clients.kube import resource_of
from mlsec.handlers import deployment  # noqa: F401 - registers the child watches
from mlsec.handlers.settings import apply_kopf_settings


def test_every_child_kind_is_watched_with_the_managed_by_selector() -> None:
    settings = kopf.OperatorSettings()
    apply_kopf_settings(settings)
    for api_version, kind in CHILD_KINDS:
        group, _, version = api_version.rpartition("/")
        res = Resource(group=group, version=version, plural=resource_of(api_version, kind).plural,
                       kind=kind, namespaced=True)
        assert list(settings.watching.label_selectors.collect(res)) == [
            "app.kubernetes.io/managed-by=mlsec-operator"], kind


def test_our_own_kinds_are_watched_whole() -> None:
    settings = kopf.OperatorSettings()
    apply_kopf_settings(settings)
    res = Resource(group="mlsec.io", version="v1alpha1", plural="modeldeployments",
                   kind="ModelDeployment", namespaced=True)
    assert list(settings.watching.label_selectors.collect(res)) == []


def test_no_worker_limit_and_no_deprecated_settings() -> None:
    """A worker limit below the number of objects deadlocks kopf's start-up (see settings.py);
    the settings use kopf's current names (a deprecation warning is an error here)."""
    import warnings

    settings = kopf.OperatorSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_kopf_settings(settings)
    assert settings.queueing.worker_limit is None
