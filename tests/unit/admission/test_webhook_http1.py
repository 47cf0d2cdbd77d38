"""The webhook port's HTTP/1.1 protocol: framing, strictness, keep-alive, flow control, shutdown,
on real loopback sockets (the TLS path through the operator's server: test_webhook_h2)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tests.unit.admission import h2wire

from mlsec.handlers import webhook_http1
from mlsec.handlers.admission_dispatch import BadRequest, NotFound
from mlsec.handlers.webhook_http1 import HeadError, parse_head


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 20))


CHUNKED = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def post(path: str, body: bytes = b"{}", *headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"POST {path} {version}", "Host: 127.0.0.1", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo(path: str, raw: bytes | bytearray) -> bytes:
    if path == "/missing":
        raise NotFound(path)
    if path == "/bad":
        raise BadRequest("not an AdmissionReview")
    if path == "/boom":
        raise RuntimeError("secret detail")
    return b'{"path":"%s","body":%s}' % (path.encode(), bytes(raw) or b"null")


async def serve(answer: webhook_http1.Answer = echo, **options: Any
                ) -> tuple[asyncio.Server, int, set[webhook_http1.H1Protocol]]:
    connections: set[webhook_http1.H1Protocol] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: webhook_http1.H1Protocol(answer, connections=connections, **options), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    headers = {k.lower(): v for k, v in re.findall(r"\r\n([^:\r\n]+): *([^\r\n]*)", head)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


# --- the request head (pure) ----------------------------------------------------------------------


def test_a_plain_post_is_framed_by_its_content_length() -> None:
    head = parse_head(b"POST /deployment-gate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"content-length:  1053 ")
    assert head == webhook_http1.Head(b"POST", "/deployment-gate", 1053, keep_alive=True,
                                      expect_continue=False)


@pytest.mark.parametrize(("head", "status"), [
    (b"POST /x\r\nHost: x", 400),  # no version
    (b"POST  /x HTTP/1.1\r\nHost: x", 400),  # two spaces
    (b"POST /x HTTP/2.0\r\nHost: x", 505),
    (b"POST /x FTP/1.1\r\nHost: x", 400),
    (b"POST /x HTTP/1.1\r\nHost : x\r\nContent-Length: 2", 400),  # space before the colon
    (b"POST /x HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded", 400),  # obsolete line folding
    (b"POST /x HTTP/1.1\r\nHost: x\r\nno colon", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nX-A(b): 1", 400),  # not a token
    (b"POST /x HTTP/1.1\r\nHost: x\nContent-Length: 2", 400),  # a bare LF
    (b"POST /x HTTP/1.1\r\nHost: x\rContent-Length: 2", 400),  # a bare CR
    (b"POST /x HTTP/1.1\r\nHost: x\0", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked", 501),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip", 400),  # not delimited
    (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -2", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577", 413),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000, 413),
    (b"POST /x HTTP/1.1\r\nContent-Length: 2", 400),  # HTTP/1.1 without Host
    (b"POST /x HTTP/1.1\r\nHost: x\r\nHost: y", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: something-else", 417),
])
def test_what_is_refused_and_with_which_status(head: bytes, status: int) -> None:
    with pytest.raises(HeadError) as refused:
        parse_head(head)
    assert refused.value.status == status


def test_a_chunked_body_is_announced() -> None:
    head = parse_head(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked")
    assert head.chunked and head.length == 0


def test_keep_alive_and_expect() -> None:
    assert not parse_head(b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Close").keep_alive
    assert not parse_head(b"POST /x HTTP/1.0").keep_alive
    assert parse_head(b"POST /x HTTP/1.0\r\nConnection: keep-alive").keep_alive
    assert parse_head(b"POST /x HTTP/1.0\r\nConnection: keep-alive").http10
    assert parse_head(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2").length == 2
    assert parse_head(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue").expect_continue
    assert not parse_head(b"POST /x HTTP/1.0\r\nExpect: 100-continue").expect_continue


# --- on a connection ------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async def main() -> list[tuple[int, dict[str, str], bytes]]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\r\n" + post("/a", b"[1]") + post("/b", b"[2]") + post("/c", b"[3]"))
        answers = [await read_answer(reader) for _ in range(3)]
        writer.write(post("/d", b"[4]"))  # and the connection stays for the next one
        answers.append(await read_answer(reader))
        writer.close()
        server.close()
        return answers

    answers = run(main)
    assert [a[2] for a in answers] == [b'{"path":"/%s","body":[%d]}' % (p, i)
                                       for i, p in enumerate((b"a", b"b", b"c", b"d"), 1)]
    assert all(a[0] == 200 and a[1]["content-type"] == "application/json" for a in answers)
    assert all(re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", a[1]["date"]) for a in answers)
    assert not any("connection" in a[1] for a in answers)


def test_a_half_closed_connection_gets_its_answers_then_closes() -> None:
    async def main() -> tuple[list[int], bytes]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/a") + post("/b") + post("/c")[:10])  # the third never completes
        writer.write_eof()
        answers = [await read_answer(reader) for _ in range(2)]
        rest = await reader.read()
        writer.close()
        server.close()
        return [a[0] for a in answers], rest

    assert run(main) == ([200, 200], b"")


def test_a_request_arriving_a_byte_at_a_time() -> None:
    async def main() -> tuple[int, bytes]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in post("/slow", b'{"x": 1}'):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        status, _, body = await read_answer(reader)
        writer.close()
        server.close()
        return status, body

    assert run(main) == (200, b'{"path":"/slow","body":{"x": 1}}')


def chunked(path: str, *pieces: bytes, trailer: bytes = b"") -> bytes:
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + framed + b"0\r\n" + trailer + b"\r\n")


def test_a_chunked_body_is_decoded_and_the_next_request_follows() -> None:
    async def main() -> list[tuple[int, bytes]]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(chunked("/a", b'{"x"', b": ", b"[1, 2]}", trailer=b"X-Checksum: none\r\n")
                     + chunked("/b") + post("/c", b"[3]"))
        answers = [await read_answer(reader) for _ in range(3)]
        for byte in chunked("/d", b"[4", b"]"):  # and a byte at a time
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        answers.append(await read_answer(reader))
        writer.close()
        server.close()
        return [(a[0], a[2]) for a in answers]

    assert run(main) == [(200, b'{"path":"/a","body":{"x": [1, 2]}}'), (200, b'{"path":"/b","body":null}'),
                         (200, b'{"path":"/c","body":[3]}'), (200, b'{"path":"/d","body":[4]}')]


def test_chunk_framing_is_bounded_as_well_as_the_body() -> None:
    """1-byte chunks with long extensions: refused once the framing is twice the body limit."""
    async def main() -> tuple[int, bytes]:
        server, port, _ = await serve(max_body=100)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(CHUNKED + b"".join(b"1;" + b"e" * 900 + b"\r\nx\r\n" for _ in range(20)))
        status, _, _ = await read_answer(reader)
        rest = await reader.read()
        writer.close()
        server.close()
        return status, rest

    assert run(main) == (413, b"")


def test_errors_of_the_answer_keep_the_connection_and_hide_details() -> None:
    async def main() -> list[tuple[int, dict[str, str], bytes]]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for path in ("/missing", "/bad", "/boom", "/ok"):
            writer.write(post(path))
            answers.append(await read_answer(reader))
        writer.close()
        server.close()
        return answers

    (missing, bad, boom, ok) = run(main)
    assert (missing[0], missing[2]) == (404, b"no such webhook\n")
    assert (bad[0], bad[2]) == (400, b"not an AdmissionReview\n")
    assert (boom[0], boom[2]) == (500, b"internal error\n")  # not the exception's text
    assert ok[0] == 200


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n", 400),  # not a hexadecimal size
    (CHUNKED + b"123456789\r\n", 400),  # a size of more than 8 digits
    (CHUNKED + b"2\r\n{}xx\r\n0\r\n\r\n", 400),  # the data longer than its size
    (CHUNKED + b"1" * 2000, 400),  # no end of the size line in sight
    (CHUNKED + b"100001\r\n", 413),  # one chunk over the body limit, refused before it arrives
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000, 431),  # no end of the head in sight
])
def test_a_refused_request_is_answered_and_the_connection_closed(request_bytes: bytes, status: int) -> None:
    async def main() -> tuple[int, dict[str, str], bytes]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes + post("/after"))  # never answered: the stream is not framed
        answer = await read_answer(reader)
        rest = await reader.read()
        writer.close()
        server.close()
        return answer[0], answer[1], rest

    got, headers, rest = run(main)
    assert (got, headers["connection"], rest) == (status, "close", b"")


def test_connection_close_and_http10_end_the_connection_after_the_answer() -> None:
    async def main() -> list[tuple[int, str, bytes]]:
        server, port, _ = await serve()
        out = []
        for request in (post("/a", b"1", "Connection: close"), post("/b", b"2", version="HTTP/1.0")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status, headers, _ = await read_answer(reader)
            out.append((status, headers.get("connection", ""), await reader.read()))
            writer.close()
        server.close()
        return out

    assert run(main) == [(200, "close", b""), (200, "close", b"")]


def test_an_http10_client_asking_to_keep_the_connection_is_told_it_stays() -> None:
    async def main() -> list[tuple[int, str]]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = []
        for _ in range(2):
            writer.write(post("/a", b"1", "Connection: keep-alive", version="HTTP/1.0"))
            status, headers, _ = await read_answer(reader)
            out.append((status, headers.get("connection", "")))
        writer.close()
        server.close()
        return out

    assert run(main) == [(200, "keep-alive")] * 2


def test_expect_100_continue_is_answered_before_the_body() -> None:
    async def main() -> tuple[bytes, int, bytes]:
        server, port, _ = await serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = post("/big", b"[7]", "Expect: 100-continue")
        head, body = request.split(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(body)
        status, _, answer = await read_answer(reader)
        writer.close()
        server.close()
        return interim, status, answer

    assert run(main) == (b"HTTP/1.1 100 Continue\r\n\r\n", 200, b'{"path":"/big","body":[7]}')


def test_an_idle_or_half_sent_connection_is_closed() -> None:
    async def main() -> list[bytes]:
        server, port, connections = await serve(idle_seconds=0.3)
        out = []
        for first in (post("/a"), post("/a")[:20]):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(first)
            out.append(await asyncio.wait_for(reader.read(), 3))
            writer.close()
        await asyncio.sleep(0.05)
        assert not connections
        server.close()
        return out

    answered, half = run(main)
    assert answered.startswith(b"HTTP/1.1 200 OK") and half == b""


def test_a_client_that_does_not_read_gets_no_more_answers_until_it_does() -> None:
    """Pipelined requests are answered only while the answers drain: memory stays bounded."""
    calls: list[str] = []
    big = b'"' + b"x" * (256 * 1024) + b'"'

    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        calls.append(path)
        return big

    async def main() -> tuple[int, int]:
        server, port, _ = await serve(answer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        writer.write(b"".join(post(f"/{i}") for i in range(200)))
        await asyncio.sleep(0.5)
        answered_unread = len(calls)
        bodies = [await read_answer(reader) for _ in range(200)]
        writer.close()
        server.close()
        return answered_unread, sum(1 for b in bodies if b[2] == big)

    answered_unread, complete = run(main)
    assert answered_unread < 100  # the socket buffers hold a few dozen; not all 200 (50 MiB)
    assert complete == 200


def test_shutdown_finishes_the_answer_in_progress_then_closes() -> None:
    release = asyncio.Event()

    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        await release.wait()
        return b"{}"

    async def main() -> tuple[int, str, bytes, bytes]:
        server, port, connections = await serve(answer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/slow") + post("/next"))
        await asyncio.sleep(0.1)
        stopping = [asyncio.create_task(c.shutdown(5)) for c in list(connections)]
        await asyncio.sleep(0.1)
        release.set()
        status, headers, _ = await read_answer(reader)
        rest = await reader.read()
        idle_rest = await idle_reader.read()
        await asyncio.gather(*stopping)
        writer.close()
        idle_writer.close()
        server.close()
        return status, headers.get("connection", ""), rest, idle_rest

    assert run(main) == (200, "close", b"", b"")


# --- the answers of many connections, written together ----------------------------------------


class Recording(h2wire.Transport):
    """A connection's transport that logs its writes and close in one shared sequence."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.log.append((self.name, bytes(data).split(b"\r\n", 1)[0].decode()))

    def close(self) -> None:
        super().close()
        self.log.append((self.name, "close"))


