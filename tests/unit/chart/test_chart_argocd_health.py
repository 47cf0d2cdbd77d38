"""The Argo CD health check (manifests/argocd/modeldeployment-health.lua), run by a real Lua 5.1
interpreter (lupa), the Lua version of Argo CD's gopher-lua, on documented cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import lua51

SCRIPT = Path(__file__).resolve().parents[3] / "manifests/argocd/modeldeployment-health.lua"


def _lua_value(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _lua_value(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_lua_value(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Evaluate the script as Argo CD does: ``obj`` is a global, the chunk returns ``hs``."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _lua_value(lua, obj)
    hs = lua.execute(SCRIPT.read_text())
    return str(hs["status"]), str(hs["message"])


def cond(type_: str, status: str, reason: str = "", message: str = "", gen: int = 1) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": gen}


def mld(*conditions: dict[str, Any], stage: str = "staging", generation: int = 1,
        status: bool = True) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "mlsec.io/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": "m", "namespace": "ns", "generation": generation},
                           "spec": {"stage": stage}}
    if status:
        obj["status"] = {"conditions": list(conditions)}
    return obj


READY = cond("Ready", "True", "Reconciled", "all children are in place")
COMPLIANT = cond("PolicyCompliant", "True", "Compliant", "all policy rules are met")
NOT_YET = cond("PromotionApproved", "False", "ApprovalsMissing", "not yet promotable: needs 1 model_approver")
APPROVED = cond("PromotionApproved", "True", "Approved", "approved by carol, dave")

CASES = [
    # (case, object, expected status, substring of the message)
    ("no status yet", mld(status=False), "Progressing", "Waiting for the operator"),
    ("conditions empty", mld(), "Progressing", "Waiting for the operator"),
    ("reconciled in staging; not yet promotable is normal there",
     mld(READY, COMPLIANT, NOT_YET), "Healthy", "all children are in place"),
    ("reconciled in production with approvals", mld(READY, COMPLIANT, APPROVED, stage="production"),
     "Healthy", "all children are in place"),
    ("spec changed, operator has not caught up",
     mld(READY, COMPLIANT, APPROVED, stage="production", generation=2), "Progressing", "generation 2"),
    ("production held back: approvals missing",
     mld(cond("Ready", "False", "PromotionBlocked", "held back: needs 1 compliance_reviewer"),
         COMPLIANT, cond("PromotionApproved", "False", "ApprovalsMissing", "needs 1 compliance_reviewer"),
         stage="production"),
     "Degraded", "needs 1 compliance_reviewer"),
    ("production, a reject from a required role",
     mld(cond("Ready", "False", "PromotionBlocked", "held back: rejected by carol"), COMPLIANT,
         cond("PromotionApproved", "False", "Rejected", "rejected by carol"), stage="production"),
     "Degraded", "rejected by carol"),
    ("enforce mode: image not allowed, previous rollout stays",
     mld(cond("Ready", "False", "RolloutBlocked", "not rolled out: image registry not allowed"),
         cond("PolicyCompliant", "False", "PolicyViolation", "image registry not allowed")),
     "Degraded", "image registry not allowed"),
    ("audit mode: rolled out despite a violation",
     mld(cond("Ready", "True", "Reconciled", "rolled out in audit mode despite policy violations"),
         cond("PolicyCompliant", "False", "PolicyViolation", "image has no digest")),
     "Degraded", "Policy violation: image has no digest"),
    ("audit mode: in production without approvals",
     mld(READY, cond("PolicyCompliant", "True", "Compliant"), NOT_YET, stage="production"),
     "Degraded", "Promotion not approved"),
    ("no policy in the namespace (fail closed)",
     mld(cond("Ready", "False", "NoPolicy", "no MLSecurityPolicy in namespace ns")),
     "Degraded", "no MLSecurityPolicy"),
    ("Vault not ready yet: the operator retries",
     mld(cond("Ready", "False", "VaultNotReady", "not rolled out until Vault is ready: sealed"), COMPLIANT),
     "Progressing", "Vault"),
    ("Ready unknown", mld(cond("Ready", "Unknown", "NotEvaluated", "")), "Progressing", "NotEvaluated"),
    ("message empty: the reason is shown",
     mld(cond("Ready", "False", "InvalidSpec", "")), "Degraded", "InvalidSpec"),
    ("status.observedGeneration is used when Ready has none",
     {**mld(), "metadata": {"name": "m", "generation": 3},
      "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}},
     "Progressing", "generation 3"),
]


@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = health(obj)
    assert got_status == status
    assert message in got_message


def test_runs_on_lua_5_1() -> None:
    assert lua51.LuaRuntime().eval("_VERSION") == "Lua 5.1"
