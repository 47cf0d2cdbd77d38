"""The LDAP client's TLS: the server certificate's name must match the URL's host (real handshakes)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsec.clients.ldap import DirectoryError, DirectorySettings, LdapDirectory
from mlsec.local import pki

CA = pki.make_ca("test-ca")


@pytest.fixture
def tls_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    """A TLS listener on 127.0.0.1 presenting a cert for the names in the test's parameter."""
    dns, ips = request.param
    pair = pki.issue(CA, "ldap", dns_names=dns, ips=ips)
    pair.write(tmp_path / "c.pem", tmp_path / "k.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:  # handshake, then hang up: enough to tell a TLS failure from any other
                ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()


def _read(port: int, ca: bytes = CA.cert_pem) -> DirectoryError:
    d = LdapDirectory(DirectorySettings(url=f"ldaps://127.0.0.1:{port}", bind_dn="cn=admin,dc=x",
                                        user_search_base="dc=x", group_search_base="dc=x",
                                        ca_pem=ca.decode(), attempts=1, connect_timeout=2,
                                        receive_timeout=2), "pw")
    with pytest.raises(DirectoryError) as err:
        d.group_members(["cn=g,dc=x"])
    return err.value


@pytest.mark.parametrize("tls_server", [(("ldap.other.test",), ())], indirect=True)
def test_certificate_for_another_name_is_refused(tls_server: int) -> None:
    err = _read(tls_server)
    assert err.reason == "TLSError"
    assert "mismatch" in err.message or "doesn't match" in err.message


@pytest.mark.parametrize("tls_server", [(("localhost",), ("127.0.0.1",))], indirect=True)
def test_matching_certificate_passes_the_handshake(tls_server: int) -> None:
    # The handshake succeeds; the fake server then hangs up, which is not a TLS error.
    assert _read(tls_server).reason != "TLSError"


@pytest.mark.parametrize("tls_server", [(("localhost",), ("127.0.0.1",))], indirect=True)
def test_certificate_from_another_ca_is_refused(tls_server: int) -> None:
    err = _read(tls_server, ca=pki.make_ca("other-ca").cert_pem)
    assert err.reason == "TLSError" and "certificate verify failed" in err.message
