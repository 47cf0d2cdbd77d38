"""Operator start-up: kopf settings and the readiness probe."""

from __future__ import annotations

from typing import Any

import kopf

from mlsec.handlers.settings import apply_kopf_settings


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    apply_kopf_settings(settings)


@kopf.on.probe(id="ready")
def ready(**_: Any) -> bool:
    return True


@kopf.on.cleanup()
def release_leadership(**_: Any) -> None:
    from mlsec.handlers import leader

    leader.stop()
