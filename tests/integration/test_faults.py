"""Faults (issue 9): the operator killed mid-work, the API server restarted, LDAP, OpenBao and the
webhook down — and everything converges afterwards.

Bounded: the whole module takes a few minutes in ``make test``. The long variants (≥ 20 SIGKILLs
with leader election, slapd down for five minutes across scheduled syncs) run with
``MLSEC_LONG_FAULTS=1``. Each test runs its own operator as the only replica (the session's
operator, if running, is stood down meanwhile and started again afterwards).
"""

from __future__ import annotations

import base64
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import kubernetes
import pytest
import yaml

from mlsec.api import ModelDeployment
from mlsec.api.ledger import unpack_releases
from mlsec.builders import vault as vault_build
from mlsec.builders.children import CHILD_KINDS, child_names
from mlsec.builders.naming import MANAGED_BY
from mlsec.clients.kube import Kube, KubeError
from mlsec.local import env as local
from mlsec.local import procs

from . import resources as r
from .conftest import OperatorProcess, wait_until
from .gate_env import EXPECTED_BINDINGS, Gate, delete_webhook_configs, ldap_policy, running_shared_operator

LONG = os.environ.get("MLSEC_LONG_FAULTS") == "1"
MD = "ModelDeployment"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
RBAC = "rbac.authorization.k8s.io/v1"
ALLOWED = ["secret/data/ml-models/*", "database/creds/*", "pki/issue/ml-serving-*"]


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def sole_operator(request: pytest.FixtureRequest, localenv: local.LocalEnv, workdir: Path,
                  *flags: str) -> Iterator[OperatorProcess]:
    """An operator of this test, the only replica while it runs."""
    shared = running_shared_operator(request)
    restart = shared is not None and shared.proc is not None and shared.proc.poll() is None
    if shared is not None:
        shared.stop()
    op = OperatorProcess(localenv, workdir, *flags)
    try:
        yield op.start()
    finally:
        op.stop()
        if shared is not None and restart:
            shared.start()


def vault_policy(localenv: local.LocalEnv, namespace: str) -> dict[str, Any]:
    return r.policy(namespace, vault={"address": localenv.vault_addr, "kubernetesAuthMount": "kubernetes",
                                      "allowedSecretPaths": ALLOWED})


def root_vault(localenv: local.LocalEnv) -> hvac.Client:
    return hvac.Client(url=localenv.vault_addr, token=localenv.vault_token)


def vault_objects(root: hvac.Client, name: str) -> tuple[str | None, dict[str, Any] | None]:
    """(policy text, role data) of ``name`` in OpenBao; None for what is missing."""
    try:
        text = root.sys.read_acl_policy(name)["data"]["policy"]
    except hvac.exceptions.InvalidPath:
        text = None
    try:
        role = (root.read(f"auth/kubernetes/role/{name}") or {}).get("data")
    except hvac.exceptions.InvalidPath:
        role = None
    return text, role


def vault_name(namespace: str, name: str) -> str:
    return vault_build.vault_name(ModelDeployment.model_validate(r.model(namespace, name, vault=True)))


