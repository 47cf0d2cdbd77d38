"""`kubectl mlsec` against the real API server, as the people of the hospital (issue 5).

Runs against the standard installation: the CRDs with the native admission policies from crds/
and the session's operator (no webhook), so the plugin is shown to work whichever admission layer
holds the gate. The plugin runs in-process here (fast); test_promotion_gate drives it through the
real `kubectl` binary.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from mlsec import plugin
from mlsec.clients.kube import KubeError
from mlsec.local import env as local

from . import resources as r
from .conftest import OperatorProcess, wait_until
from .gate_env import EXPECTED_BINDINGS, Gate, ldap_policy, unique


@pytest.fixture(scope="module")
def ns(operator: OperatorProcess, crds_installed: None, localenv: local.LocalEnv,
       admin_client: kubernetes.client.ApiClient, kube_as: Any, ldap_info: dict[str, str]) -> Iterator[Gate]:
    g = Gate(localenv, admin_client, kube_as, unique("plugin"))
    g.create_namespace()
    g.ldap_secrets(ldap_info)
    g.admin.create(ldap_policy(g.ns, ldap_info))
    wait_until(lambda: g.platform_bindings() == EXPECTED_BINDINGS, timeout=30, what="RoleBindings from LDAP")
    # Right after crds/ (re)applies the native policies, the API server may refuse writes for a few
    # seconds while it resolves their param kind: wait until a ModelDeployment write is admitted.
    wait_until(lambda: _admitted(g), timeout=60, what="ModelDeployment writes admitted")
    yield g
    g.delete_namespace()


def _admitted(g: Gate) -> bool:
    try:
        g.admin.apply(r.model(g.ns, "probe"), dry_run=True)
    except KubeError:
        return False
    return True


def run(g: Gate, user: str | None, *args: str, kubeconfig: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = [*args, "--kubeconfig", str(kubeconfig or g.localenv.kubeconfig)]
    if user:
        argv += ["--context", user, "-n", g.ns]
    with redirect_stderr(err):
        code = plugin.main(argv, out=out)
    return code, out.getvalue(), err.getvalue()


def test_approve_status_and_promote_as_different_people(ns: Gate) -> None:
    md = ns.model("alice", "plug")
    digest = md["spec"]["image"].rsplit("@", 1)[1]

    code, _, err = run(ns, "carol", "approve", "plug", "--version", "4")
    assert code == 1
    assert "error: plug is at version 3, not 4: its image digest belongs to that version" in err

    code, out, err = run(ns, "carol", "approve", "plug", "--version", "3", "--comment", "AUC 0.94")
    assert code == 0, err
    assert out.startswith(f"carol approved plug version 3 ({digest}) for production: "
                          "modelapproval/plug-3-approve-")

    code, _, err = run(ns, "bob", "approve", "plug", "--version", "3")
    assert code == 1 and 'User "bob" cannot create resource "modelapprovals"' in err

    code, _, err = run(ns, "erin", "status", "nope")
    assert code == 1 and 'cannot get resource "modeldeployments"' in err

    def shown() -> str | None:
        code, out, _ = run(ns, "bob", "status", "plug")
        return out if code == 0 and "approvals counted (1)" in out else None

    out = str(wait_until(shown, timeout=30, what="carol's approval in the model's status"))
    assert "ModelDeployment " + ns.ns + "/plug" in out
    assert "stage:       staging" in out and "owner:       alice" in out
    assert "carol (model_approver): counts as model_approver" in out
    assert "missing:     compliance_reviewer: 1 more (for phi models)" in out

    code, _, err = run(ns, "bob", "promote", "plug", "--to", "production")
    assert code == 1
    assert "needs 1 approval from compliance_reviewer (required for phi models); have 1" in err

    code, out, err = run(ns, "dave", "approve", "plug", "--version", "3", "--reject", "--comment", "no DPIA")
    assert code == 0, err
    assert out.startswith(f"dave rejected plug version 3 ({digest}) for production")

    def blocked() -> str | None:
        _, out, _ = run(ns, "bob", "status", "plug")
        return out if "rejections blocking the promotion (1)" in out else None

    out = str(wait_until(blocked, timeout=30, what="dave's rejection in the model's status"))
    assert "dave (compliance_reviewer): rejects the promotion as compliance_reviewer" in out
    code, _, err = run(ns, "bob", "promote", "plug", "--to", "production")
    assert code == 1 and "rejected by dave (compliance_reviewer)" in err

    code, out, _ = run(ns, "bob", "promote", "plug", "--to", "staging")
    assert code == 0 and out == "plug is already at stage staging\n"


def test_identity_and_namespace_come_from_the_kubeconfig(ns: Gate, tmp_path: Path) -> None:
    ns.model("alice", "ctx")
    config = yaml.safe_load(ns.localenv.kubeconfig.read_text())
    for c in config["contexts"]:
        c["context"]["namespace"] = ns.ns
    config["current-context"] = "carol"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))

    code, out, err = run(ns, None, "approve", "ctx", "--version", "3", kubeconfig=kubeconfig)
    assert code == 0, err
    assert out.startswith("carol approved ctx version 3") and f" in {ns.ns}\n" in out
    code, out, err = run(ns, None, "approve", "ctx", "--version", "3", "--context", "dave",
                         kubeconfig=kubeconfig)
    assert code == 0, err
    assert out.startswith("dave approved ctx version 3")
    approvers = sorted(a["spec"]["approvedBy"] for a in ns.admin.list(r.API, "ModelApproval", ns.ns)
                       if a["spec"]["modelDeployment"] == "ctx")
    assert approvers == ["carol", "dave"]