def test_the_answers_of_a_burst_are_written_a_batch_at_a_time_each_in_its_connections_order() -> None:
    log: list[tuple[str, str]] = []

    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        log.append((path, "answered"))
        return b"{}"

    async def main() -> list[Recording]:
        outbox = webhook_http1.Outbox(limit=16)
        transports = []
        for i in range(40):
            protocol = webhook_http1.H1Protocol(answer, outbox=outbox)
            transports.append(Recording(f"/c{i}", log))
            protocol.connection_made(transports[-1])
            # Two pipelined requests, the second closing the connection and waiting for a 100
            # Continue: each comes after what the connection was sent before.
            protocol.data_received(post(f"/c{i}") + post(f"/c{i}", b"{}", "Connection: close",
                                                          "Expect: 100-continue")[:-2])
        for _ in range(5):
            await asyncio.sleep(0)
        return transports

    transports = run(main)
    runs = [len(list(group)) for written, group in itertools.groupby(log, key=lambda e: e[1] != "answered")
            if written]
    assert runs == [16] * 5  # 80 writes, 16 at a time: not a send after each answer
    for transport in transports:
        mine = [what for name, what in log if name == transport.name]
        assert mine == ["answered", "HTTP/1.1 200 OK", "HTTP/1.1 100 Continue"], mine


