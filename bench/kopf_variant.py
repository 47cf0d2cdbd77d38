"""``mlsec run`` with some kopf settings overridden, to compare settings within one benchmark run.

    MLSEC_BENCH_KOPF="execution.max_workers=32,batching.batch_window=0.02" \
        python -m bench.kopf_variant run ...

The operator's own settings (mlsec.handlers.settings.apply_kopf_settings) are applied first, by
its start-up handler; this module's start-up handler, registered after it, then sets each
``path=value`` of $MLSEC_BENCH_KOPF. Nothing else differs from ``mlsec run``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import kopf

from mlsec import cli
from mlsec.handlers import lifecycle  # noqa: F401 - registers the operator's settings handler first

log = logging.getLogger("bench.kopf_variant")


def overrides(text: str) -> list[tuple[list[str], str]]:
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        path, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected path=value, got {item!r}")
        out.append((path.split("."), value))
    return out


def _convert(old: Any, value: str) -> Any:
    if isinstance(old, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(old, int):
        return int(value)
    if old is None or isinstance(old, float):
        return float(value) if "." in value else int(value)
    return type(old)(value)


@kopf.on.startup()
def override(settings: kopf.OperatorSettings, **_: Any) -> None:
    for path, value in overrides(os.environ.get("MLSEC_BENCH_KOPF", "")):
        target: Any = settings
        for part in path[:-1]:
            target = getattr(target, part)
        old = getattr(target, path[-1])
        setattr(target, path[-1], _convert(old, value))
        log.warning("bench: kopf setting %s = %r (was %r)", ".".join(path), getattr(target, path[-1]), old)


if __name__ == "__main__":
    sys.exit(cli.main())
