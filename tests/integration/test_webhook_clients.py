"""The webhook port answering Go's HTTP client (client-go's transport, as kube-apiserver's webhook
client uses it), over HTTP/2 and, with ``DISABLE_HTTP2``, HTTP/1.1: kubectl's ``create --raw``
POSTs the AdmissionReview. No cluster needed; kubectl is the real binary."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from mlsec.handlers import metrics, webhook, webhook_tls
from mlsec.local import build


def test_gos_http_client_is_answered_over_http2_and_http1(tmp_path: Path) -> None:
    cert = webhook_tls.generate(["127.0.0.1"], tmp_path)
    (tmp_path / "ca.pem").write_bytes(cert.cadata)
    server = webhook.Server(addr="127.0.0.1", port=0, host="127.0.0.1", routes={"deployment-gate": None},  # type: ignore[dict-item]
                            certfile=str(cert.certfile), pkeyfile=str(cert.keyfile), cadata=cert.cadata)
    seen: list[Any] = []

    async def fn(review: Any, *, webhook: str | None = None, **_: Any) -> dict[str, Any]:
        seen.append((webhook, review["request"]["uid"]))
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": True}}

    def count(protocol: str) -> float:
        return float(metrics.WEBHOOK_REQUESTS.labels(protocol)._value.get())

    async def post(port: int, uid: str, *, http1: bool) -> tuple[int, str, str]:
        review = tmp_path / f"{uid.replace('/', '-')}.json"
        review.write_text(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                      "request": {"uid": uid, "object": {"big": "x" * 100_000}}}))
        env = {**os.environ, "KUBECONFIG": os.devnull}
        env.pop("DISABLE_HTTP2", None)
        if http1:
            env["DISABLE_HTTP2"] = "1"  # client-go's switch (k8s.io/apimachinery/pkg/util/net)
        proc = await asyncio.create_subprocess_exec(
            str(build.kubectl_bin()), "--server", f"https://127.0.0.1:{port}", "--certificate-authority",
            str(tmp_path / "ca.pem"), "--token", "unused", "create", "--raw", "/deployment-gate", "-f",
            str(review), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    async def main() -> list[tuple[str, tuple[int, str, str], float]]:
        gen = server._listen(fn)
        config = await gen.__anext__()
        port = int(config["url"].rsplit(":", 1)[1].split("/")[0])
        results = []
        try:
            for protocol, http1 in (("h2", False), ("http/1.1", True)):
                before = count(protocol)
                answer = await post(port, f"uid-{protocol}", http1=http1)
                results.append((protocol, answer, count(protocol) - before))
        finally:
            await gen.aclose()
        return results

    results = asyncio.run(main())
    for protocol, (code, out, err), counted in results:
        assert code == 0, f"{protocol}: {err[-2000:]}"
        assert json.loads(out)["response"] == {"uid": f"uid-{protocol}", "allowed": True}
        assert counted == 1, protocol  # served over the protocol asked for
    # kubectl streams the file: over HTTP/1.1 that is a chunked body, which the server decodes
    assert seen == [("deployment-gate", "uid-h2"), ("deployment-gate", "uid-http/1.1")]
