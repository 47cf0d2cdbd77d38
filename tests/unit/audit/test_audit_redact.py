"""The redaction guard: no secret value ever enters an audit record."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import pytest

from mlsec.audit import REDACTED, Action, Actor, AuditLog, Context, EventType, Result, redact
from mlsec.audit.events import Resource
from mlsec.audit.redact import is_secret_key

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9."
    "eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2VhY2NvdW50Iiwic3ViIjoic3lzdGVtIn0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)
HVS = "hvs.CAESIJ1bcZ9rQW3xYzAbCdEfGhIjKlMnOpQrStUvWxYz"
LEGACY = "s.Qf1s5zigZ4OX6akYjQXJC1jY"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3...\nabc==\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "key",
    ["password", "bindPassword", "token", "client_token", "secret_id", "private_key",
     "ciphertext", "plaintext", "api-key", "X-Vault-Token", "clientSecret", "credentials",
     "Authorization", "SECRET_KEY", "jwt"],
)  # fmt: skip
def test_secret_key_names(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: "anything"}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    ["bindPasswordSecretRef", "caSecretRef", "token_policies", "token_ttl", "secrets",
     "max_tokens", "user_id", "service_account", "path", "name", "passwordPolicy"],
)  # fmt: skip
def test_reference_and_config_keys_stay_readable(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: "value"}) == {key: "value"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (JWT, REDACTED),
        (f"Bearer {JWT}", f"Bearer {REDACTED}"),
        (HVS, REDACTED),
        (f"login with {HVS} failed", f"login with {REDACTED} failed"),
        (LEGACY, REDACTED),
        (PEM, REDACTED),
        (f"key:\n{PEM}\nend", f"key:\n{REDACTED}\nend"),
        ("-----BEGIN PRIVATE KEY-----\nMIIE truncated", REDACTED),
        (
            "ldaps://admin:hunter2@ldap.hospital.com:636",
            f"ldaps://{REDACTED}@ldap.hospital.com:636",
        ),
        # not secrets
        ("ldaps://ldap.hospital.com:636", "ldaps://ldap.hospital.com:636"),
        ("secret/data/ml-models/mri-classifier", "secret/data/ml-models/mri-classifier"),
        ("sha256:" + "a" * 64, "sha256:" + "a" * 64),
        ("-----BEGIN CERTIFICATE-----\nMIIB", "-----BEGIN CERTIFICATE-----\nMIIB"),
        ("s.short", "s.short"),
    ],
)
def test_secret_looking_values(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact({"reason": text}) == {"reason": expected}


def test_nested_structures_and_json_normalisation() -> None:
    class Stage(Enum):
        PROD = "production"

    value = {
        "vault": {"role": "mri", "secret_id": "abc", "token_policies": ["mri-read"]},
        "users": [{"uid": "alice", "userPassword": "{SSHA}xyz"}],
        "when": datetime(2026, 1, 1, tzinfo=UTC),
        "stage": Stage.PROD,
        "groups": frozenset({"b", "a"}),
        "raw": b"\x00key-bytes",
        "ratio": float("nan"),
        "count": 3,
        "token": None,  # an absent secret is not a secret
        1: JWT,
    }
    assert redact(value) == {
        "vault": {"role": "mri", "secret_id": REDACTED, "token_policies": ["mri-read"]},
        "users": [{"uid": "alice", "userPassword": REDACTED}],
        "when": "2026-01-01T00:00:00Z",
        "stage": "production",
        "groups": ["a", "b"],
        "raw": REDACTED,
        "ratio": "nan",
        "count": 3,
        "token": None,
        "1": REDACTED,
    }


def test_nothing_secret_reaches_any_sink(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "audit.log"
    with AuditLog(path, sink=out) as log:
        rec = log.record(
            EventType.VAULT_ROLE_WRITTEN,
            actor=Actor(user_id=f"token {HVS}", groups=(JWT,)),
            action=Action(
                "WRITE",
                {"role": "mri", "client_token": HVS, "config": {"bindPassword": "hunter2"}},
            ),
            result=Result("FAILURE", f"vault said: permission denied for {LEGACY}"),
            context=Context(request_id=JWT),
        )
    written = path.read_text()
    assert written == out.getvalue()
    for secret in (HVS, JWT, LEGACY, "hunter2"):
        assert secret not in written
    assert json.loads(written) == rec
    assert rec["action"]["details"]["client_token"] == REDACTED
    assert rec["action"]["details"]["config"] == {"bindPassword": REDACTED}
    assert rec["action"]["details"]["role"] == "mri"
    assert rec["actor"]["groups"] == [REDACTED]
    assert rec["result"]["reason"] == f"vault said: permission denied for {REDACTED}"


def test_no_field_of_the_record_schema_names_a_secret() -> None:
    """AuditLog.record redacts the sections' values but trusts their keys (the schema's): a field
    named like a secret (a "token" in Context, say) would have to be redacted by name there."""
    names = [f.name for cls in (Actor, Resource, Action, Result, Context) for f in dataclasses.fields(cls)]
    assert names and not [n for n in names if is_secret_key(n)]
