"""hypothesis strategies: valid specs of the three kinds, and mutations that make them invalid.

Valid specs are built field by field from the API's own constraints (mlsec.api); every mutation
names the field path (as validation_messages prints it, camelCase) that the error must name.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from mlsec.api import DataClassification, PlatformRole, Stage

Spec = dict[str, Any]
Mutation = tuple[str, Spec]  # (the field path an error must name, the invalid spec)

# --- atoms ------------------------------------------------------------------------------------------

LOWER = string.ascii_lowercase + string.digits
ALNUM = string.ascii_letters + string.digits


def _word(first: str, middle: str, last: str, max_middle: int) -> st.SearchStrategy[str]:
    """first char, up to ``max_middle`` middle chars, a last char (when there is a middle).
    (st.text + map: an order of magnitude cheaper to draw than st.from_regex.)"""
    return st.builds(lambda a, m, z: a + (m + z if z else ""),
                     st.sampled_from(first), st.text(middle, max_size=max_middle),
                     st.just("") | st.sampled_from(last))


dns_label = _word(LOWER, LOWER + "-", LOWER, 61)
dns_subdomain = st.lists(_word(LOWER, LOWER + "-", LOWER, 14), min_size=1, max_size=4).map(".".join)
# A custom resource's name: a DNS subdomain of up to 253 characters (children need ≤ 63: naming).
object_name = st.lists(_word(LOWER, LOWER + "-", LOWER, 40), min_size=1, max_size=7).map(".".join).filter(
    lambda s: len(s) <= 253)
version = _word(ALNUM, ALNUM + "._-", ALNUM + "._-", 20)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
image_digest = hex64.map(lambda h: f"sha256:{h}")
registry = st.sampled_from(["registry.hospital.com", "registry.hospital.com:5000", "docker.io",
                            "localhost", "ghcr.io", ""])
repo_path = st.lists(_word(LOWER, LOWER + "-", LOWER, 12), min_size=1, max_size=3).map("/".join)
image = st.builds(
    lambda reg, path, tag, dig: (f"{reg}/" if reg else "") + path + (f":{tag}" if tag else "")
    + (f"@{dig}" if dig else ""),
    registry, repo_path, st.none() | _word(ALNUM + "_", ALNUM + "_.-", ALNUM, 10),
    st.none() | image_digest,
)
quantity = st.integers(0, 10**6) | st.builds(
    lambda n, frac, unit: f"{n}{frac}{unit}", st.integers(0, 9999),
    st.sampled_from(["", ".5", ".25"]), st.sampled_from(["", "m", "Ki", "Mi", "Gi", "Ti", "k", "M", "G"]))
segment = st.text(ALNUM + "_+-", min_size=1, max_size=12)
vault_path = st.lists(segment, min_size=1, max_size=5).map("/".join)
# Any user name but control characters (mlsec.api.common.USER_NAME_PATTERN).
user = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40)
stage = st.sampled_from([s.value for s in Stage])
classification = st.sampled_from([d.value for d in DataClassification])
role = st.sampled_from([r.value for r in PlatformRole])
rdn_value = _word(ALNUM, ALNUM + "_ .-", ALNUM + "_.-", 10)
dn = st.lists(st.tuples(st.sampled_from(["cn", "ou", "dc", "uid"]), rdn_value), min_size=1,
              max_size=3).map(lambda parts: ",".join(f"{a}={v}" for a, v in parts))
sync_interval = st.sampled_from(["30s", "1m", "5m", "90s", "1h30m", "1.5h", "24h", "2h", "45m"])
approval_ttl = st.sampled_from(["1m", "5m", "90s", "1h30m", "1.5h", "24h", "168h", "8760h", "720h"])
host = st.sampled_from(["ldap.hospital.com", "127.0.0.1", "localhost", "vault.hospital.com",
                        "[::1]", "a-b.c"]) | dns_subdomain
port = st.none() | st.integers(1, 65535)


def _url(scheme: str) -> st.SearchStrategy[str]:
    return st.builds(lambda h, p: f"{scheme}://{h}" + (f":{p}" if p else ""), host, port)


def secret_ref() -> st.SearchStrategy[Spec]:
    return st.fixed_dictionaries({"name": dns_subdomain,
                                  "key": st.text(ALNUM + "-._", min_size=1, max_size=20)})


# --- ModelDeployment ----------------------------------------------------------------------------


@st.composite
def model_spec(draw: st.DrawFn) -> Spec:
    spec: Spec = {
        "model": draw(dns_label),
        "version": draw(version),
        "image": draw(image),
        "stage": draw(stage),
        "dataClassification": draw(classification),
        "owner": draw(user),
    }
    if draw(st.booleans()):
        spec["replicas"] = draw(st.integers(0, 100))
    if draw(st.booleans()):
        spec["port"] = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        keys = st.sampled_from(["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"])
        spec["resources"] = {part: draw(st.dictionaries(keys, quantity, max_size=3))
                             for part in draw(st.lists(st.sampled_from(["requests", "limits"]),
                                                       unique=True, max_size=2))}
    names = draw(st.lists(_word(LOWER, LOWER + "-", LOWER, 18), unique=True, max_size=4))
    if names:
        spec["secrets"] = [{"name": n, "path": draw(vault_path)} for n in names]
    if draw(st.booleans()):
        spec["tls"] = {"pkiRole": draw(_word(ALNUM, ALNUM + "_.-", ALNUM, 10)),
                       "commonName": draw(dns_subdomain.filter(lambda s: len(s) <= 64))}
    return spec


def _set(spec: Spec, path: list[str | int], value: Any) -> Spec:
    out = copy.deepcopy(spec)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _drop(spec: Spec, key: str) -> Spec:
    out = copy.deepcopy(spec)
    out.pop(key, None)
    return out


junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def invalid_model_spec(draw: st.DrawFn) -> Mutation:
    spec = draw(model_spec())
    choices: list[Callable[[], Mutation]] = [
        lambda: ("spec." + (k := draw(st.sampled_from(
            ["model", "version", "image", "stage", "dataClassification", "owner"]))), _drop(spec, k)),
        lambda: ("spec.model", _set(spec, ["model"], draw(st.sampled_from(
            ["Bad_Name", "-x", "x-", "", "a" * 64, "a.b", "ünï"])))),
        lambda: ("spec.version", _set(spec, ["version"], draw(st.sampled_from(
            ["", "-1", "a" * 64, "v 1", "1/2"])))),
        lambda: ("spec.image", _set(spec, ["image"], draw(st.sampled_from(
            ["", " x", "a b", "x" * 513, "$img"])))),
        lambda: ("spec.stage", _set(spec, ["stage"], draw(st.text(max_size=12).filter(
            lambda s: s not in {x.value for x in Stage}))))
        ,
        lambda: ("spec.dataClassification", _set(spec, ["dataClassification"], draw(st.sampled_from(
            ["secret", "PHI", "", "top"])))),
        lambda: ("spec.owner", _set(spec, ["owner"], draw(st.sampled_from(["", "x" * 254, "a\tb"])))),
        lambda: ("spec.replicas", _set(spec, ["replicas"], draw(st.sampled_from(
            [-1, 101, 10**9, "two", 1.5])))),
        lambda: ("spec.port", _set(spec, ["port"], draw(st.sampled_from([0, -80, 65536, "http"])))),
        lambda: ("spec.resources.limits.cpu", _set(spec, ["resources"], {"limits": {"cpu": draw(
            st.sampled_from(["lots", "1.2.3", "-", "5 Gi", True])) }})),
        lambda: ("spec.secrets[0].path", _set(spec, ["secrets"], [{"name": "s", "path": draw(
            st.sampled_from(["/abs", "a/../b", "a//b", "a/./b", "a/*", ""]))}])),
        lambda: ("spec.secrets[0].name", _set(spec, ["secrets"], [{"name": draw(
            st.sampled_from(["Bad", "", "a_b", "a" * 64])), "path": "secret/data/x"}])),
        lambda: ("spec.secrets", _set(spec, ["secrets"], [{"name": "dup", "path": "a/b"},
                                                         {"name": "dup", "path": "c/d"}])),
        lambda: ("spec.tls.commonName", _set(spec, ["tls"], {"pkiRole": "r", "commonName": draw(
            st.sampled_from(["Bad Name", "", "-x.com", "a" * 65])) })),
        lambda: ("spec.tls.pkiRole", _set(spec, ["tls"], {"pkiRole": draw(st.sampled_from(["", "-r", "r/x"])),
                                                          "commonName": "model.hospital.com"})),
        lambda: ("spec." + (k := draw(st.sampled_from(["unknownField", "Replicas", "imagePullPolicy"]))),
                 _set(spec, [k], draw(junk))),
        lambda: ("spec." + (k := draw(st.sampled_from(["model", "replicas", "secrets", "tls", "stage"]))),
                 _set(spec, [k], draw(st.dictionaries(st.text(max_size=3), st.integers(), min_size=1,
                                                      max_size=2) if k != "tls" else st.integers()))),
    ]
    return draw(st.sampled_from(choices))()


# --- MLSecurityPolicy ---------------------------------------------------------------------------


FIXED_LDAP: Spec = {"url": "ldaps://ldap.hospital.com:636", "bindDN": "cn=admin,dc=hospital,dc=com",
                    "bindPasswordSecretRef": {"name": "ldap-bind", "key": "password"},
                    "userSearchBase": "ou=users,dc=hospital,dc=com",
                    "groupSearchBase": "ou=groups,dc=hospital,dc=com"}


@st.composite
def policy_spec(draw: st.DrawFn, *, for_builders: bool = False) -> Spec:
    """A valid MLSecurityPolicy spec. ``for_builders``: LDAP, role mappings and promotion rules
    fixed (the builders never read them), so examples go to the parts they do read."""
    if for_builders:
        spec: Spec = {"ldap": FIXED_LDAP,
                      "roleMappings": [{"ldapGroup": "cn=ml_leads,ou=groups,dc=hospital,dc=com",
                                        "platformRole": "model_approver"}],
                      "promotion": {"production": {"requiredApprovals": [
                          {"platformRole": "model_approver", "count": 1}]}}}
    else:
        starttls = draw(st.booleans())
        scheme = "ldap" if starttls and draw(st.booleans()) else "ldaps"
        ldap: Spec = {
            "url": draw(_url(scheme)),
            "startTLS": starttls,
            "bindDN": draw(dn),
            "bindPasswordSecretRef": draw(secret_ref()),
            "userSearchBase": draw(dn),
            "groupSearchBase": draw(dn),
            "syncInterval": draw(sync_interval),
        }
        if draw(st.booleans()):
            ldap["caSecretRef"] = draw(secret_ref())
        rules = draw(st.lists(st.fixed_dictionaries(
            {"platformRole": role, "count": st.integers(1, 10)},
            optional={"whenDataClassification": st.lists(classification, min_size=1, max_size=5)}),
            min_size=1, max_size=3))
        spec = {
            "ldap": ldap,
            "roleMappings": draw(st.lists(st.fixed_dictionaries({"ldapGroup": dn, "platformRole": role}),
                                          min_size=1, max_size=3)),
            "promotion": {"production": {"requiredApprovals": rules,
                                         "forbidSelfApproval": draw(st.booleans()),
                                         "approvalTTL": draw(approval_ttl)}},
        }
    spec["enforcement"] = draw(st.sampled_from(["enforce", "audit"]))
    if draw(st.booleans()):
        rps = draw(st.integers(1, 100000))
        spec["network"] = {
            "mtls": draw(st.sampled_from(["STRICT", "PERMISSIVE"])),
            "allowedPrincipals": draw(st.lists(st.text(LOWER + "./_-", min_size=1, max_size=40), max_size=3)),
        }
        if draw(st.booleans()):
            spec["network"]["rateLimit"] = {"requestsPerSecond": rps,
                                            "burst": draw(st.integers(rps, max(rps, 1000000)))}
    if draw(st.booleans()):
        spec["vault"] = {"address": draw(_url(draw(st.sampled_from(["http", "https"])))),
                         "kubernetesAuthMount": draw(st.sampled_from(["kubernetes", "k8s/prod"])),
                         "requireAuditDevice": draw(st.booleans()),
                         "allowedSecretPaths": draw(st.lists(
                             st.sampled_from(["secret/data/ml-models/*", "database/creds/*",
                                              "pki/issue/ml-serving-*", "secret/data/+/x", "kv/*"]),
                             max_size=4))}
    if draw(st.booleans()):
        spec["images"] = {"allowedRegistries": draw(st.lists(st.sampled_from(
            ["registry.hospital.com/", "registry.hospital.com/ml/", "ghcr.io/org/", "localhost:5000/"]),
            max_size=3)), "requireDigest": draw(st.booleans())}
    return spec


@st.composite
def invalid_policy_spec(draw: st.DrawFn) -> Mutation:
    spec = draw(policy_spec())
    choices: list[Callable[[], Mutation]] = [
        lambda: ("spec." + (k := draw(st.sampled_from(["ldap", "roleMappings", "promotion"]))),
                 _drop(spec, k)),
        lambda: ("spec.ldap.url", _set(spec, ["ldap", "url"], draw(st.sampled_from(
            ["http://ldap", "ldap//x", "", "ldaps://bad host"])))),
        lambda: ("spec.ldap.url", _set(_set(spec, ["ldap", "startTLS"], False), ["ldap", "url"],
                                       "ldap://x.org")),
        lambda: ("spec.ldap.bindDN", _set(spec, ["ldap", "bindDN"], draw(st.sampled_from(
            ["admin", "", "cn"])))),
        lambda: ("spec.ldap.bindPasswordSecretRef", _set(spec, ["ldap"],
                                                         _drop(spec["ldap"], "bindPasswordSecretRef"))),
        lambda: ("spec.ldap.bindPassword", _set(spec, ["ldap", "bindPassword"], "hunter2")),
        lambda: ("spec.ldap.syncInterval", _set(spec, ["ldap", "syncInterval"], draw(st.sampled_from(
            ["10s", "25h", "5 minutes", "", "-5m"])))),
        lambda: ("spec.roleMappings", _set(spec, ["roleMappings"], [])),
        lambda: ("spec.roleMappings[0].platformRole", _set(spec, ["roleMappings"], [
            {"ldapGroup": "cn=x,dc=y", "platformRole": draw(st.sampled_from(["admin", "root", ""]))}])),
        lambda: ("spec.promotion.production.requiredApprovals", _set(
            spec, ["promotion", "production", "requiredApprovals"], [])),
        lambda: ("spec.promotion.production.requiredApprovals[0].count", _set(
            spec, ["promotion", "production", "requiredApprovals"],
            [{"platformRole": "model_approver", "count": draw(st.sampled_from([0, 11, -1]))}])),
        lambda: ("spec.promotion.production.approvalTTL", _set(
            spec, ["promotion", "production", "approvalTTL"], draw(st.sampled_from(["30s", "9000h", "1y"])))),
        lambda: ("spec.network.rateLimit.burst", _set(spec, ["network"], {
            "rateLimit": {"requestsPerSecond": 100, "burst": draw(st.integers(1, 99))}})),
        lambda: ("spec.network.mtls", _set(spec, ["network"], {"mtls": draw(st.sampled_from(
            ["DISABLE", "strict", ""]))})),
        lambda: ("spec.enforcement", _set(spec, ["enforcement"], draw(st.sampled_from(
            ["warn", "", "Enforce"])))),
        lambda: ("spec.images.allowedRegistries[0]", _set(spec, ["images"], {"allowedRegistries": [draw(
            st.sampled_from(["registry.hospital.com", "docker.io/lib", "*", "REG.io/"]))]})),
        lambda: ("spec.vault.address", _set(spec, ["vault"], {"address": draw(st.sampled_from(
            ["vault:8200", "ftp://v", ""]))})),
        lambda: ("spec.vault.allowedSecretPaths[0]", _set(spec, ["vault"], {
            "address": "https://v.org",
            "allowedSecretPaths": [draw(st.sampled_from(["/abs", "a/../b", ""]))]})),
    ]
    return draw(st.sampled_from(choices))()


# --- ModelApproval ------------------------------------------------------------------------------


@st.composite
def approval_spec(draw: st.DrawFn) -> Spec:
    spec: Spec = {"modelDeployment": draw(dns_subdomain), "version": draw(version),
                  "imageDigest": draw(image_digest), "decision": draw(st.sampled_from(["approve", "reject"]))}
    if draw(st.booleans()):
        spec["comment"] = draw(st.text(max_size=100))
    if draw(st.booleans()):
        spec["stage"] = "production"
    return spec


@st.composite
def invalid_approval_spec(draw: st.DrawFn) -> Mutation:
    spec = draw(approval_spec())
    choices: list[Callable[[], Mutation]] = [
        lambda: ("spec." + (k := draw(st.sampled_from(["modelDeployment", "version", "imageDigest",
                                                       "decision"]))), _drop(spec, k)),
        lambda: ("spec.imageDigest", _set(spec, ["imageDigest"], draw(st.sampled_from(
            ["sha256:xyz", "md5:" + "a" * 32, "a" * 64, "sha256:" + "A" * 64])))),
        lambda: ("spec.decision", _set(spec, ["decision"], draw(st.sampled_from(["yes", "APPROVE", ""])))),
        lambda: ("spec.stage", _set(spec, ["stage"], draw(st.sampled_from(["staging", "prod"])))),
        lambda: ("spec.comment", _set(spec, ["comment"], "x" * 1025)),
        lambda: ("spec.modelDeployment", _set(spec, ["modelDeployment"], draw(st.sampled_from(
            ["Bad", "", "-x", "a" * 254])))),
    ]
    return draw(st.sampled_from(choices))()


# --- arbitrary junk -----------------------------------------------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


def junk_spec(field_names: list[str]) -> st.SearchStrategy[Any]:
    """Dicts whose keys are mostly real field names and whose values are anything; or not a dict."""
    keys = st.sampled_from(field_names) | st.text(max_size=8)
    return st.dictionaries(keys, json_value, max_size=8) | json_value