def ready(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    obj = kube.get(r.API, MD, namespace, name)
    return obj if r.has_condition(obj, "Ready", "True") and \
        (obj or {}).get("status", {}).get("observedGeneration") == obj["metadata"]["generation"] else None  # type: ignore[index]


# What a just-restarted API server answers for a while: 503 for custom resources until it has
# loaded the CRDs again, and its admission policies cannot resolve their paramKind (PromotionLedger).
# Under load its lookup of a binding's param can also time out ("failed to configure binding").
NOT_YET = ("failed to configure policy", "failed to find resource referenced by paramKind",
           "failed to configure binding")


def retried(call: Callable[[], Any], seconds: float = 60) -> Any:
    """A client call right after an API server restart: retried over a connection the server
    closed, and while admission refuses for a moment (NOT_YET)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except KubeError as exc:
            refused = exc.status == 422 and any(t in exc.message for t in NOT_YET)
            transient = refused or exc.status in (429, 503)
            if not transient or time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def converge(check: Callable[[], list[str]], timeout: float, what: str) -> None:
    """Wait until ``check`` finds no problem; fail with the problems it still found."""
    deadline = time.monotonic() + timeout
    problems = ["never checked"]
    while time.monotonic() < deadline:
        problems = check()
        if not problems:
            return
        time.sleep(2)
    pytest.fail(f"{what}: not converged after {timeout:.0f}s: {problems[:15]}")


# --- SIGKILL at random points -------------------------------------------------------------------


class Killer(threading.Thread):
    """SIGKILLs the operator a random while after each start, and starts it again, until told to
    stop and at least ``minimum`` kills were made."""

    def __init__(self, op: OperatorProcess, rnd: random.Random, minimum: int,
                 up: tuple[float, float]) -> None:
        super().__init__(name="killer", daemon=True)
        self.op, self.rnd, self.minimum, self.up = op, rnd, minimum, up
        self.kills = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set() or self.kills < self.minimum:
                time.sleep(self.rnd.uniform(*self.up))
                self.op.stop(signal.SIGKILL)
                self.kills += 1
                self.op.start()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _children_problems(kube: Kube, ns: str, root: hvac.Client, deleted: set[str],
                       vault_models: set[str]) -> list[str]:
    problems: list[str] = []
    models = {m["metadata"]["name"]: m for m in kube.list(r.API, MD, ns)}
    uids = {m["metadata"]["uid"]: name for name, m in models.items()}
    for name, m in models.items():
        if m["metadata"].get("deletionTimestamp"):
            problems.append(f"{name} still being deleted")
        elif not r.has_condition(m, "Ready", "True") or \
                (m.get("status") or {}).get("observedGeneration") != m["metadata"]["generation"]:
            problems.append(f"{name} not Ready for generation {m['metadata']['generation']}")
    owned: Counter[tuple[str, str]] = Counter()
    for api_version, kind in CHILD_KINDS:
        for child in kube.list(api_version, kind, ns, label_selector=SELECTOR):
            refs = [ref["uid"] for ref in child["metadata"].get("ownerReferences") or []]
            owners = [uids[u] for u in refs if u in uids]
            if not owners:
                problems.append(f"orphan {kind}/{child['metadata']['name']}")
                continue
            owned[(kind, owners[0])] += 1
            if kind == "Deployment":
                spec = models[owners[0]]["spec"]
                pod = child["spec"]["template"]
                if pod["metadata"]["labels"].get("mlsec.io/stage") == "production":
                    problems.append(f"Deployment {owners[0]} runs production without approvals")
                if pod["spec"]["containers"][0]["image"] != spec["image"] or \
                        child["spec"]["replicas"] != spec.get("replicas", 1):
                    problems.append(f"Deployment {owners[0]} does not match its spec")
    for name, m in models.items():
        if m["metadata"].get("deletionTimestamp"):
            continue
        for _, kind in CHILD_KINDS:
            n = owned[(kind, name)]
            if n != 1:
                problems.append(f"{name}: {n} x {kind}")
    for name in deleted:
        if name in models:
            problems.append(f"deleted {name} still exists")
        if any(vault_objects(root, vault_name(ns, name))):
            problems.append(f"Vault role or policy left for deleted {name}")
    for name in vault_models - deleted:
        if name in models and not all(vault_objects(root, vault_name(ns, name))):
            problems.append(f"Vault role or policy missing for {name}")
    return problems


def test_sigkill_at_random_points_during_200_changes_converges(
        request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None, kube: Kube,
        namespace: str, tmp_path: Path) -> None:
    """SIGKILL the operator at random points while 200 changes (creates, new versions, scaling,
    deletions, refused promotions) are made to ModelDeployments, half of them using Vault. After
    the last restart: every model Ready for its current generation, exactly one child of each kind
    per model and no orphan, no production rollout (no approvals exist), no Vault role or policy
    left for a deleted model and none missing for a live one.

    Default: ≥ 5 kills, without leader election (a restarted replica acts at once). Long
    (MLSEC_LONG_FAULTS=1): ≥ 20 kills with leader election (each restart waits out the dead
    holder's Lease, as a real replacement pod does)."""
    seed = int(os.environ.get("MLSEC_FAULT_SEED", str(random.randrange(2**32))))
    rnd = random.Random(seed)
    print(f"seed {seed} (MLSEC_FAULT_SEED to replay)")
    kube.create(vault_policy(localenv, namespace))
    flags = () if LONG else ("--no-leader-election",)
    minimum, pace, up = (20, 1.2, (1.0, 6.0)) if LONG else (5, 0.15, (2.0, 7.0))
    root = root_vault(localenv)
    live: dict[str, int] = {}  # name -> version
    deleted: set[str] = set()
    with_vault: set[str] = set()
    refused = allowed = 0
    counter = 0

    def patch(name: str, spec: dict[str, Any]) -> None:
        retried(lambda: kube.patch(r.API, MD, namespace, name, {"spec": spec}))

    def create() -> None:
        nonlocal counter
        name = f"k-{counter:03d}"
        counter += 1
        vault = counter % 2 == 0
        retried(lambda: kube.create(r.model(namespace, name, vault=vault)))
        live[name] = 3
        if vault:
            with_vault.add(name)

    with sole_operator(request, localenv, tmp_path, *flags) as op:
        killer = Killer(op, rnd, minimum, up)
        killer.start()
        started = time.monotonic()
        changes = 0
        while changes < 200:
            action = "create" if len(live) < 12 else rnd.choices(
                ["version", "scale", "delete", "create", "promote"], [45, 15, 12, 18, 10])[0]
            name = rnd.choice(sorted(live)) if live else ""
            try:
                if action == "create":
                    create()
                elif action == "version":
                    live[name] += 1
                    v = str(live[name])
                    patch(name, {"version": v, "image": r.model(namespace, name, version=v)["spec"]["image"]})
                elif action == "scale":
                    patch(name, {"replicas": rnd.randint(1, 3)})
                elif action == "delete":
                    kube.delete(r.API, MD, namespace, name)
                    live.pop(name)
                    deleted.add(name)
                else:
                    try:
                        patch(name, {"stage": "production"})
                        allowed += 1
                    except KubeError as exc:
                        assert exc.status in (403, 422), exc
                        refused += 1
            except KubeError as exc:
                if exc.status != 409:  # a conflict with the operator's own write: try another
                    raise
            changes += 1
            time.sleep(pace)
        changed = time.monotonic()
        killer.done.set()
        killer.join(timeout=600)
        assert killer.error is None, f"restarting the operator failed: {killer.error!r}"
        assert killer.kills >= minimum
        if op.proc is None or op.proc.poll() is not None:
            op.start()
        last_start = time.monotonic()
        converge(lambda: _children_problems(kube, namespace, root, deleted, with_vault),
                 timeout=240 if LONG else 150, what=f"after {killer.kills} kills")
    print(f"{killer.kills} kills, {changes} changes in {changed - started:.0f}s; converged "
          f"{time.monotonic() - last_start:.0f}s after the last start: {len(live)} models live, "
          f"{len(deleted)} deleted, {refused} promotions refused, {allowed} allowed")
    assert allowed == 0, "a promotion without approvals was admitted"


# --- the API server restarts --------------------------------------------------------------------


def test_watches_resume_after_an_api_server_restart(
        request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None, kube: Kube,
        namespace: str, tmp_path: Path) -> None:
    """kube-apiserver stopped and started again while the operator runs: a change made after the
    restart is reconciled within 10 s (watches resumed, no stale connection, no long backoff)."""
    kube.create(r.policy(namespace))
    with sole_operator(request, localenv, tmp_path) as op:
        kube.create(r.model(namespace, "survivor"))
        wait_until(lambda: ready(kube, namespace, "survivor"), timeout=60, what="survivor Ready")
        local.stop_component(localenv, "kube-apiserver")
        try:
            time.sleep(3)
        finally:
            local.start_component(localenv, "kube-apiserver")
        restarted = time.monotonic()
        out = retried(lambda: kube.patch(r.API, MD, namespace, "survivor", {"spec": {
            "version": "4", "image": r.model(namespace, "survivor", version="4")["spec"]["image"]}}))
        changed = time.monotonic()  # the change is made when the API server accepts it
        print(f"the restarted API server accepted the change after {changed - restarted:.1f}s")
        generation = out["metadata"]["generation"]

        def reconciled() -> dict[str, Any] | None:
            obj = retried(lambda: kube.get(r.API, MD, namespace, "survivor"))
            return obj if r.has_condition(obj, "Ready", "True") and \
                obj["status"].get("observedGeneration") == generation else None

        wait_until(reconciled, timeout=30, interval=0.2, what="the change after the restart reconciled")
        took = time.monotonic() - changed
        print(f"change after the API server restart reconciled in {took:.1f}s")
        assert took <= 10, f"reconciled {took:.1f}s after the change (goal ≤ 10 s); log: {op.log()[-3000:]}"
        dep = kube.get("apps/v1", "Deployment", namespace, "survivor")
        assert dep and dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
            r.digest("survivor4"))
        assert op.proc is not None and op.proc.poll() is None


# --- LDAP down ----------------------------------------------------------------------------------


class Bindings:
    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.ns = kube, namespace

    def subjects(self) -> dict[str, list[str]]:
        items = self.kube.list(RBAC, "RoleBinding", self.ns, label_selector=SELECTOR)
        return {b["metadata"]["labels"]["mlsec.io/platform-role"]:
                [s["name"] for s in b.get("subjects") or []] for b in items}

    def versions(self) -> dict[str, str]:
        out = {}
        for kind in ("Role", "RoleBinding"):
            for o in self.kube.list("rbac.authorization.k8s.io/v1", kind, self.ns, label_selector=SELECTOR):
                out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        return out

    def ldap_condition(self) -> dict[str, Any] | None:
        return r.condition(self.kube.get(r.API, "MLSecurityPolicy", self.ns, "default"), "LDAPSynced")

    def touch(self) -> None:
        self.kube.patch(r.API, "MLSecurityPolicy", self.ns, "default", {"metadata": {"annotations": {
            "ldap.mlsec.io/sync-requested": str(time.time())}}})


def _ldap_namespace(kube: Kube, localenv: local.LocalEnv, namespace: str, ldap_info: dict[str, str]) -> None:
    for name, key, value in (("ldap-bind", "password", ldap_info["bind_password"]),
                             ("ldap-ca", "ca.crt", Path(ldap_info["ca_file"]).read_text())):
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                     "data": {key: base64.b64encode(value.encode()).decode()}})
    policy = ldap_policy(namespace, ldap_info)
    policy["spec"]["ldap"]["syncInterval"] = "30s"  # the shortest allowed: outages span syncs
    kube.create(policy)


