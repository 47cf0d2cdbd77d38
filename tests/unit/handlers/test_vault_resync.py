"""The Vault resync is one loop over the models that use Vault, not a kopf timer per model (kopf
keeps the whole body of every object of a kind with a timer, matching or not)."""

from __future__ import annotations

from typing import Any

import kopf

from mlsec.handlers import (
    deployment,  # noqa: F401 - registers every model handler
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


def test_no_timer_or_daemon_on_models() -> None:
    """A spawning handler on ModelDeployments would make kopf keep every model's body."""
    spawning = kopf.get_default_registry()._spawning.get_all_handlers()
    plurals = {h.selector.plural or h.selector.any_name for h in spawning if h.selector is not None}
    assert "mlsecuritypolicies" in plurals  # the check sees the policies' daemons and timers
    assert "modeldeployments" not in plurals
