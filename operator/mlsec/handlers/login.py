"""kopf's connection to the API server: its usual credentials, with a bounded connection pool.

kopf's own HTTP session has no connection limit (``aiohttp.TCPConnector(limit=0)``): when many
objects change at once, every one of its requests (kopf's annotation patches after each handled
model, finalizers, events) gets a TLS connection of its own. Measured with 1,000 models created at
once: ~600 requests in flight 20 s after the last model was Ready, ~600 TLS connections, and the
operator's memory at 445 MiB. Here the operator's credentials (in-cluster or kubeconfig, read by
:mod:`mlsec.clients.rest` as for its own requests) get a session whose pool holds the long-lived
watch streams plus :data:`REQUEST_CONNECTIONS` for requests, which then queue in the operator
rather than at the API server.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import kopf

from mlsec.clients import rest
from mlsec.handlers.settings import CONFIG

REQUEST_CONNECTIONS = 32
"""Connections for requests, beside the watch streams (each holds one connection for its life)."""

WATCHES_PER_SCOPE = 24
"""Watch streams per watched namespace (or for the whole cluster): one per resource kind kopf
watches (our 4 kinds, the 7 child kinds, RBAC, leases, CRDs…), with room to spare: a pool smaller
than the number of streams would starve every request."""


def connection_limit(namespaces: list[str]) -> int:
    """The pool size for a scope: every watch stream, plus the request connections."""
    return WATCHES_PER_SCOPE * max(1, len(namespaces)) + REQUEST_CONNECTIONS


def session_for(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """An aiohttp session with ``info``'s credentials and a bounded pool (as kopf would build it)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               priority=info.priority, expiration=info.expiration,
                               aiohttp_session=session)


def connection_info(creds: rest.Credentials) -> kopf.ConnectionInfo:
    """kopf's view of the credentials (a token file is read now: kopf logs in again on a 401)."""
    return kopf.ConnectionInfo(
        server=creds.server, ca_path=creds.ca_path, ca_data=creds.ca_data, insecure=creds.insecure,
        username=creds.username, password=creds.password, token=creds.read_token(),
        certificate_path=creds.cert_path, certificate_data=creds.cert_data,
        private_key_path=creds.key_path, private_key_data=creds.key_data,
        default_namespace=creds.namespace)


@kopf.on.login(id="bounded-session")
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    try:
        info: kopf.ConnectionInfo | None = connection_info(rest.load())
    except rest.NeedsKubernetesClient:
        info = kopf.login_via_client(**kwargs)  # exec plugins, auth-providers: the client's way
    if info is None:
        return None
    return session_for(info, connection_limit(CONFIG.namespaces))
