"""The Report writer: writes only on change, reads the live Report once, copes with missing CRDs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from report_cases import NOW, NS, model, policy

from mlsec.builders import report as rb
from mlsec.clients.kube import KubeError
from mlsec.handlers import context
from mlsec.handlers import reports as h


class FakeKube:
    def __init__(self) -> None:
        self.crds = True
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        self.calls.append("list")
        if not self.crds:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        return [o for (ns, _), o in self.objects.items() if ns == namespace]

    def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.calls.append("apply")
        if not self.crds:
            raise KubeError(404, "NotFound", "404 page not found")
        served = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(len(self.calls))}}
        self.objects[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = served
        return served


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube()
    monkeypatch.setattr(context, "kube", lambda: fake)
    monkeypatch.setattr(h, "AVAILABILITY", h.Availability())
    yield fake


def _metric(rule: str, result: str) -> float | None:
    return REGISTRY.get_sample_value("mlsec_compliance_results",
                                     {"namespace": NS, "rule": rule, "result": result})


BAD = model("tagged", image="registry.hospital.com/ml/tagged:3")


def test_writes_once_then_nothing_while_unchanged(kube: FakeKube) -> None:
    state = h.NamespaceReport(NS)
    assert state.recompute(policy(), [BAD, model("ok")], NOW) is True
    assert kube.calls == ["list", "apply"]
    for minutes in (1, 2, 3):
        assert state.recompute(policy(), [BAD, model("ok")], NOW + timedelta(minutes=minutes)) is False
    assert kube.calls == ["list", "apply"]  # no read, no write
    assert state.recompute(policy(), [model("ok")], NOW + timedelta(minutes=4)) is True
    assert kube.calls == ["list", "apply", "apply"]


def test_a_restarted_operator_adopts_the_live_report(kube: FakeKube) -> None:
    h.NamespaceReport(NS).recompute(policy(), [BAD], NOW)
    fresh = h.NamespaceReport(NS)
    assert fresh.recompute(policy(), [BAD], NOW + timedelta(minutes=5)) is False
    assert kube.calls == ["list", "apply", "list"]


def test_live_report_is_read_again_after_resync(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    state = h.NamespaceReport(NS)
    state.recompute(policy(), [BAD], NOW)
    kube.objects.clear()  # someone deleted it
    monkeypatch.setattr(h, "RESYNC", 0.0)
    assert state.recompute(policy(), [BAD], NOW) is True
    assert kube.calls == ["list", "apply", "list", "apply"]


def test_metrics_follow_the_results(kube: FakeKube) -> None:
    state = h.NamespaceReport(NS)
    state.recompute(policy(), [BAD, model("ok")], NOW)
    assert _metric(rb.RULE_REQUIRE_DIGEST, "fail") == 1
    assert _metric(rb.RULE_REQUIRE_DIGEST, "pass") == 1
    assert _metric(rb.RULE_REQUIRE_DIGEST, "warn") == 0
    state.retire()
    assert _metric(rb.RULE_REQUIRE_DIGEST, "fail") is None


def test_missing_crds_are_said_once_and_not_retried(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    kube.crds = False
    caplog.set_level(logging.INFO, logger=h.__name__)
    assert h.probe(NS) is False
    state = h.NamespaceReport(NS)
    for minutes in range(5):
        assert state.recompute(policy(), [BAD], NOW + timedelta(minutes=minutes)) is False
    assert kube.calls == ["list"]  # only the probe: no retry storm
    assert _metric(rb.RULE_REQUIRE_DIGEST, "fail") == 1  # the metrics still work
    said = [r for r in caplog.records if "OpenReports CRDs" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    state.retire()


def test_crds_appearing_later_are_used(kube: FakeKube, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    kube.crds = False
    caplog.set_level(logging.INFO, logger=h.__name__)
    h.probe(NS)
    kube.crds = True
    monkeypatch.setattr(h, "RECHECK", 0.0)
    assert h.NamespaceReport(NS).recompute(policy(), [BAD], NOW) is True
    assert any("OpenReports CRDs found" in r.getMessage() for r in caplog.records)


def test_crds_removed_while_running(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    state = h.NamespaceReport(NS)
    state.recompute(policy(), [BAD], NOW)
    kube.crds = False
    caplog.set_level(logging.INFO, logger=h.__name__)
    assert state.recompute(policy(), [model("ok")], NOW) is False  # apply 404 → probe → missing
    assert state.recompute(policy(), [BAD], NOW) is False
    assert kube.calls == ["list", "apply", "apply", "list"]
    assert sum("are not installed" in r.getMessage() for r in caplog.records) == 1
    state.retire()


def test_other_api_errors_propagate(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        raise KubeError(403, "Forbidden", "no")

    monkeypatch.setattr(kube, "apply", refuse)
    state = h.NamespaceReport(NS)
    with pytest.raises(KubeError):
        state.recompute(policy(), [BAD], NOW)
    assert state.cache_known is False  # read again next time
    state.retire()


def test_status_subset_keeps_what_the_report_reads() -> None:
    status = {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
                              "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 3}],
              "children": {"Deployment": "x"}, "vault": {"role": "r", "policy": "p"},
              "approvals": [{"name": "a"}] * 32, "lastAppliedImage": "img"}
    assert h.status_subset(status) == {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok"}],
        "children": {"Deployment": "x"}, "vault": {"role": "r", "policy": "p"}}


def test_namespaces_compute_their_reports_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every namespace's task computes at once after a restart: the semaphore takes them in
    turn (what a restart's memory peak was made of; bench/README.md, twelfth run)."""
    running: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    computed: list[str] = []

    def recompute(state: h.NamespaceReport, name: str, namespace: str) -> bool:
        running.append(namespace)
        if len(running) > 1:
            overlaps.append(tuple(running))
        time.sleep(0.02)
        running.remove(namespace)
        computed.append(namespace)
        return True

    monkeypatch.setattr(h, "_recompute", recompute)

    async def main() -> None:
        stop, computing = asyncio.Event(), asyncio.Semaphore(h.COMPUTING)
        tasks = [asyncio.create_task(h.compliance_report(stop, f"ns-{i}", "default", computing))
                 for i in range(4)]
        deadline = asyncio.get_running_loop().time() + 5
        while len(set(computed)) < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert sorted(set(computed)) == [f"ns-{i}" for i in range(4)]  # each computed at once
    assert overlaps == []
