"""PostgreSQL for the local environment: real dynamic database credentials (issue 12).

Debian's server (``/usr/lib/postgresql/<major>/bin``) refuses to run as root, so the cluster
belongs to the ``postgres`` system user: its directory lives outside the environment directory
(that one is ``0700`` root) and every command goes through ``runuser -u postgres --``. The
server runs in the foreground (``postgres -D``) so that the environment holds its PID and stops
it like the rest; it listens on 127.0.0.1 only, with scram-sha-256 password authentication.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlsec.local import procs

USER = "postgres"
SUPERUSER = "postgres"
DATABASE = "postgres"
# The role OpenBao's database engine issues credentials for (the seed's example).
DB_ROLE = "mri-preprocessing-role"


def bin_dir() -> Path:
    """The newest Debian PostgreSQL server installed (``apt-get install postgresql``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make deps` (apt-get install -y postgresql)")
    return Path(found[-1]).parent


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["runuser", "-u", USER, "--", *cmd], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def _owned_dir(prefix: str) -> Path:
    import pwd

    pw = pwd.getpwnam(USER)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(root, pw.pw_uid, pw.pw_gid)
    root.chmod(0o700)
    return root


def _initdb(root: Path, password: str) -> None:
    import pwd

    pw = pwd.getpwnam(USER)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    pwfile.chmod(0o600)
    try:
        _as_postgres([str(bin_dir() / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER,
                      "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
                      "--no-instructions"])
    finally:
        pwfile.unlink(missing_ok=True)


def _template() -> tuple[Path, str] | None:
    """A cluster made once by initdb and cached (``<cache>/postgres-<major>-template``), with the
    superuser password it was made with; None if it cannot be made. initdb takes seconds, a copy
    a fraction of one: each ``up`` copies the template and sets a fresh password."""
    from mlsec.local import build

    cache = build.cache_root() / f"postgres-{bin_dir().parent.name}-template"
    pwfile = cache / "superuser-password"
    if not (cache / "data" / "PG_VERSION").exists() or not pwfile.exists():
        try:
            work = _owned_dir("mlsec-pg-template-")
            password = secrets.token_urlsafe(18)
            _initdb(work, password)
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(mode=0o700)
            shutil.copytree(work / "data", cache / "data", symlinks=True)
            pwfile.touch(mode=0o600)
            pwfile.write_text(password)
            shutil.rmtree(work, ignore_errors=True)
        except (OSError, RuntimeError):
            return None
    return cache / "data", pwfile.read_text().strip()


def make_cluster(password: str) -> tuple[Path, str]:
    """A fresh cluster in a new directory owned by ``postgres``: (directory, the superuser's
    current password). From the cached template when there is one (then the caller sets
    ``password`` with :func:`set_password` once the server runs), else by initdb with it."""
    root = _owned_dir("mlsec-pg-")
    template = _template()
    if template is not None:
        subprocess.run(["cp", "-a", str(template[0]), str(root / "data")], check=True, timeout=60)
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(root / "data")], check=True, timeout=60)
        (root / "data").chmod(0o700)
        return root, template[1]
    _initdb(root, password)
    return root, password


def set_password(port: int, current: str, new: str) -> None:
    """Give the superuser ``new`` (the password never appears on a command line)."""
    if current == new:
        return
    proc = subprocess.run(
        [str(bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", DATABASE,
         "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"],
        input=f"ALTER ROLE {SUPERUSER} WITH PASSWORD '{new}';\n", capture_output=True, text=True,
        timeout=30, env={"PGPASSWORD": current, "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(f"setting the PostgreSQL password failed: {proc.stderr.strip()[-500:]}")


def start(root: Path, port: int, logdir: Path) -> int:
    """Start the server in the foreground (as ``postgres``); its PID (through runuser)."""
    return procs.spawn("postgres", [
        str(bin_dir() / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root),
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off", "-c", "logging_collector=off",
    ], logdir, user=USER)


def ready(port: int) -> bool:
    proc = subprocess.run([str(bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
                          capture_output=True, timeout=5)
    return proc.returncode == 0


def remove(root: str | Path) -> None:
    """Delete the cluster directory (only ours: named by make_cluster)."""
    path = Path(root)
    if path.name.startswith("mlsec-pg-") and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def url(port: int, password: str, user: str = SUPERUSER) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/{DATABASE}"


CREATION_STATEMENTS = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    "GRANT CONNECT ON DATABASE postgres TO \"{{name}}\";",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";",
]