def test_ldap_outage_across_syncs_and_a_restart_loses_no_rolebinding(
        request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None, kube: Kube,
        namespace: str, ldap_info: dict[str, str], tmp_path: Path) -> None:
    """slapd down (syncInterval 30s): requested and scheduled syncs fail, the operator is even
    SIGKILLed and restarted meanwhile — no Role or RoleBinding is deleted or rewritten; once slapd
    is back the next sync succeeds without a write. Long variant: five minutes down."""
    _ldap_namespace(kube, localenv, namespace, ldap_info)
    b = Bindings(kube, namespace)
    with sole_operator(request, localenv, tmp_path) as op:
        wait_until(lambda: b.subjects() == EXPECTED_BINDINGS, timeout=60, what="RoleBindings from LDAP")
        wait_until(lambda: (b.ldap_condition() or {}).get("status") == "True", timeout=30, what="LDAPSynced")
        before = b.versions()
        local.stop_component(localenv, "slapd")
        try:
            b.touch()
            wait_until(lambda: (b.ldap_condition() or {}).get("status") == "False", timeout=40,
                       what="LDAPSynced=False while slapd is down")
            op.stop(signal.SIGKILL)
            op.start()
            down_for = 300 if LONG else 35  # > one syncInterval: at least one scheduled sync fails
            ends = time.monotonic() + down_for
            while time.monotonic() < ends:
                assert b.subjects() == EXPECTED_BINDINGS, "a RoleBinding changed during the outage"
                time.sleep(5)
            assert b.versions() == before, "Roles or RoleBindings were rewritten during the outage"
            assert (b.ldap_condition() or {}).get("status") == "False"
        finally:
            local.start_component(localenv, "slapd")
        b.touch()
        wait_until(lambda: (b.ldap_condition() or {}).get("status") == "True", timeout=60,
                   what="LDAPSynced=True after slapd is back")
        assert b.subjects() == EXPECTED_BINDINGS
        assert b.versions() == before, "the first sync after the outage rewrote unchanged bindings"


