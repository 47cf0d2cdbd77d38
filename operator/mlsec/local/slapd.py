"""Our own OpenLDAP instance with the hospital test directory (seed 000).

The directory: base ``dc=hospital,dc=com``, people under ``ou=users``, groups (groupOfNames with
``member``) under ``ou=groups``. The ``memberof`` overlay is on so both lookup styles are testable.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BASE = "dc=hospital,dc=com"
ADMIN_DN = f"cn=admin,{BASE}"
USERS_OU = f"ou=users,{BASE}"
GROUPS_OU = f"ou=groups,{BASE}"

# user -> (full name, groups); erin belongs to no group on purpose.
PEOPLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("Alice Data", ("data_scientists",)),
    "bob": ("Bob Engineer", ("ml_engineers",)),
    "carol": ("Carol Lead", ("ml_leads",)),
    "dave": ("Dave Compliance", ("compliance",)),
    "erin": ("Erin Nobody", ()),
}
GROUPS = ("data_scientists", "ml_engineers", "ml_leads", "compliance")


def user_dn(uid: str) -> str:
    return f"uid={uid},{USERS_OU}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS_OU}"


@dataclass(frozen=True)
class SlapdPaths:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slapd.conf"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pidfile(self) -> Path:
        return self.root / "slapd.pid"


def slapd_bin() -> str:
    found = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    if not found:
        raise RuntimeError("slapd is not installed: run `make deps` (apt-get install slapd ldap-utils)")
    return found


def hash_password(password: str) -> str:
    out = subprocess.run(["slappasswd", "-s", password], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def write_config(paths: SlapdPaths, admin_password: str, ca: Path, cert: Path, key: Path) -> None:
    paths.data.mkdir(parents=True, exist_ok=True)
    schema = Path("/etc/ldap/schema")
    paths.conf.write_text(
        "\n".join(
            [
                *(f"include {schema / s}.schema" for s in ("core", "cosine", "inetorgperson", "nis")),
                "modulepath /usr/lib/ldap",
                "moduleload back_mdb",
                "moduleload memberof",
                f"pidfile {paths.pidfile}",
                f"argsfile {paths.root / 'slapd.args'}",
                f"TLSCACertificateFile {ca}",
                f"TLSCertificateFile {cert}",
                f"TLSCertificateKeyFile {key}",
                # No anonymous reads: only authenticated binds see the directory.
                "access to attrs=userPassword by self write by anonymous auth by * none",
                "access to * by users read by * none",
                "database mdb",
                f'suffix "{BASE}"',
                f'rootdn "{ADMIN_DN}"',
                f"rootpw {hash_password(admin_password)}",
                f"directory {paths.data}",
                "maxsize 1073741824",
                "index objectClass eq",
                "index uid,cn eq",
                "index member,memberUid eq",
                "overlay memberof",
                "",
            ]
        )
    )
    paths.conf.chmod(0o600)


def seed_entries(user_password: str) -> list[tuple[str, dict[str, object]]]:
    """The test directory as (dn, attributes) in insertion order (users before groups)."""
    entries: list[tuple[str, dict[str, object]]] = [
        (BASE, {"objectClass": ["top", "dcObject", "organization"], "o": "Hospital", "dc": "hospital"}),
        (USERS_OU, {"objectClass": ["organizationalUnit"], "ou": "users"}),
        (GROUPS_OU, {"objectClass": ["organizationalUnit"], "ou": "groups"}),
    ]
    for uid, (full, _groups) in PEOPLE.items():
        first, last = full.split(" ", 1)
        entries.append((user_dn(uid), {
            "objectClass": ["inetOrgPerson"], "uid": uid, "cn": full, "givenName": first, "sn": last,
            "mail": f"{uid}@hospital.com", "userPassword": user_password,
        }))
    for cn in GROUPS:
        members = [user_dn(u) for u, (_, gs) in PEOPLE.items() if cn in gs]
        entries.append((group_dn(cn), {"objectClass": ["groupOfNames"], "cn": cn, "member": members}))
    return entries
