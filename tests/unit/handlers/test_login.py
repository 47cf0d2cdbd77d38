"""kopf's API session: the usual credentials, a bounded connection pool (kopf's own is unbounded)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import kopf
import pytest
import yaml

from mlsec.handlers import login, settings


def kubeconfig(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ml"}}],
    }))
    return path


def test_the_pool_holds_every_watch_stream_and_some_requests() -> None:
    assert login.connection_limit([]) == login.WATCHES_PER_SCOPE + login.REQUEST_CONNECTIONS
    assert login.connection_limit(["a", "b", "c"]) == 3 * login.WATCHES_PER_SCOPE + login.REQUEST_CONNECTIONS


def test_login_keeps_the_credentials_and_bounds_the_pool(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(settings.CONFIG, "namespaces", ["a", "b"])

    async def scenario() -> tuple[str, int, str | None]:
        made = await login.login(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())
        assert isinstance(made, kopf.AiohttpSession)
        session = made.aiohttp_session
        try:
            return made.server, session.connector.limit, session.headers.get("Authorization")
        finally:
            await session.close()

    server, limit, auth = asyncio.run(scenario())
    assert server == "https://127.0.0.1:6443"
    assert limit == 2 * login.WATCHES_PER_SCOPE + login.REQUEST_CONNECTIONS
    assert auth == "Bearer t0ken"


def test_it_is_the_only_login_handler() -> None:
    from mlsec.handlers import main

    for module in main.HANDLER_MODULES:
        __import__(module)
    from kopf._core.intents.causes import Activity

    handlers = kopf.get_default_registry()._activities.get_handlers(Activity.AUTHENTICATION)
    assert [h.id for h in handlers] == ["bounded-session"]