# --- OpenBao down -------------------------------------------------------------------------------


def test_openbao_outage_backs_off_writes_nothing_half_and_recovers(
        request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None, kube: Kube,
        namespace: str, tmp_path: Path) -> None:
    """OpenBao down: a new model using Vault is held back (no child, no Deployment, nothing in
    Vault) and retried with a backoff, not in a tight loop; OpenBao comes back empty (dev mode):
    the operator rewrites the role and policy of the model that had them and writes the new one's,
    exactly as built, and both roll out."""
    kube.create(vault_policy(localenv, namespace))
    root = root_vault(localenv)
    with sole_operator(request, localenv, tmp_path, "--vault-resync-seconds", "5") as op:
        kube.create(r.model(namespace, "before", vault=True))
        wait_until(lambda: ready(kube, namespace, "before"), timeout=60, what="before Ready")
        assert all(vault_objects(root, vault_name(namespace, "before")))
        local.stop_component(localenv, "openbao")
        try:
            kube.create(r.model(namespace, "during", vault=True))

            def held() -> dict[str, Any] | None:
                obj = kube.get(r.API, MD, namespace, "during")
                return obj if r.has_condition(obj, "VaultReady", "False", "VaultUnavailable") else None

            wait_until(held, timeout=30, what="during: VaultReady=False VaultUnavailable")
            t0 = time.monotonic()
            attempts_before = op.log().count("Vault at")
            time.sleep(20)
            for api_version, kind in CHILD_KINDS:
                written = kube.list(api_version, kind, namespace,
                                    label_selector="app.kubernetes.io/instance=during")
                assert written == [], f"{kind} written for a model whose Vault role could not be written"
            attempts = op.log().count("Vault at") - attempts_before
            assert attempts <= 10, f"{attempts} Vault failures in {time.monotonic() - t0:.0f}s: no backoff"
            md = kube.get(r.API, MD, namespace, "during")
            assert r.condition(md, "Ready")["reason"] == "VaultNotReady"  # type: ignore[index]
        finally:
            local.start_component(localenv, "openbao")
        assert vault_objects(root, vault_name(namespace, "during")) == (None, None)
        for name in ("before", "during"):
            wait_until(lambda n=name: all(vault_objects(root, vault_name(namespace, n))),  # type: ignore[misc]
                       timeout=90, what=f"role and policy of {name} rewritten after the restart")
            wait_until(lambda n=name: ready(kube, namespace, n), timeout=60,  # type: ignore[misc]
                       what=f"{name} Ready after the outage")
            md_obj = ModelDeployment.model_validate(kube.get(r.API, MD, namespace, name))
            text, role = vault_objects(root, vault_name(namespace, name))
            assert text == vault_build.policy_hcl(md_obj)
            desired = vault_build.role_definition(md_obj)
            assert role is not None and not vault_build.role_differences(desired, role)
        assert kube.get("apps/v1", "Deployment", namespace, "during") is not None


