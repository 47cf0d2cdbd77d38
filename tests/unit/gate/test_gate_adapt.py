"""Mapping policies onto the gate's types: what is derived once per policy object."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mlsec.api import MLSecurityPolicy
from mlsec.gate import adapt

SAMPLE = Path(__file__).resolve().parents[3] / "manifests/samples/policy-hospital.yaml"


def _policy(**production: Any) -> MLSecurityPolicy:
    doc = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    doc["spec"]["promotion"]["production"].update(production)
    return MLSecurityPolicy.model_validate(doc)


def test_rules_and_roles_are_derived_once_per_policy_object_and_anew_for_another() -> None:
    first, second = _policy(approvalTTL="1h"), _policy(approvalTTL="2h")
    assert adapt.rules_of(first) is adapt.rules_of(first)  # the admission gate asks per request
    assert adapt.rules_of(first).approval_ttl.total_seconds() == 3600
    assert adapt.rules_of(second).approval_ttl.total_seconds() == 7200
    groups = ("cn=ml_engineers,ou=groups,dc=hospital,dc=com", "ml_leads")
    roles = adapt.roles_from_groups(groups, first)
    assert roles == adapt.roles_from_groups(groups, first) == adapt.roles_from_groups(groups, second)
    assert "model_deployer" in roles and "model_approver" in roles
    assert adapt.roles_from_groups(("nobody",), first) == frozenset()


def test_a_policy_object_stays_cached_only_while_it_is_the_same_object() -> None:
    cache = adapt._PerPolicy(size=2)
    policies = [object() for _ in range(3)]
    calls: list[int] = []
    for i, p in enumerate(policies):
        assert cache.get(p, lambda i=i: calls.append(i) or i) == i  # type: ignore[func-returns-value]
    assert cache.get(policies[2], lambda: -1) == 2  # kept
    assert cache.get(policies[0], lambda: -1) == -1  # dropped when the cache filled up
    assert calls == [0, 1, 2]
