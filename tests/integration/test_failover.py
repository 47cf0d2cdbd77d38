"""Two operator replicas: exactly one reconciles; when it dies the other takes over (issue 8)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from mlsec.clients.kube import Kube
from mlsec.handlers.leader import LEASE
from mlsec.local import env as local

from . import resources as r
from .conftest import OperatorProcess, wait_until


def _holder(kube: Kube) -> str:
    lease = kube.get("coordination.k8s.io/v1", "Lease", "mlsec-system", LEASE) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_failover_to_the_standby_replica(localenv: local.LocalEnv, operator: OperatorProcess, kube: Kube,
                                         namespace: str, tmp_path: Path) -> None:
    # The session's shared operator would be a third replica: stand it down for this test.
    operator.stop()
    kube.create(r.policy(namespace))
    replicas = []
    for i in range(2):
        work = tmp_path / f"replica-{i}"
        work.mkdir()
        replicas.append(OperatorProcess(localenv, work).start())
    try:
        by_pid = {str(op.proc.pid): op for op in replicas if op.proc}
        holder = str(wait_until(lambda: _holder(kube) if _holder(kube).rsplit("-", 1)[-1] in by_pid else "",
                                timeout=30, what="one replica holds the lease"))
        active = by_pid[holder.rsplit("-", 1)[-1]]
        standby = next(op for op in replicas if op is not active)
        kube.create(r.model(namespace, "before-failover"))
        wait_until(lambda: r.has_condition(kube.get(r.API, "ModelDeployment", namespace, "before-failover"),
                                           "Ready", "True"), timeout=30, what="the leader reconciles")
        assert "became leader" not in standby.log()  # exactly one replica reconciles

        active.stop(signal.SIGKILL)
        killed = time.monotonic()
        kube.create(r.model(namespace, "after-failover"))

        def reconciled() -> dict[str, Any] | None:
            obj = kube.get(r.API, "ModelDeployment", namespace, "after-failover")
            return obj if r.has_condition(obj, "Ready", "True") else None

        wait_until(reconciled, timeout=20, what="the standby reconciles a new model after failover")
        took = time.monotonic() - killed
        assert "became leader" in standby.log()
        assert kube.get("apps/v1", "Deployment", namespace, "after-failover") is not None
        print(f"failover: new ModelDeployment reconciled {took:.1f}s after SIGKILL of the leader")
    finally:
        for op in replicas:
            op.stop()
        operator.start()
