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
from mlsec.builders.quantity import canonical_quantity

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


def _quantity_corpus() -> list[str]:
    """Hand-picked edge cases plus a deterministic sweep of spellings."""
    cases = [
        "0", "1", "2", "+1", "-1", "10", "1000", "1001", "1.", ".5", "0.5", "1.5", "1.500", "1.1",
        "0100m", "1000m", "100m", "0.1m", "1n", "0.0000000001", "1u", "1k", "1M", "1G", "1T", "1P",
        "1E", "1000E", "1e3", "1E3", "1.5e3", "12e6", "1e-3", "1e-12", "1Ki", "0.5Ki", "1.5Ki",
        "100Ki", "1024Mi", "1536Mi", "1.5Gi", "8Gi", "0Gi", "4Gi", "1023Ki", "1025Ki", "7Ei",
        "123456789012345678", "1234567890123456789", "123456789012345678901", "9223372036854775807",
        "9223372036854775808", "0.000000000000000000001", "99999999999999999999Ei", "1.23456789012m",
        "-0.5", "-1.5Gi", "-1024Mi", "00", "000.000", "0.0",
        # not quantities
        "", "abc", "1Qi", "1.2.3", "1e", "--1", "1e+", "1Kii", "1 ", "1.5.Gi",
    ]
    suffixes = ["", "m", "k", "M", "G", "n", "u", "Ki", "Mi", "Gi", "Ti", "e2", "e-2", "E6"]
    numbers = ["1", "3", "8", "10", "16", "100", "512", "999", "1000", "1024", "1536", "2048",
               "0.25", "0.5", "1.5", "2.048", "10.0", "1024.0", "3000", "4096000"]
    cases += [n + s for n in numbers for s in suffixes]
    return cases


def test_quantities_are_canonical_like_the_api_server(apivalidate: Path, tmp_path: Path) -> None:
    corpus = _quantity_corpus()
    path = tmp_path / "quantities.json"
    path.write_text(json.dumps(corpus))
    proc = subprocess.run(
        [str(apivalidate), "-quantities", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(proc.stdout)
    mismatches = []
    for text, expected in zip(corpus, stored, strict=True):
        if expected.startswith("error:"):
            with pytest.raises(ValueError):
                canonical_quantity(text)
            continue
        try:
            got = canonical_quantity(text)
        except ValueError as exc:
            got = f"ValueError: {exc}"
        if got != expected:
            mismatches.append((text, got, expected))
    assert mismatches == []


def test_user_spelled_quantities_compare_equal_after_apply(
    apivalidate: Path, tmp_path: Path
) -> None:
    resources = {
        "requests": {"cpu": "0.5", "memory": "1024Mi", "ephemeral-storage": 1073741824},
        "limits": {"cpu": "1000m", "memory": "1.5Gi", "ephemeral-storage": "2Gi"},
    }
    dep = desired_children(make_md(resources=resources), make_policy())[-1]
    rc, out = _run(apivalidate, [dep], tmp_path)
    assert rc == 0, out
