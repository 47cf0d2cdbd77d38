"""The Vault step of a ModelDeployment: its policy and Kubernetes-auth role, written and removed.

- :func:`ensure` (called by the reconcile) reads the model's policy and role, compares them with
  the desired ones and writes only what differs. It never raises for Vault trouble: it returns a
  :class:`VaultOutcome` whose reason and message (naming the path or role) become the
  ``VaultReady`` condition.
- At deletion (:func:`cleanup_for_deletion`, run by the models' queue, which holds the
  finalizer ``mlsec.io/finalizer`` on models that use Vault) role and policy are removed; while
  Vault is unreachable it retries with backoff and says so in an event and in ``VaultReady``,
  and the object stays until the cleanup is done.
- An update that drops every secret and tls removes them too, and one loop compares each model's
  role and policy with Vault periodically (a dev-mode Vault comes back empty after a restart).

The operator writes only to the Vault it was configured with (``--vault-addr``); a policy naming
another address is refused, so a namespace can never make the operator log in elsewhere.
Nothing secret (tokens, JWTs, secret values) enters a message, event, status or audit record.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from mlsec import GROUP, VERSION
from mlsec.api import MLSecurityPolicy, ModelDeployment, ObjectMeta
from mlsec.audit.events import Action, Context, EventType, Resource, Result
from mlsec.builders import vault as build
from mlsec.builders.conditions import Cond, condition
from mlsec.builders.naming import namespace_of, service_account_name
from mlsec.clients.vault import (
    KubernetesLogin,
    Login,
    TokenFileLogin,
    Vault,
    VaultAuthError,
    VaultError,
    VaultForbidden,
    VaultUnavailable,
    projected_token,
    token_request,
)
from mlsec.handlers import context, leader, loops, model_store
from mlsec.handlers import policy as policies
from mlsec.handlers.settings import CONFIG
from mlsec.handlers.status import write_status

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
API = f"{GROUP}/{VERSION}"
CONDITION = "VaultReady"
# Status conditions written here (only while a deletion waits) use their own field manager, so they
# never take over or drop the conditions the reconcile applies.
STATUS_OWNER = "mlsec-operator-vault"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaultOutcome:
    ok: bool
    reason: str  # CamelCase, for the VaultReady condition
    message: str
    role: str | None = None
    policy_name: str | None = None
    transit_key: str | None = None  # pii/phi models: their transit key (kept after deletion)
    written: tuple[str, ...] = ()  # what had to be written ("policy ...", "role ..."); () if in sync


def needed(md: ModelDeployment) -> bool:
    """Whether ``md`` uses Vault (secrets or tls)."""
    return build.needs_vault(md)


# --- the operator's Vault client ------------------------------------------------------------------


@functools.cache
def vault_client() -> Vault | None:
    """The client for the configured Vault; None when the operator has no Vault address."""
    cfg = CONFIG.vault
    if not cfg.addr:
        return None
    login: Login
    if cfg.auth == "token":
        if not cfg.token_file:
            raise ValueError("--vault-auth token needs --vault-token-file")
        login = TokenFileLogin(cfg.token_file)
    elif Path(cfg.jwt_file).exists():
        login = KubernetesLogin(cfg.role, projected_token(cfg.jwt_file), cfg.auth_mount)
    else:
        namespace, _, name = cfg.service_account.partition("/")

        def jwt() -> str:  # a TokenRequest only when a login needs it
            return token_request(context.kube(), namespace, name, cfg.audience)()

        login = KubernetesLogin(cfg.role, jwt, cfg.auth_mount)
    return Vault(cfg.addr, login, ca_file=cfg.ca_file, timeout=cfg.timeout)


def _same_address(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def _client_for(vault_address: str | None) -> tuple[Vault | None, VaultOutcome | None]:
    """The client, or why the operator will not talk to that Vault."""
    try:
        client = vault_client()
    except ValueError as exc:
        return None, VaultOutcome(False, "VaultNotConfigured", str(exc))
    if client is None:
        return None, VaultOutcome(False, "VaultNotConfigured",
                                  "the operator has no Vault address (--vault-addr / VAULT_ADDR)")
    known = [client.address, *CONFIG.vault.addr_aliases]
    if vault_address is not None and not any(_same_address(vault_address, a) for a in known):
        return None, VaultOutcome(
            False, "VaultAddressMismatch",
            f"policy vault.address {vault_address} is not the Vault this operator manages "
            f"({', '.join(known)}); the operator logs in to no other address")
    return client, None


def _failure(exc: VaultError, client: Vault) -> VaultOutcome:
    """A Vault error as an outcome; its text names the operation and path, never a secret."""
    if isinstance(exc, VaultUnavailable):
        return VaultOutcome(False, "VaultUnavailable", f"Vault at {client.address} is unavailable: {exc}")
    if isinstance(exc, VaultAuthError):
        return VaultOutcome(False, "VaultAuthFailed", f"the operator cannot log in to Vault: {exc}")
    if isinstance(exc, VaultForbidden):
        return VaultOutcome(False, "VaultForbidden",
                            f"the operator's Vault policy does not allow this: {exc}")
    return VaultOutcome(False, "VaultRequestFailed", f"Vault refused a request: {exc}")


# --- ensure -----------------------------------------------------------------------------------


def _describe(md: ModelDeployment, mount: str) -> str:
    grants = "; ".join(f"{', '.join(caps)} {path}" for path, caps in build.grants(md).items())
    sa = f"{namespace_of(md)}/{service_account_name(md)}"
    return (f"Vault role auth/{mount}/role/{build.role_name(md)} (ServiceAccount {sa}) and "
            f"policy {build.policy_name(md)} ({grants})")


def ensure(md: ModelDeployment, policy: MLSecurityPolicy, client: Vault | None = None) -> VaultOutcome:
    """Make the model's Vault policy and role what its spec says; write only what differs."""
    name = build.vault_name(md)
    vault = policy.spec.vault
    where = f"MLSecurityPolicy {policy.metadata.namespace}/{policy.metadata.name}"
    if vault is None:
        return VaultOutcome(False, "VaultNotConfigured",
                            f"{where} has no vault section: secrets and tls are not allowed")
    refused = build.disallowed_paths(md, policy)
    if refused:
        return VaultOutcome(
            False, "SecretPathNotAllowed",
            f"vault.allowedSecretPaths of {where} does not allow {', '.join(refused)}; "
            "nothing was written to Vault")
    if client is None:
        client, why = _client_for(vault.address)
        if why is not None or client is None:
            return why or VaultOutcome(False, "VaultNotConfigured", "no Vault client")
    mount = vault.kubernetes_auth_mount
    written: list[str] = []
    try:
        live_role = client.read_kubernetes_role(mount, name)
        if live_role is not None and not build.owned_by(live_role, md):
            bound = (f"{','.join(live_role.get('bound_service_account_namespaces') or [])}/"
                     f"{','.join(live_role.get('bound_service_account_names') or [])}")
            return VaultOutcome(
                False, "VaultNameConflict",
                f"Vault role auth/{mount}/role/{name} exists and is bound to {bound}, not to this "
                "model's ServiceAccount; it is left alone (rename the ModelDeployment)")
        transit_key = None
        if build.needs_transit_key(md):
            # Before the policy that grants it: never a policy naming a key that does not exist.
            transit_key = build.transit_key_name(md)
            if client.ensure_transit_key(vault.transit_mount, transit_key):
                written.append(f"transit key {vault.transit_mount}/keys/{transit_key}")
        text = build.policy_hcl(md, vault.transit_mount)
        if client.read_policy(name) != text:
            client.write_policy(name, text)
            written.append(f"policy {name}")
        desired = build.role_definition(md)
        changed = build.role_differences(desired, live_role)
        if changed:
            client.write_kubernetes_role(mount, name, desired)
            written.append(f"role auth/{mount}/role/{name} ({', '.join(changed)})")
    except VaultError as exc:
        return _failure(exc, client)
    if written:
        _audit(EventType.VAULT_ROLE_WRITTEN, md, policy, mount, "WRITE", written)
    return VaultOutcome(True, "Written" if written else "InSync", _describe(md, mount),
                        role=name, policy_name=name, transit_key=transit_key, written=tuple(written))