# --- the webhook down ---------------------------------------------------------------------------


def test_webhook_down_promotions_fail_closed_and_nothing_else_is_blocked(
        request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None,
        admin_client: kubernetes.client.ApiClient, kube_as: Callable[[str], Kube],
        ldap_info: dict[str, str], tmp_path: Path) -> None:
    """As installed (native admission policies plus the webhook, failure policy auto): with every
    replica stopped, an unapproved promotion is refused, an approved one (its release in the
    ledger) still goes through, and writes outside mlsec.io — and staging changes — are not
    blocked or delayed by the dead webhook."""
    g = Gate(localenv, admin_client, kube_as, f"fault-gate-{os.urandom(3).hex()}")
    g.create_namespace()
    port = procs.free_port()
    try:
        g.ldap_secrets(ldap_info)
        g.admin.create(ldap_policy(g.ns, ldap_info))
        with sole_operator(request, localenv, tmp_path, "--webhook-port", str(port)) as op:
            wait_until(lambda: g.platform_bindings() == EXPECTED_BINDINGS, timeout=60,
                       what="RoleBindings from LDAP")
            wait_until(lambda: _webhooks_registered(localenv, port), timeout=30, what="webhooks registered")
            g.model("alice", "approved")
            g.model("alice", "unapproved")
            g.counted(g.approve("carol", "approved"))
            g.counted(g.approve("dave", "approved"))
            wait_until(lambda: "approved" in unpack_releases(
                           ((g.admin.get(r.API, "PromotionLedger", g.ns, "promotion-ledger") or {})
                            .get("spec") or {}).get("releases") or ""),
                       timeout=30, what="the approved release in the ledger")
            op.stop()
        assert _webhooks_registered(localenv, port), "the webhook configuration should outlive the replica"
        err = g.refused(lambda: g.change("bob", "unapproved", stage="production"))
        assert err.status in (403, 422) and "unapproved" in err.message, err
        g.change("bob", "approved", stage="production")
        started = time.monotonic()
        g.admin.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "unrelated", "namespace": g.ns}, "data": {"k": "v"}})
        g.change("alice", "unapproved", replicas=3)
        took = time.monotonic() - started
        assert took < 3, f"writes took {took:.1f}s with the webhook down"
    finally:
        delete_webhook_configs(localenv)
        g.delete_namespace()


