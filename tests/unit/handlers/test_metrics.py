"""The per-namespace counts collector behind mlsec_compliance_results."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mlsec.handlers.metrics import NamespaceCounts

RESULTS = ("pass", "fail", "warn", "error", "skip")


def exposition(counts: NamespaceCounts) -> list[str]:
    registry = CollectorRegistry()
    registry.register(counts)
    return [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]


def test_every_result_of_each_rule_named_is_served_zeros_included() -> None:
    counts = NamespaceCounts("t_results", "Results.", RESULTS)
    counts.set("ns-a", {("images.requireDigest", "fail"): 1, ("images.requireDigest", "pass"): 2})
    counts.set("ns-b", {("network.mtls", "pass"): 3})
    lines = exposition(counts)
    assert 't_results{namespace="ns-a",result="fail",rule="images.requireDigest"} 1.0' in lines
    assert 't_results{namespace="ns-a",result="pass",rule="images.requireDigest"} 2.0' in lines
    assert 't_results{namespace="ns-a",result="warn",rule="images.requireDigest"} 0.0' in lines
    assert 't_results{namespace="ns-b",result="pass",rule="network.mtls"} 3.0' in lines
    assert len(lines) == 10  # two namespaces x one rule x five results


def test_a_new_set_replaces_the_namespace_and_remove_drops_it() -> None:
    counts = NamespaceCounts("t_results", "Results.", RESULTS)
    counts.set("ns-a", {("images.requireDigest", "fail"): 1, ("network.mtls", "pass"): 1})
    counts.set("ns-a", {("network.mtls", "pass"): 4})  # the digest rule is gone
    assert [line for line in exposition(counts) if "requireDigest" in line] == []
    assert 't_results{namespace="ns-a",result="pass",rule="network.mtls"} 4.0' in exposition(counts)
    counts.set("ns-b", {("network.mtls", "fail"): 1})
    counts.remove("ns-a")
    assert all('namespace="ns-b"' in line for line in exposition(counts))
    counts.set("ns-b", {})
    assert exposition(counts) == []