# --- removal ------------------------------------------------------------------------------------


def remove(md: ModelDeployment, mount: str, client: Vault) -> list[str]:
    """Delete the model's role (if it is bound to this model) and policy; what was removed.

    A role of the same name bound elsewhere belongs to another model (see builders.vault): it and
    the policy of that name are left alone. Raises VaultError.
    """
    name = build.vault_name(md)
    live_role = client.read_kubernetes_role(mount, name)
    if live_role is not None and not build.owned_by(live_role, md):
        log.warning("Vault role auth/%s/role/%s is bound to another ServiceAccount: left alone",
                    mount, name)
        return []
    removed = []
    if live_role is not None:
        client.delete_kubernetes_role(mount, name)  # the role first: no new logins
        removed.append(f"role auth/{mount}/role/{name}")
    if client.read_policy(name) is not None:
        client.delete_policy(name)
        removed.append(f"policy {name}")
    return removed


def _retry_delay(retry: int) -> float:
    """Exponential backoff from 2 s, at most a minute: cleanup resumes soon after Vault is back."""
    return float(min(60, 2 * 2 ** min(retry, 5)))


def _mount(namespace: str) -> str:
    """The Kubernetes auth mount of the model's role: the policy's. Without a policy (deleted
    first, e.g. with its namespace) the mount the operator itself logs in through, which exists."""
    found = _policy_from_api(namespace)
    if found is not None and found.spec.vault is not None:
        return found.spec.vault.kubernetes_auth_mount
    return CONFIG.vault.auth_mount


