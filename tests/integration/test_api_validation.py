"""The CRD schemas and CEL rules, replayed against the real API server (issue 3).

The table of invalid objects is the unit tests' (tests/unit/api/api_cases.py): each one must be
rejected by kube-apiserver itself, with a message that names the field.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
import yaml

from mlsec.local import env as local

from .resources import REPO

_spec = importlib.util.spec_from_file_location("api_cases", REPO / "tests/unit/api/api_cases.py")
assert _spec and _spec.loader
cases = importlib.util.module_from_spec(_spec)
sys.modules["api_cases"] = cases
_spec.loader.exec_module(cases)


def _create(localenv: local.LocalEnv, namespace: str, doc: dict[str, Any], dry_run: bool = True) -> str:
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    args = ["create", "--validate=strict", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    proc = localenv.kubectl(*args, input=yaml.safe_dump(doc), check=False)
    return proc.stderr if proc.returncode else ""


def test_table_is_large_enough() -> None:
    assert len(cases.INVALID) >= 20


@pytest.mark.parametrize("case", cases.INVALID, ids=lambda c: f"{c.path}={c.value!r}"[:80])
def test_invalid_object_is_rejected_naming_the_field(localenv: local.LocalEnv, crds_installed: None,
                                                    namespace: str, case: Any) -> None:
    doc = cases.mutate(cases.load_sample(case.sample), case.path, case.value)
    error = _create(localenv, namespace, doc)
    assert error, f"the API server accepted an invalid object ({case.why})"
    assert case.field in error, error


def test_samples_are_valid(localenv: local.LocalEnv, crds_installed: None, namespace: str) -> None:
    for name in (cases.POLICY, cases.DEPLOYMENT, cases.APPROVAL):
        assert _create(localenv, namespace, cases.load_sample(name)) == "", name


def test_edited_approval_is_rejected(localenv: local.LocalEnv, crds_installed: None, namespace: str) -> None:
    doc = cases.load_sample(cases.APPROVAL)
    assert _create(localenv, namespace, doc, dry_run=False) == ""
    name = doc["metadata"]["name"]
    proc = localenv.kubectl("patch", "mla", name, "-n", namespace, "--type=merge",
                            "-p", '{"spec": {"version": "4"}}', check=False)
    assert proc.returncode != 0 and "immutable" in proc.stderr, proc.stderr
