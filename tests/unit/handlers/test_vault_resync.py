"""The Vault resync is one loop over the models that use Vault, not a kopf timer per model (kopf
keeps the whole body of every object of a kind with a timer, matching or not)."""

from __future__ import annotations

import importlib
from typing import Any

import kopf

from mlsec.handlers import (
    deployment,  # noqa: F401 - registers every model handler
    main,
    vault,
)


def entry(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None,
          deleting: bool = False) -> tuple[str, str, dict[str, Any], dict[str, Any], bool]:
    return (name, f"uid-{name}", spec, status or {}, deleting)


def test_candidates_are_the_models_using_vault_or_still_holding_its_objects() -> None:
    index = {
        "a": [entry("plain", {"image": "x"}),
              entry("secrets", {"secrets": [{"name": "db", "path": "database/creds/r"}]}),
              entry("tls", {"tls": {"commonName": "m.a.svc"}})],
        "b": [entry("dropped", {}, {"vault": {"role": "mlsec-b-dropped", "policy": "mlsec-b-dropped"}}),
              entry("going", {"secrets": [{"name": "db", "path": "p"}]}, deleting=True)],
    }
    assert vault.resync_candidates({"report_models": index}) == [
        ("a", "secrets"), ("a", "tls"), ("b", "dropped")]
    assert vault.resync_candidates({}) == []


def spawning_plurals(registry: kopf.OperatorRegistry) -> set[str]:
    spawning = registry._spawning.get_all_handlers()
    return {h.selector.plural or h.selector.any_name or "" for h in spawning if h.selector is not None}


def test_no_timer_or_daemon_on_any_kind() -> None:
    """A spawning handler makes kopf keep the whole body of every object of its kind: models
    (~20 KiB each) and policies (~28 KiB each with their managed fields) are served by
    operator-wide loops instead (mlsec.handlers.loops)."""
    premise = kopf.OperatorRegistry()
    kopf.daemon("mlsec.io", "v1alpha1", "mlsecuritypolicies", registry=premise)(lambda **_: None)
    assert spawning_plurals(premise) == {"mlsecuritypolicies"}  # the check sees a daemon
    for module in main.HANDLER_MODULES:  # every handler the operator registers
        importlib.import_module(module)
    assert spawning_plurals(kopf.get_default_registry()) == set()