def _policy_from_api(namespace: str) -> MLSecurityPolicy | None:
    """The namespace's policy in force (the oldest valid), read from the API (rare: deletions)."""
    items = context.kube().list(API, "MLSecurityPolicy", namespace)
    items.sort(key=lambda p: (str(p["metadata"].get("creationTimestamp", "")), p["metadata"]["name"]))
    for item in items:
        try:
            return MLSecurityPolicy.model_validate(item)
        except ValidationError:
            continue
    return None


def _identity(body: kopf.Body) -> ModelDeployment:
    """The model as far as naming needs it (its spec may not validate any more)."""
    try:
        return ModelDeployment.model_validate(dict(body))
    except ValidationError:
        meta = body.get("metadata", {})
        # Naming reads metadata only; the spec is left out on purpose.
        fields: dict[str, Any] = {"metadata": ObjectMeta(name=meta.get("name"),
                                                         namespace=meta.get("namespace"))}
        return ModelDeployment.model_construct(**fields)


def _release(body: kopf.Body, retry: int, *, deleting: bool) -> None:
    """Remove the model's Vault objects or raise kopf.TemporaryError (after saying why)."""
    md = _identity(body)
    name = build.vault_name(md)
    client, why = _client_for(None)
    if client is None:
        # No Vault configured: nothing this operator could have written, nothing to hold on to.
        log.warning("not removing Vault objects of %s/%s: %s", md.metadata.namespace,
                    md.metadata.name, why.message if why else "no client")
        return
    try:
        removed = remove(md, _mount(namespace_of(md)), client)
    except VaultError as exc:
        outcome = _failure(exc, client)
        stays = "the ModelDeployment stays until they are removed" if deleting else "retrying"
        message = f"cannot remove Vault role and policy {name} yet ({outcome.message}); {stays}"
        if deleting:  # the condition without the delay: it is written once, not every retry
            write_status(KIND, body, [Cond(CONDITION, False, "VaultCleanupPending", message)],
                         owner=STATUS_OWNER)
        message += f", next attempt in {_retry_delay(retry):.0f}s"
        context.post_event(body, "Warning", "VaultCleanupPending", message)
        raise kopf.TemporaryError(message, delay=_retry_delay(retry)) from None
    if removed:
        _audit(EventType.VAULT_ROLE_REMOVED, md, None, None, "DELETE", removed)
        context.post_event(body, "Normal", "VaultCleanedUp", f"removed {', '.join(removed)}")
    if deleting and _had_transit_key(body):
        _retained(md, body)


def _had_transit_key(body: kopf.Body) -> bool:
    spec = body.get("spec") or {}
    status_vault = (body.get("status") or {}).get("vault") or {}
    return (str(spec.get("dataClassification", "")) in {c.value for c in build.TRANSIT_CLASSIFICATIONS}
            or bool(status_vault.get("transitKey")))


