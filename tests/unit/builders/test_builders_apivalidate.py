"""The children pass the API server's own validation code (Kubernetes 1.37, Istio 1.31 CRDs).

``apivalidate/main.go`` links the kube-apiserver's decoding, defaulting and validation code, the
apiextensions schema/pruning/CEL validators and Pod Security Admission, without running a server.
It is built with the module versions of the local environment (operator/mlsec/local/go/go.mod)
from the Go module cache only (GOPROXY=off): skipped when Go or those modules are not there,
i.e. before the first ``mlsec local up``. The first build takes up to a minute; the binary is
cached in ~/.cache/mlsec/apivalidate-<hash>/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from builders_cases import DIGEST, REPO, make_md, make_policy
from builders_schema import istio_crd_file

from mlsec.builders.children import desired_children

GO_MODULE = REPO / "operator" / "mlsec" / "local" / "go"
SOURCE = Path(__file__).parent / "apivalidate" / "main.go"


def _cache_dir() -> Path:
    root = Path(os.environ.get("MLSEC_CACHE", Path.home() / ".cache" / "mlsec"))
    key = hashlib.sha256(
        b"".join(p.read_bytes() for p in (SOURCE, GO_MODULE / "go.mod", GO_MODULE / "go.sum"))
    ).hexdigest()[:16]
    return root / f"apivalidate-{key}"


def _build(go: str, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".apivalidate-", dir=out.parent))
    try:
        lines = (GO_MODULE / "go.mod").read_text().splitlines()
        lines[0] = "module example.invalid/apivalidate"
        (work / "go.mod").write_text("\n".join(lines) + "\n")
        shutil.copyfile(GO_MODULE / "go.sum", work / "go.sum")
        shutil.copyfile(SOURCE, work / "main.go")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off", "CGO_ENABLED": "0"}
        proc = subprocess.run(
            [go, "build", "-o", str(work / "apivalidate"), "."],
            cwd=work, env=env, capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            if "GOPROXY=off" in proc.stderr or "module lookup disabled" in proc.stderr:
                pytest.skip("Go modules of the local environment are not in the module cache")
            pytest.fail(f"go build failed:\n{proc.stderr[-3000:]}")
        # rename into place: an interrupted build never leaves a binary a later run would trust
        os.replace(work / "apivalidate", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def apivalidate() -> Path:
    """The validator binary, built once per source/go.mod version into the mlsec cache."""
    go = shutil.which("go")
    if go is None or istio_crd_file() is None:
        pytest.skip("needs go and the Istio CRDs")
    binary = _cache_dir() / "apivalidate"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        _build(go, binary)
    return binary


def _run(binary: Path, objs: list[dict[str, Any]], tmp_path: Path) -> tuple[int, str]:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(objs))
    crds = istio_crd_file()
    assert crds is not None
    proc = subprocess.run(
        [str(binary), str(crds), str(path)], capture_output=True, text=True, timeout=120
    )
    assert not proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


def _variants() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    objs += desired_children(make_md(), make_policy())
    objs += desired_children(
        make_md(secrets=[], tls=None, resources=None, replicas=0, port=65535),
        make_policy(network={"mtls": "PERMISSIVE"}),
    )
    objs += desired_children(
        make_md(name="mri.classifier.v2", image=f"ghcr.io/x/y@{DIGEST}", version="1.0-rc_"),
        make_policy(
            network={
                "allowedPrincipals": ["cluster.local/ns/a/sa/b", "cluster.local/ns/c/sa/d"],
                "rateLimit": {"requestsPerSecond": 100000, "burst": 1000000},
            }
        ),
    )
    objs += desired_children(make_md(name="x" * 253), make_policy())
    return objs


def test_children_pass_the_api_servers_validation(apivalidate: Path, tmp_path: Path) -> None:
    objs = _variants()
    rc, out = _run(apivalidate, objs, tmp_path)
    assert rc == 0, out
    assert out.count("\nOK ") + out.startswith("OK ") == len(objs), out


def test_the_validator_is_not_vacuous(apivalidate: Path, tmp_path: Path) -> None:
    sa, pa, ap, _dr, ef, svc, dep = desired_children(make_md(), make_policy())
    pa["spec"]["mtls"]["mode"] = "BOGUS"
    ap["spec"]["targetRefs"] = [{"kind": "Service", "name": "x"}]  # CEL: selector xor targetRefs
    ef["spec"]["configPatches"][0]["match"]["waypoint"] = {}  # CEL: waypoint only for WAYPOINT
    svc["spec"]["ports"][0]["name"] = "HTTP_x"
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = (
        True  # Pod Security restricted
    )
    sa["bogus"] = 1  # strict decoding
    rc, out = _run(apivalidate, [sa, pa, ap, ef, svc, dep], tmp_path)
    assert rc == 1
    assert out.count("INVALID") == 6, out
    for expected in ['"BOGUS"', "only one of targetRefs or selector", "waypointMatch", "HTTP_x",
                     "allowPrivilegeEscalation", 'unknown field "bogus"']:
        assert expected in out, (expected, out)