def _webhooks_registered(localenv: local.LocalEnv, port: int) -> bool:
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        got = localenv.kubectl("get", kind, "mlsec.io", "-o", "yaml", check=False)
        if got.returncode != 0:
            return False
        hooks = (yaml.safe_load(got.stdout) or {}).get("webhooks") or []
        if not hooks or any(f":{port}/" not in (h.get("clientConfig") or {}).get("url", "") for h in hooks):
            return False
    return True




def test_restart_with_many_models_resumes_them_all(
        request: pytest.FixtureRequest, localenv: local.LocalEnv, crds_installed: None, kube: Kube,
        namespace: str, tmp_path: Path) -> None:
    """A restart with more ModelDeployments than kopf once had workers for (a limit of 50 deadlocked
    it: each worker held its slot while waiting for every index to be complete) resumes them all,
    including what changed while no operator ran."""
    kube.create(r.policy(namespace))
    names = [f"r-{i:03d}" for i in range(80)]
    for name in names:
        kube.create(r.model(namespace, name))

    def all_ready() -> bool:
        return all(ready(kube, namespace, name) for name in names)

    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    with sole_operator(request, localenv, tmp_path / "first", "--no-leader-election"):
        wait_until(all_ready, timeout=240, what="80 models Ready")
    # While no operator runs: a child is deleted, a model is scaled.
    service = child_names(ModelDeployment.model_validate(kube.get(r.API, MD, namespace, names[0])))["Service"]
    deployment = child_names(ModelDeployment.model_validate(kube.get(r.API, MD, namespace, names[-1])))[
        "Deployment"]
    assert kube.delete("v1", "Service", namespace, service)
    kube.patch(r.API, MD, namespace, names[-1], {"spec": {"replicas": 3}})

    def scaled() -> bool:
        live = kube.get("apps/v1", "Deployment", namespace, deployment) or {}
        return bool(ready(kube, namespace, names[-1])) and live.get("spec", {}).get("replicas") == 3

    with sole_operator(request, localenv, tmp_path / "second", "--no-leader-election"):
        wait_until(lambda: kube.get("v1", "Service", namespace, service), timeout=120,
                   what="the deleted Service recreated after the restart")
        wait_until(scaled, timeout=120, what="the scaled model rolled out")
        assert all_ready()