def test_a_close_waits_for_the_answer_before_it() -> None:
    log: list[tuple[str, str]] = []

    async def main() -> None:
        outbox = webhook_http1.Outbox()
        for name, data in (("/closing", post("/closing", b"{}", "Connection: close")),
                           ("/refused", b"POST /refused HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")):
            protocol = webhook_http1.H1Protocol(echo, outbox=outbox)
            protocol.connection_made(Recording(name, log))
            protocol.data_received(data)
        for _ in range(5):
            await asyncio.sleep(0)

    run(main)
    assert [what for name, what in log if name == "/closing"] == ["HTTP/1.1 200 OK", "close"]
    assert [what for name, what in log if name == "/refused"] == ["HTTP/1.1 400 Bad Request", "close"]


def test_a_request_after_the_one_that_closes_the_connection_is_not_answered() -> None:
    """Its close waits in the outbox; what the client sends meanwhile is not read."""
    log: list[tuple[str, str]] = []
    answered: list[str] = []

    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        answered.append(path)
        return b"{}"

    async def main() -> None:
        protocol = webhook_http1.H1Protocol(answer, outbox=webhook_http1.Outbox())
        protocol.connection_made(Recording("/c", log))
        protocol.data_received(post("/first", b"{}", "Connection: close"))
        await asyncio.sleep(0)  # answered: its answer and the close wait for the end of the turn
        assert protocol.closing and log == []
        protocol.data_received(post("/later"))
        for _ in range(5):
            await asyncio.sleep(0)

    run(main)
    assert answered == ["/first"]
    assert [what for _, what in log] == ["HTTP/1.1 200 OK", "close"]
