"""HTTP/2 conformance of the webhook port: its HTTP/2 is ours (``mlsec.handlers.webhook_h2``), so
h2spec's whole suite (RFC 9113 and RFC 7541: framing, stream states, flow control, settings,
header compression, malformed requests) runs against the operator's server. No cluster needed;
h2spec is built from its Go module like the environment's other binaries."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from mlsec.handlers import metrics, webhook, webhook_tls
from mlsec.local import build

SUITE = 145  # h2spec 2.2.1's tests for a server: generic, http2 and hpack


def test_the_webhook_port_passes_every_h2spec_test(tmp_path: Path) -> None:
    h2spec = build.h2spec_bin()
    cert = webhook_tls.generate(["127.0.0.1"], tmp_path)
    server = webhook.Server(addr="127.0.0.1", port=0, host="127.0.0.1", routes={"deployment-gate": None},  # type: ignore[dict-item]
                            certfile=str(cert.certfile), pkeyfile=str(cert.keyfile), cadata=cert.cadata)
    served = metrics.WEBHOOK_REQUESTS.labels("h2")._value
    before = served.get()

    async def fn(review: Any, **_: Any) -> dict[str, Any]:
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": "", "allowed": True}}

    async def main() -> tuple[int, str]:
        gen = server._listen(fn)
        config = await gen.__anext__()
        port = config["url"].rsplit(":", 1)[1].split("/")[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                str(h2spec), "-h", "127.0.0.1", "-p", port, "-t", "-k", "-P", "/deployment-gate",
                "-o", "5", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 300)
        finally:
            await gen.aclose()
        return proc.returncode or 0, out.decode(errors="replace")

    code, out = asyncio.run(main())
    # Its last line: "145 tests, 145 passed, 0 skipped, 0 failed"; failures are listed before it.
    summary = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", out)
    assert summary is not None, out[-4000:]
    total, passed, skipped, failed = map(int, summary.groups())
    failures = out[out.find("Failures:"):][:6000]
    assert (total, passed, skipped, failed, code) == (SUITE, SUITE, 0, 0, 0), failures
    assert served.get() - before >= 5  # its POSTs reached the webhook (a body that is not JSON: 400)
