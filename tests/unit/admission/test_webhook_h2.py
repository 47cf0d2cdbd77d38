"""The webhook port over HTTP/2 (what kube-apiserver negotiates) and HTTP/1.1, on real TLS sockets."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from h2.errors import ErrorCodes
from tests.unit.admission import h2wire

from mlsec.handlers import admission, metrics, webhook, webhook_h2, webhook_hpack, webhook_http1, webhook_tls
from mlsec.handlers import admission_dispatch as dispatch


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> webhook_tls.ServingCert:
    return webhook_tls.generate(["127.0.0.1", "localhost"], tmp_path_factory.mktemp("tls"))


def server_context(cert: webhook_tls.ServingCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert.certfile), str(cert.keyfile))
    ctx.set_alpn_protocols(webhook.ALPN)
    return ctx


def client_context(cert: webhook_tls.ServingCert, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=cert.cadata.decode())
    ctx.set_alpn_protocols(alpn)
    return ctx


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None  # error code of a RST_STREAM


class Client:
    """A minimal HTTP/2 client on one TLS connection (the h2 library's client side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 window: int | None = None) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                        header_encoding=None))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.pending: dict[int, memoryview] = {}
        self.done: set[int] = set()
        self.goaway = False
        self.settled = False
        self.credit = True  # give flow-control credit back as data arrives

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, window: int | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer, window)
        await client.flush()
        await client.pump(lambda: client.settled)  # the server's settings and connection window
        return client

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    def request(self, path: str, body: bytes, method: str = "POST", length: int | None = None) -> int:
        """``length``: the content-length header to send (default the body's; -1 for none)."""
        sid = self.conn.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":path", path.encode()), (b":scheme", b"https"),
                   (b":authority", b"127.0.0.1"), (b"content-type", b"application/json")]
        length = len(body) if length is None else length
        if length >= 0:
            headers.append((b"content-length", str(length).encode()))
        self.conn.send_headers(sid, headers, end_stream=not body)
        self.answers[sid] = Answer()
        if body:
            self.pending[sid] = memoryview(body)
            self.send_pending()
        return sid

    def send_pending(self) -> None:
        """The bodies' next frames, as far as the server's flow-control windows allow."""
        for sid, rest in list(self.pending.items()):
            if sid in self.done:
                del self.pending[sid]
                continue
            while rest:
                size = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if size <= 0:
                    break
                chunk, rest = rest[:size], rest[size:]
                self.conn.send_data(sid, chunk.tobytes(), end_stream=not rest)
            if rest:
                self.pending[sid] = rest
            else:
                del self.pending[sid]

    async def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not until():
                data = await self.reader.read(65536)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self.event(event)
                self.send_pending()
                await self.flush()

        await asyncio.wait_for(loop(), timeout)

    def event(self, event: Any) -> None:
        if isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0:
            self.settled = True
        elif isinstance(event, h2.events.ResponseReceived):
            answer = self.answers[event.stream_id]
            answer.headers = dict(event.headers)
            answer.status = int(answer.headers[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.answers[event.stream_id].body += event.data
            if self.credit:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.done.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.answers[event.stream_id].reset = event.error_code
            self.done.add(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True

    async def exchange(self, *requests: tuple[str, bytes] | tuple[str, bytes, str]) -> list[Answer]:
        ids = [self.request(*r) for r in requests]
        await self.flush()
        await self.pump(lambda: all(i in self.done for i in ids))
        return [self.answers[i] for i in ids]


async def serve_h2(cert: webhook_tls.ServingCert, answer: webhook_h2.Answer,
                   **options: Any) -> tuple[asyncio.Server, int, set[webhook_h2.H2Protocol]]:
    connections: set[webhook_h2.H2Protocol] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: webhook_h2.H2Protocol(answer, connections=connections, **options),
        "127.0.0.1", 0, ssl=server_context(cert))
    return server, server.sockets[0].getsockname()[1], connections


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for the server to reach ``condition`` (fails after ``timeout`` s rather than hanging)."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


# --- the operator's webhook server: both protocols on one port -----------------------------------


def test_the_webhook_port_serves_our_hooks_over_http2_and_http1(cert: webhook_tls.ServingCert) -> None:
    routes = {"deployment-gate": dispatch.Route.of(admission.deployment_gate, ["CREATE", "UPDATE"]),
              "approval-stamp": dispatch.Route.of(admission.approval_stamp, ["CREATE"])}
    server = webhook.Server(addr="127.0.0.1", port=0, host="127.0.0.1", routes=routes,
                            certfile=str(cert.certfile), pkeyfile=str(cert.keyfile), cadata=cert.cadata)
    seen: list[tuple[str | None, Any]] = []

    async def fn(review: Any, *, webhook: str | None = None, **_: Any) -> dict[str, Any]:
        seen.append((webhook, review))
        if review.get("broken"):
            from kopf._core.engines import admission as engine
            raise engine.WebhookError("not an AdmissionReview")
        return {"response": {"uid": review.get("uid"), "allowed": True}}

    h2_before = metrics.WEBHOOK_REQUESTS.labels("h2")._value.get()
    h1_before = metrics.WEBHOOK_REQUESTS.labels("http/1.1")._value.get()

    async def main() -> tuple[list[Answer], tuple[int, Any]]:
        gen = server._listen(fn)
        config = await gen.__anext__()
        port = int(config["url"].rsplit(":", 1)[1].split("/")[0])
        client = await Client.open(port, client_context(cert, ["h2", "http/1.1"]))
        answers = await client.exchange(("/deployment-gate", b'{"uid": "a"}'),
                                        ("/approval-stamp", b'{"uid": '),
                                        ("/approval-stamp", b'{"broken": true}'),
                                        ("/someone-elses-hook", b'{"uid": "x"}'),
                                        ("/deployment-gate", b"", "GET"))
        async with aiohttp.ClientSession() as session, session.post(
                f"https://127.0.0.1:{port}/deployment-gate", data=b'{"uid": "b"}',
                ssl=client_context(cert, ["http/1.1"])) as resp:
            h1 = (resp.status, await resp.json())
        client.writer.close()
        await gen.aclose()  # the server's clean-up: connections closed, port released
        return answers, h1

    answers, h1 = run(main)
    ok, not_json, not_review, unknown, get = answers
    assert (ok.status, json.loads(ok.body)) == (200, {"response": {"uid": "a", "allowed": True}})
    assert ok.headers[b"content-type"] == b"application/json"
    assert b"content-length" not in ok.headers  # optional in HTTP/2: the stream's end is the body's
    assert not_json.status == 400 and b"Expecting value" in not_json.body
    assert not_review.status == 400 and b"not an AdmissionReview" in not_review.body
    assert unknown.status == 404
    assert get.status == 405
    assert h1 == (200, {"response": {"uid": "b", "allowed": True}})
    assert seen == [("deployment-gate", {"uid": "a"}), ("approval-stamp", {"broken": True}),
                    ("deployment-gate", {"uid": "b"})]
    assert metrics.WEBHOOK_REQUESTS.labels("h2")._value.get() - h2_before == 3  # the POSTs to hooks of ours
    assert metrics.WEBHOOK_REQUESTS.labels("http/1.1")._value.get() - h1_before == 1


# --- the HTTP/2 protocol ---------------------------------------------------------------------------


async def echo(path: str, raw: bytes | bytearray) -> bytes:
    if path == "/big":
        return b'"' + b"x" * 100_000 + b'"'
    return json.dumps({"path": path, "length": len(raw)}).encode()


def test_concurrent_requests_share_one_connection(cert: webhook_tls.ServingCert) -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        order.append(f"start {path}")
        if path == "/slow":
            await release.wait()
        order.append(f"end {path}")
        return b"{}"

    async def main() -> list[Answer]:
        server, port, connections = await serve_h2(cert, answer)
        client = await Client.open(port, client_context(cert, ["h2"]))
        slow = client.request("/slow", b"{}")
        await client.flush()
        fast = await client.exchange(("/fast", b"{}"))  # answered while /slow waits
        assert slow not in client.done and len(connections) == 1
        release.set()
        await client.pump(lambda: slow in client.done)
        server.close()
        return [*fast, client.answers[slow]]

    fast, slow = run(main)
    assert fast.status == slow.status == 200
    assert order == ["start /slow", "start /fast", "end /fast", "end /slow"]


def test_answers_ready_together_go_out_in_few_writes(cert: webhook_tls.ServingCert) -> None:
    """A burst's answers are written to the socket a batch at a time, not one send each."""
    writes: list[int] = []

    class Counting(webhook_h2.H2Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            real = transport.write  # type: ignore[attr-defined]

            def write(data: bytes) -> None:
                writes.append(len(data))
                real(data)

            transport.write = write  # type: ignore[attr-defined]
            super().connection_made(transport)

    async def main() -> list[Answer]:
        server = await asyncio.get_running_loop().create_server(
            lambda: Counting(echo), "127.0.0.1", 0, ssl=server_context(cert))
        client = await Client.open(server.sockets[0].getsockname()[1], client_context(cert, ["h2"]))
        writes.clear()
        answers = await client.exchange(*((f"/r{i}", b"{}") for i in range(40)))
        server.close()
        return answers

    answers = run(main)
    assert [json.loads(a.body)["path"] for a in answers] == [f"/r{i}" for i in range(40)]
    assert len(writes) <= 10, writes  # not a send per answer (the window credit writes too)
    assert len(writes) >= -(-40 // webhook_h2.FLUSH_EVERY)  # nor one answer waiting for all


def holding(held: str, release: asyncio.Event) -> webhook_h2.Answer:
    """An answer that waits for ``release`` on the path ``held`` and answers ``{}`` at once elsewhere."""
    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        if path == held:
            await release.wait()
        return b"{}"

    return answer


def test_the_concurrent_stream_limit_holds_and_answered_streams_free_their_places(
        cert: webhook_tls.ServingCert) -> None:
    release = asyncio.Event()

    async def main() -> tuple[list[Answer], list[Answer], bool]:
        server, port, connections = await serve_h2(cert, holding("/held", release))
        client = await Client.open(port, client_context(cert, ["h2"]))
        limit = webhook_h2.MAX_STREAMS
        # Twice the limit in turn: the streams answered first no longer count.
        first = await client.exchange(*(("/r", b"{}") for _ in range(limit)))
        second = await client.exchange(*(("/r", b"{}") for _ in range(limit)))
        held = [client.request("/held", b"{}") for _ in range(limit)]
        await client.flush()
        (protocol,) = connections
        for _ in range(250):  # until the server holds them all (at most 5 s)
            if len(protocol.tasks) == limit:
                break
            await asyncio.sleep(0.02)
        assert len(protocol.tasks) == limit and not client.goaway
        # A client that ignores the advertised limit: the stream over it is refused (a stream
        # error the client may retry, RFC 9113 §5.1.2); the connection and the others go on.
        client.conn.remote_settings.update({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2 * limit})
        client.conn.remote_settings.acknowledge()
        over = client.request("/r", b"{}")
        await client.flush()
        await client.pump(lambda: over in client.done)
        assert all(sid not in client.done for sid in held)
        release.set()
        await client.pump(lambda: all(sid in client.done for sid in held))
        (after,) = await client.exchange(("/r", b"{}"))
        server.close()
        return first + second + [client.answers[sid] for sid in held] + [after], \
            [client.answers[over]], client.goaway

    answered, refused, goaway = run(main)
    assert [a.status for a in answered] == [200] * (3 * webhook_h2.MAX_STREAMS + 1)
    assert [a.reset for a in refused] == [ErrorCodes.REFUSED_STREAM] and not goaway


def test_a_large_answer_waits_for_flow_control_credit(cert: webhook_tls.ServingCert) -> None:
    async def main() -> tuple[Answer, int, Answer]:
        server, port, _ = await serve_h2(cert, echo)
        client = await Client.open(port, client_context(cert, ["h2"]), window=1000)
        client.credit = False
        sid = client.request("/big", b"{}")
        await client.flush()
        await client.pump(lambda: len(client.answers[sid].body) >= 1000, timeout=2)
        await asyncio.sleep(0.2)
        stalled = len(client.answers[sid].body)  # the server waits: no more than the window
        client.credit = True
        client.conn.increment_flow_control_window(200_000, sid)
        client.conn.increment_flow_control_window(200_000)
        await client.flush()
        await client.pump(lambda: sid in client.done)
        after = await client.exchange(("/after", b"{}"))  # the connection still serves
        server.close()
        return client.answers[sid], stalled, after[0]

    big, stalled, after = run(main)
    assert stalled == 1000
    assert big.status == 200 and len(big.body) == 100_002
    assert after.status == 200


def test_an_oversized_body_is_refused_and_the_connection_stays(cert: webhook_tls.ServingCert) -> None:
    async def main() -> list[Answer]:
        server, port, _ = await serve_h2(cert, echo, max_body=10_000)
        client = await Client.open(port, client_context(cert, ["h2"]))
        declared = client.request("/declared", b"x" * 20_000)
        undeclared = client.request("/undeclared", b"x" * 30_000, length=-1)
        ok = client.request("/ok", b"{}")
        await client.flush()
        await client.pump(lambda: {declared, undeclared, ok} <= client.done)
        # Bodies that differ from their content-length: malformed requests, stream errors
        # (RFC 9113 §8.1.1); the connection goes on.
        longer = client.request("/longer", b"x" * 300, length=100)
        shorter = client.request("/shorter", b"x" * 30, length=100)
        after = client.request("/after", b"{}")
        await client.flush()
        await client.pump(lambda: {longer, shorter, after} <= client.done)
        server.close()
        return [client.answers[i] for i in (declared, undeclared, ok, longer, shorter, after)]

    declared, undeclared, ok, longer, shorter, after = run(main)
    assert declared.status == 413 and undeclared.status == 413
    assert ok.status == 200 and json.loads(ok.body) == {"path": "/ok", "length": 2}
    assert longer.reset == shorter.reset == ErrorCodes.PROTOCOL_ERROR and not longer.status
    assert after.status == 200


def test_a_failing_answer_is_a_500_without_details(cert: webhook_tls.ServingCert) -> None:
    async def broken(path: str, raw: bytes | bytearray) -> bytes:
        raise RuntimeError("token=s3cr3t")

    async def main() -> Answer:
        server, port, _ = await serve_h2(cert, broken)
        client = await Client.open(port, client_context(cert, ["h2"]))
        (answer,) = await client.exchange(("/x", b"{}"))
        server.close()
        return answer

    answer = run(main)
    assert answer.status == 500 and b"s3cr3t" not in answer.body


def test_an_idle_connection_is_closed_with_a_goaway(cert: webhook_tls.ServingCert) -> None:
    async def main() -> tuple[bool, bytes, int]:
        server, port, connections = await serve_h2(cert, echo, idle_seconds=0.3)
        client = await Client.open(port, client_context(cert, ["h2"]))
        await client.exchange(("/one", b"{}"))
        await client.pump(lambda: client.goaway, timeout=3)
        rest = await asyncio.wait_for(client.reader.read(), 3)  # then the server closes
        server.close()
        return client.goaway, rest, len(connections)

    goaway, rest, open_connections = run(main)
    assert goaway and rest == b"" and open_connections == 0


def test_shutdown_answers_what_is_in_progress_and_refuses_new_requests(
        cert: webhook_tls.ServingCert) -> None:
    release = asyncio.Event()
    answer = holding("/slow", release)

    async def main() -> tuple[Answer, Answer, bool]:
        server, port, connections = await serve_h2(cert, answer)
        client = await Client.open(port, client_context(cert, ["h2"]))
        slow = client.request("/slow", b"{}")
        await client.flush()
        await asyncio.sleep(0.1)
        (conn,) = connections
        stopping = asyncio.create_task(conn.shutdown(timeout=5))
        await asyncio.sleep(0.1)
        (late,) = await client.exchange(("/late", b"{}"))
        release.set()
        await client.pump(lambda: slow in client.done and client.goaway)
        await stopping
        server.close()
        return client.answers[slow], late, client.goaway

    slow, late, goaway = run(main)
    assert slow.status == 200
    assert late.reset == ErrorCodes.REFUSED_STREAM  # safe to retry elsewhere
    assert goaway


def test_negotiation_falls_back_to_http1_without_alpn(cert: webhook_tls.ServingCert) -> None:
    """A client that offers no ALPN (or only http/1.1) gets the HTTP/1.1 protocol."""
    made: list[str] = []

    class Http1(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append("http/1.1")
            assert isinstance(transport, asyncio.Transport)
            transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: webhook_h2.Negotiate(Http1, lambda: webhook_h2.H2Protocol(echo)),
            "127.0.0.1", 0, ssl=server_context(cert))
        port = server.sockets[0].getsockname()[1]
        out = []
        for alpn in ([], ["http/1.1"]):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(cert, alpn))
            out.append(await reader.readuntil(b"\r\n\r\n"))
            writer.close()
        server.close()
        return out

    assert run(main) == [b"HTTP/1.1 204 No Content\r\n\r\n"] * 2
    assert made == ["http/1.1", "http/1.1"]


def test_an_operator_without_webhooks_loads_neither_h2_nor_cryptography() -> None:
    """Memory (bench.memory): h2 is 1.3 MiB and cryptography 7.5 in a running operator."""
    import os
    import subprocess
    import sys

    script = ("import importlib, sys; from mlsec.handlers import main; "
              "[importlib.import_module(m) for m in main.HANDLER_MODULES]; "
              "print(sorted(m for m in ('h2', 'hpack', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MLSEC_")})
    assert out.stdout.strip() == "[]"


# --- our HTTP/2: what h2spec (tests/integration/test_h2spec.py) does not try ----------------------


def test_a_header_block_is_bounded_however_many_continuation_frames_carry_it() -> None:
    """The CONTINUATION flood: a header block that never ends is not buffered without bound."""
    headers = h2wire.raw(webhook_h2.HEADERS, 0, 1, b"\x82")  # no END_HEADERS
    filler = h2wire.raw(webhook_h2.CONTINUATION, 0, 1, b"\x82" * webhook_h2.FRAME_SIZE)
    count = webhook_h2.MAX_HEADER_LIST // webhook_h2.FRAME_SIZE + 2
    transport = h2wire.drive([h2wire.CLIENT_START + headers] + [filler] * count)
    *_, last = h2wire.frames(bytes(transport.out))
    assert transport.closed
    assert last[0] == webhook_h2.GOAWAY and last[3][4:] == b"\x00\x00\x00\x0b"  # ENHANCE_YOUR_CALM


@pytest.mark.parametrize("status", [200, 400, 404, 405, 413, 500, 503])
@pytest.mark.parametrize("content_type", [webhook_http1.JSON, webhook_http1.TEXT])
def test_answer_headers_are_constant_bytes_that_leave_the_clients_table_empty(
        status: int, content_type: bytes) -> None:
    block = webhook_hpack.response_headers(status, content_type)
    decoder = hpack.Decoder()
    for first in (b"\x20" + block, block, block):  # our first block says our table's size: 0
        assert decoder.decode(first, raw=True) == [(b":status", str(status).encode()),
                                                   (b"content-type", content_type)]
    assert not decoder.header_table.dynamic_entries


def test_bodies_beyond_the_connection_window_are_credited(cert: webhook_tls.ServingCert) -> None:
    body = b"x" * 900_000  # 12 of them: more than the connection's 8 MiB window

    async def main() -> list[Answer]:
        server, port, _ = await serve_h2(cert, echo)
        client = await Client.open(port, client_context(cert, ["h2"]))
        answers = await client.exchange(*((f"/r{i}", body) for i in range(12)))
        server.close()
        return answers

    answers = run(main)
    expected = [{"path": f"/r{i}", "length": len(body)} for i in range(12)]
    assert [json.loads(a.body) for a in answers] == expected


def test_a_request_the_client_resets_is_not_answered_and_the_connection_goes_on(
        cert: webhook_tls.ServingCert) -> None:
    release = asyncio.Event()

    async def main() -> tuple[Answer, Answer, bool]:
        server, port, connections = await serve_h2(cert, holding("/held", release))
        client = await Client.open(port, client_context(cert, ["h2"]))
        held = client.request("/held", b"{}")
        await client.flush()
        (protocol,) = connections
        await until(lambda: bool(protocol.tasks))
        client.conn.reset_stream(held, ErrorCodes.CANCEL)
        await client.flush()
        await until(lambda: not protocol.streams)
        release.set()
        (after,) = await client.exchange(("/after", b"{}"))
        server.close()
        return client.answers[held], after, client.goaway

    held, after, goaway = run(main)
    assert held.status == 0 and not held.body  # nothing was sent on the reset stream
    assert after.status == 200 and not goaway


def test_a_client_that_floods_pings_without_reading_is_dropped() -> None:
    pings = h2wire.raw(webhook_h2.PING, 0, 0, b"12345678") * 10_000  # each answered by 17 bytes
    flooded = h2wire.drive([h2wire.CLIENT_START] + [pings] * 10, unread=True)
    assert flooded.closed and len(flooded.out) <= webhook_h2.MAX_UNREAD + len(pings)  # one read more at most
    reading = h2wire.drive([h2wire.CLIENT_START] + [pings] * 10)  # the same pings, read as they come
    assert not reading.closed
    acks = [f for f in h2wire.frames(bytes(reading.out)) if f[0] == webhook_h2.PING]
    assert len(acks) == 100_000 and all(f[1] == 1 and f[3] == b"12345678" for f in acks)


def test_answers_of_streams_the_client_reset_still_count_against_the_limit(
        cert: webhook_tls.ServingCert) -> None:
    """The rapid reset attack: opening streams and resetting them at once runs no more answers."""
    release = asyncio.Event()

    async def main() -> tuple[Answer, Answer, int]:
        server, port, connections = await serve_h2(cert, holding("/held", release))
        client = await Client.open(port, client_context(cert, ["h2"]))
        held = [client.request("/held", b"{}") for _ in range(webhook_h2.MAX_STREAMS)]
        await client.flush()
        (protocol,) = connections
        await until(lambda: len(protocol.tasks) == webhook_h2.MAX_STREAMS)
        for sid in held:
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        (refused,) = await client.exchange(("/r", b"{}"))
        running = len(protocol.tasks)
        release.set()
        await until(lambda: not protocol.tasks)
        (after,) = await client.exchange(("/r", b"{}"))
        server.close()
        return refused, after, running

    refused, after, running = run(main)
    assert refused.reset == ErrorCodes.REFUSED_STREAM and running == webhook_h2.MAX_STREAMS
    assert after.status == 200


def test_a_connect_request_is_answered_405() -> None:
    block = hpack.Encoder().encode([(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:443")])
    headers = h2wire.raw(webhook_h2.HEADERS, webhook_h2.END_HEADERS | webhook_h2.END_STREAM, 1, block)
    transport = h2wire.drive([h2wire.CLIENT_START + headers])
    answer = [f for f in h2wire.frames(bytes(transport.out)) if f[2] == 1]
    assert not transport.closed and answer[0][0] == webhook_h2.HEADERS
    assert hpack.Decoder().decode(answer[0][3], raw=True)[0] == (b":status", b"405")