def _retained(md: ModelDeployment, body: kopf.Body) -> None:
    """The model is gone, its transit key stays (data encrypted with it must stay readable):
    say so in the audit log and an event. ``mlsec vault delete-transit-key`` removes it on purpose."""
    key = build.transit_key_name(md)
    namespace = namespace_of(md)
    mount = build.TRANSIT_MOUNT
    found = _policy_from_api(namespace)
    if found is not None and found.spec.vault is not None:
        mount = found.spec.vault.transit_mount
    context.audit().record(
        EventType.VAULT_KEY_RETAINED,
        resource=Resource(type="VaultTransitKey", name=key, namespace=namespace),
        action=Action(type="RETAIN", details={
            "model_deployment": md.metadata.name, "key": f"{mount}/keys/{key}",
            "why": "data encrypted with the key must stay readable after the model is deleted",
            "remove_with": f"mlsec vault delete-transit-key {namespace} {md.metadata.name}"}),
        result=Result(status="SUCCESS"),
        context=Context(policy=None),
    )
    context.post_event(body, "Normal", "VaultTransitKeyRetained",
                       f"transit key {mount}/keys/{key} kept: data encrypted with it stays readable "
                       f"(remove on purpose: mlsec vault delete-transit-key {namespace} {md.metadata.name})")


def uses_vault(body: kopf.Body, **_: Any) -> bool:
    """Models that use Vault now, or did as far as status says: they get the finalizer."""
    spec = body.get("spec") or {}
    status_vault = (body.get("status") or {}).get("vault") or {}
    return bool(spec.get("secrets") or spec.get("tls") or status_vault.get("role")
                or status_vault.get("policy"))


def cleanup_for_deletion(body: dict[str, Any], attempt: int) -> None:
    """The model is being deleted (it holds the finalizer until this returns): remove its Vault
    role and policy, or raise kopf.TemporaryError with the delay before the next attempt."""
    _release(body, attempt, deleting=True)


def retire_unused(body: dict[str, Any]) -> None:
    """From the reconcile: remove the Vault objects of a model that no longer lists secrets or
    tls (least privilege), or raise kopf.TemporaryError."""
    _release(body, 0, deleting=False)


# --- periodic comparison ------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parse_policy(namespace: str, name: str, generation: int, spec_json: str) -> MLSecurityPolicy | None:
    try:
        return MLSecurityPolicy.model_validate(
            {"metadata": {"name": name, "namespace": namespace}, "spec": json.loads(spec_json)})
    except ValidationError:
        return None


def _policy_from_index(namespace: str, indexes: dict[str, Any]) -> MLSecurityPolicy | None:
    index = indexes.get("policies_by_namespace")
    entry = policies.active_policy(index, namespace) if index is not None else None
    if entry is None:
        return None
    name, generation, spec = entry[1], entry[2], entry[3]  # (created, name, generation, spec, ...)
    return _parse_policy(namespace, name, generation, json.dumps(spec, sort_keys=True))


