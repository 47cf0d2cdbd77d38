"""Fuzzing the webhook port's HTTP/1.1 framing (``handlers/webhook_http1.py``) with hypothesis.

- Any bytes as a request head: a :class:`Head` or a :class:`HeadError` with an HTTP status,
  never another exception.
- Chunked bodies, however split into chunks and into reads, decode to the original body and end
  exactly where the next request starts; any bytes after a valid start: a result or HeadError.
- On a real loopback connection: requests of either framing, pipelined and cut at random points,
  are answered in order with their own bodies; random bytes are answered or the connection is
  closed, and no protocol callback raises.

≈200 examples per test in ``make test``; ``MLSEC_FUZZ_EXAMPLES=10000`` for the long run.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsec.handlers import webhook_http1
from mlsec.handlers.webhook_http1 import Dechunker, HeadError, parse_head

EXAMPLES = int(os.environ.get("MLSEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MLSEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STATUSES = set(webhook_http1.REASONS)


@FUZZ
@given(st.binary(max_size=600))
def test_any_head_parses_or_is_refused_with_a_status(head: bytes) -> None:
    try:
        parsed = parse_head(head)
    except HeadError as exc:
        assert exc.status in STATUSES and exc.status >= 400
        return
    assert parsed.length >= 0 and parsed.length <= webhook_http1.MAX_BODY


HEADER_NAMES = st.sampled_from(["Host", "host", "HOST", "Content-Type", "Accept", "User-Agent",
                                "Content-Length", "Transfer-Encoding", "Connection", "Expect", "X-A"])


@FUZZ
@given(st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=20)), max_size=8),
       st.integers(0, 200), st.integers(0, 255))
def test_a_mutated_head_parses_or_is_refused(headers: list[tuple[str, bytes]], at: int, byte: int) -> None:
    head = b"POST /deployment-gate HTTP/1.1\r\n" + b"\r\n".join(n.encode() + b": " + v for n, v in headers)
    head = head[:at] + bytes([byte]) + head[at:]
    try:
        parse_head(head)
    except HeadError as exc:
        assert exc.status in STATUSES


def encode_chunks(body: bytes, sizes: list[int], extension: bool, trailer: bytes) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(body):
        size = sizes[i % len(sizes)] if sizes else len(body)
        piece = body[pos:pos + size]
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";name=v" if extension else b"", piece))
        pos, i = pos + len(piece), i + 1
    return b"".join(out) + b"0\r\n" + trailer + b"\r\n"


@FUZZ
@given(st.binary(max_size=4000), st.lists(st.integers(1, 700), max_size=5), st.booleans(),
       st.sampled_from([b"", b"X-Checksum: 1\r\n", b"A: 1\r\nB: 2\r\n"]),
       st.lists(st.integers(1, 5000), max_size=6))
def test_chunked_bodies_decode_however_they_are_cut(body: bytes, sizes: list[int], extension: bool,
                                                    trailer: bytes, reads: list[int]) -> None:
    wire = b"HEAD\r\n\r\n" + encode_chunks(body, sizes, extension, trailer)
    start, following = 8, b"POST /next HTTP/1.1\r\n"
    data, decoder, end = bytearray(), Dechunker(webhook_http1.MAX_BODY), None
    pos = 0
    for size in [*reads, len(wire) + len(following)]:  # arriving read by read
        data += (wire + following)[pos:pos + size]
        pos += size
        end = decoder.feed(data, start)
        if end is not None:
            break
    assert end == len(wire) and bytes(decoder.body) == body


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_after_a_chunked_head_decode_or_are_refused(tail: bytes) -> None:
    data = bytearray(b"5\r\nhello\r\n" + tail)
    try:
        end = Dechunker(1000).feed(data, 0)
    except HeadError as exc:
        assert exc.status in STATUSES
        return
    assert end is None or 0 < end <= len(data)


# --- on a connection ----------------------------------------------------------------------------


async def echo(path: str, raw: bytes | bytearray) -> bytes:
    return path.encode() + b"|" + bytes(raw)


async def exchange(stream: bytes, cuts: list[int], answers: int | None) -> tuple[bytes, list[Any]]:
    """Send ``stream`` cut at ``cuts``; read ``answers`` answers' worth (or to EOF)."""
    loop = asyncio.get_running_loop()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    server = await loop.create_server(lambda: webhook_http1.H1Protocol(echo, idle_seconds=2), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pos = 0
    for cut in sorted(set(cuts)):
        writer.write(stream[pos:cut])
        await writer.drain()
        await asyncio.sleep(0)
        pos = cut
    writer.write(stream[pos:])
    writer.write_eof()  # all there is: the server answers what is complete, then closes
    try:
        got = await asyncio.wait_for(reader.read(), 5) if answers is None else b""
        for _ in range(answers or 0):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            got += head.split(b" ", 2)[1] + b" " + await reader.readexactly(length) + b"\n"
    finally:
        writer.close()
        server.close()
    return got, errors


REQUEST = st.tuples(st.sampled_from(["/a", "/deployment-gate", "/x?timeout=10s"]), st.binary(max_size=300),
                    st.booleans(), st.lists(st.integers(1, 64), max_size=3))


@FUZZ
@given(st.lists(REQUEST, min_size=1, max_size=4), st.lists(st.integers(0, 2000), max_size=6))
def test_pipelined_requests_cut_anywhere_are_answered_in_order(
        requests: list[tuple[str, bytes, bool, list[int]]], cuts: list[int]) -> None:
    stream, expected = b"", b""
    for path, body, chunked, sizes in requests:
        if chunked:
            stream += (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                       + encode_chunks(body, sizes, False, b""))
        else:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            stream += head.encode() + body
        expected += b"200 " + path.encode() + b"|" + body + b"\n"
    got, errors = asyncio.run(exchange(stream, [c % (len(stream) + 1) for c in cuts], len(requests)))
    assert got == expected and not errors


@FUZZ
@given(st.binary(max_size=1500), st.lists(st.integers(0, 1500), max_size=4))
def test_random_bytes_are_answered_or_closed_and_nothing_raises(stream: bytes, cuts: list[int]) -> None:
    got, errors = asyncio.run(exchange(b"POST /a HTTP/1.1\r\n" + stream, cuts, None))
    assert not errors
    assert got == b"" or got.startswith(b"HTTP/1.1 ")
