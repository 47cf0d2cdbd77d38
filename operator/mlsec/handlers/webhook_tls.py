"""The webhook's serving certificate: provided (a mounted Secret) or made here with ``cryptography``.

kopf's own self-signed path (certbuilder → oscrypto) cannot read this machine's OpenSSL 3 (see
LOCAL-ENV.md), so the operator makes a throw-away CA and a serving certificate itself when none is
provided. A generated CA is per process: with several replicas behind one Service, provide the
certificate (``--webhook-cert-dir``, e.g. cert-manager's Secret mounted as a directory), or each
replica would advertise its own CA and the API server could verify only one of them.
"""

from __future__ import annotations

import atexit
import ipaddress
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Secret keys of a kubernetes.io/tls Secret (cert-manager adds ca.crt).
CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"


@dataclass(frozen=True)
class ServingCert:
    certfile: Path
    keyfile: Path
    cadata: bytes  # the CA bundle the API server verifies us with (the webhook's caBundle)


def split_hosts(hosts: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) among ``hosts``, each once, in order."""
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        if not host:
            continue
        try:
            ip = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            if host not in dns:
                dns.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    return tuple(dns), tuple(ips)


def generate(hosts: Iterable[str], directory: Path | None = None, days: int = 365) -> ServingCert:
    """A new CA and a serving certificate for ``hosts`` (names and IPs), written (key 0600) to
    ``directory`` or a private temporary directory, removed when the process exits (each start
    makes a new key: none is left behind). The CA key is never written."""
    dns, ips = split_hosts(hosts)
    if not dns and not ips:
        raise ValueError("the webhook certificate needs at least one host name or IP address")
    from mlsec.local import pki  # cryptography costs 7.5 MiB: only operators that generate pay

    ca = pki.make_ca("mlsec-webhook-ca", days=days)
    serving = pki.issue(ca, (dns or ips)[0], dns_names=dns, ips=ips, days=days)
    if directory is None:
        target = Path(tempfile.mkdtemp(prefix="mlsec-webhook-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
    else:
        target = directory
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    certfile, keyfile = target / CERT_FILE, target / KEY_FILE
    serving.write(certfile, keyfile)
    (target / CA_FILE).write_bytes(ca.cert_pem)
    return ServingCert(certfile, keyfile, ca.cert_pem)


def from_dir(directory: Path) -> ServingCert:
    """A provided certificate: ``tls.crt``, ``tls.key`` and ``ca.crt`` (the CA that signed it;
    if absent, ``tls.crt`` itself is the bundle, as for a self-signed certificate). kopf re-reads
    the files when they change, so a rotated Secret is picked up without a restart."""
    certfile, keyfile, cafile = directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE
    for f in (certfile, keyfile):
        if not f.is_file():
            raise FileNotFoundError(f"webhook certificate directory {directory} has no {f.name}")
    cadata = cafile.read_bytes() if cafile.is_file() else certfile.read_bytes()
    return ServingCert(certfile, keyfile, cadata)