def resync(namespace: str, name: str, indexes: dict[str, Any]) -> None:
    """Level-based: repair the model's Vault objects if Vault lost or changed them, or remove them
    if the model no longer uses Vault (the update handler may have missed it); the reconcile
    reports. Reads the model (one GET): nothing of it is kept between passes."""
    if not leader.leading():
        return
    body = context.kube().get(API, KIND, namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp") or not uses_vault(body):
        return
    if not _needs_vault_body(body.get("spec") or {}):
        try:
            _release(body, 0, deleting=False)
        except kopf.TemporaryError as exc:
            log.warning("%s/%s: %s", namespace, name, exc)
        return
    pol = _policy_from_index(namespace, indexes)
    if pol is None:
        return  # the reconcile reports a missing or invalid policy
    try:
        md = ModelDeployment.model_validate(body)
    except ValidationError:
        return
    outcome = ensure(md, pol)
    report_repair(body, outcome)
    shown = condition(body.get("status"), CONDITION)
    if shown and (shown.get("status") != ("True" if outcome.ok else "False")
                  or (not outcome.ok and shown.get("reason") != outcome.reason)):
        # The condition is the reconcile's: ask it to run again and report.
        from mlsec.handlers import deployment  # import here: deployment imports this module

        deployment.reconcile(namespace, name, indexes)


def repair_message(body: Mapping[str, Any], outcome: VaultOutcome, *,
                   after_failure: bool = False) -> str | None:
    """The VaultDriftRepaired text when ``outcome`` wrote Vault objects back, else None.

    The resync loop repairs by definition (``after_failure`` False). A reconcile writes for many
    reasons (a new model, a new spec or policy); it repaired when the model's last reconcile, at
    this same generation, found Vault not ready (``after_failure``): after an outage, the
    reconcile's retry and the resync loop race to rewrite what Vault lost, and the event must
    not depend on which one wins."""
    if not outcome.ok or not outcome.written:
        return None
    if after_failure:
        status = body.get("status") or {}
        shown = condition(status, CONDITION)
        generation = (body.get("metadata") or {}).get("generation")
        if generation is None or status.get("observedGeneration") != generation \
                or not shown or shown.get("status") != "False":
            return None
    return f"rewrote {', '.join(outcome.written)}"


def report_repair(body: Mapping[str, Any], outcome: VaultOutcome, *, after_failure: bool = False) -> None:
    if (message := repair_message(body, outcome, after_failure=after_failure)) is not None:
        context.post_event(body, "Normal", "VaultDriftRepaired", message)


def _needs_vault_body(spec: Any) -> bool:
    return bool(spec.get("secrets") or spec.get("tls"))


def resync_candidates(indexes: dict[str, Any]) -> list[tuple[str, str]]:
    """(namespace, name) of every model that uses Vault, or did as far as its status says."""
    index = indexes.get("report_models", model_store.STORE.report_models)
    out = []
    for namespace in list(index):
        for name, _uid, spec, status, deleting in context.snapshot(index, namespace):
            held = status.get("vault") or {}
            if not deleting and (_needs_vault_body(spec) or held.get("role") or held.get("policy")):
                out.append((namespace, name))
    return sorted(out)


# One loop for all models rather than a kopf timer per model: kopf keeps the whole last-seen body
# (with its managedFields) of every object of a kind that has a timer, whether or not the timer's
# filter matches it: ~20 KiB per model, ~100 MiB at 5,000 models.
async def _resync_loop(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if not leader.leading():
            continue
        indexes = leader.indexes()
        for namespace, name in resync_candidates(indexes):
            try:
                await asyncio.to_thread(resync, namespace, name, indexes)
            except kopf.TemporaryError as exc:
                log.warning("%s/%s: %s", namespace, name, exc)
            except Exception:
                log.exception("Vault resync of %s/%s failed", namespace, name)


loops.operator_loop("vault-resync", lambda: _resync_loop(CONFIG.vault.resync_seconds),
                    enabled=lambda: CONFIG.vault.resync_seconds > 0)


@kopf.on.startup()
def check_vault(logger: kopf.Logger, **_: Any) -> None:
    """Log in once at start-up so that a misconfiguration shows early (never fatal)."""
    try:
        client = vault_client()
    except ValueError as exc:
        logger.error("Vault is misconfigured: %s", exc)
        return
    if client is None:
        logger.warning("no Vault address (--vault-addr / VAULT_ADDR): models using Vault are not "
                       "rolled out")
        return
    try:
        client.login()
        logger.info("Vault at %s: logged in", client.address)
    except VaultError as exc:
        logger.warning("Vault at %s: %s (will retry per model)", client.address, exc)


# --- audit ------------------------------------------------------------------------------------


def _audit(event: EventType, md: ModelDeployment, policy: MLSecurityPolicy | None, mount: str | None,
           action: str, changes: list[str]) -> None:
    details: dict[str, Any] = {"changes": changes, "model_deployment": md.metadata.name}
    if mount is not None:
        details["auth_mount"] = mount
        details["grants"] = build.grants(md)  # paths and capabilities: names, never values
        details["service_account"] = service_account_name(md)
    context.audit().record(
        event,
        resource=Resource(type="VaultRole", name=build.vault_name(md), namespace=md.metadata.namespace,
                          version=str(md.metadata.generation) if md.metadata.generation else None),
        action=Action(type=action, details=details),
        result=Result(status="SUCCESS"),
        context=Context(policy=f"{policy.metadata.namespace}/{policy.metadata.name}" if policy else None),
    )
