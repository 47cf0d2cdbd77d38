"""HTTP/1.1 for the admission webhooks: one POST at a time per connection, our routes only.

The webhook port serves HTTP/2 to clients that negotiate it (kube-apiserver does:
:mod:`mlsec.handlers.webhook_h2`) and HTTP/1.1 to the rest. aiohttp's server cost more CPU per
request than the TLS exchange and our decision together (a request object, a response object,
its header machinery and a handler task: ~0.06 of the gate's ~0.28 ms), for a protocol subset
this small: a POST of a JSON body, answered with a JSON body. Anything else gets a clear status
and, when the connection cannot be kept in step, ``Connection: close``.

Kept strict, as a server in front of a security gate should be: a body framed by one
Content-Length value or by the chunked coding alone (kube-apiserver sends a Content-Length; Go's
client streams a file chunked, as ``kubectl create --raw -f`` does), never both (the request
smuggling cases), no obsolete line folding, no space before a header's colon, a Host header in
HTTP/1.1, at most ``MAX_HEAD`` bytes of request line and headers, at most ``MAX_BODY`` bytes of
body (and twice that of chunk framing). Pipelined requests are answered in order; a
connection without a complete request for ``IDLE_SECONDS`` is closed, as aiohttp closes an idle
keep-alive connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate

from mlsec.handlers.admission_dispatch import BadRequest, NotFound

log = logging.getLogger(__name__)

Answer = Callable[[str, bytes | bytearray], Awaitable[bytes]]
"""(request path, body) → the response's JSON body; raises :class:`~.admission_dispatch.BadRequest`
or :class:`~.admission_dispatch.NotFound`. Both protocols answer with it."""
MAX_BODY = 1024**2  # aiohttp's default, which served HTTP/1.1 here before
IDLE_SECONDS = 75.0  # aiohttp's keep-alive timeout, likewise
MAX_HEAD = 8 * 1024
"""Request line and headers (aiohttp's limit per line was 8190; an AdmissionReview POST has ~200
bytes of headers)."""
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
REASONS = {100: b"Continue", 200: b"OK", 400: b"Bad Request", 404: b"Not Found",
           405: b"Method Not Allowed", 413: b"Content Too Large",
           417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
           500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable",
           505: b"HTTP Version Not Supported"}


class HeadError(Exception):
    """A request head that cannot be served: answered with ``status`` and the connection closed
    (what follows it on the connection cannot be framed reliably)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Head:
    method: bytes
    path: str
    length: int
    keep_alive: bool
    expect_continue: bool
    http10: bool = False  # an HTTP/1.0 client is told when the connection stays open
    chunked: bool = False  # the body is chunked (``length`` is then 0)


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_head(head: bytes, max_body: int = MAX_BODY) -> Head:
    """The request line and headers (without the blank line) → what serving needs (pure)."""
    if b"\0" in head or not head.count(b"\r") == head.count(b"\n") == head.count(b"\r\n"):
        raise HeadError(400, "bare CR, LF or NUL in the request head")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HeadError(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HeadError(505 if version.startswith(b"HTTP/") else 400, "only HTTP/1.1 is served here")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # folded lines and "Name :" included
            raise HeadError(400, "malformed header line")
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    http10 = version == b"HTTP/1.0"
    chunked = b"transfer-encoding" in fields
    if chunked:
        codings = [t.strip().lower() for v in fields[b"transfer-encoding"] for t in v.split(b",")]
        if b"content-length" in fields or http10 or codings[-1:] != [b"chunked"]:
            raise HeadError(400, "a body framed by Transfer-Encoding cannot be delimited here")
        if codings != [b"chunked"]:
            raise HeadError(501, "only the chunked transfer coding is understood")
    lengths = set(fields.get(b"content-length") or [b"0"])
    if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
        raise HeadError(400, "invalid Content-Length")
    size = int(length) if len(length) <= 18 else max_body + 1  # int() refuses 4,300+ digits
    if size > max_body:
        raise HeadError(413, "request body too large")
    if version == b"HTTP/1.1" and len(fields.get(b"host") or []) != 1:
        raise HeadError(400, "exactly one Host header is required")
    tokens = {t.strip().lower() for v in fields.get(b"connection") or [] for t in v.split(b",")}
    keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
    expect = [v.lower() for v in fields.get(b"expect") or []]
    if expect and expect != [b"100-continue"]:
        raise HeadError(417, "only Expect: 100-continue is understood")
    return Head(method, target.decode("latin-1"), size, keep_alive, bool(expect) and not http10, http10,
                chunked)


_HEX = frozenset(b"0123456789abcdefABCDEF")
MAX_CHUNK_LINE = 1024  # a chunk's size line, extensions included


class Dechunker:
    """A chunked body (RFC 9112 §7.1) decoded as it arrives, each byte read once; the decoded size
    bounded by ``max_body`` and the framing by as much again (1-byte chunks with long extensions
    would otherwise keep a gigabyte buffered)."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.body = bytearray()
        self.offset = 0  # how far past the head's end the framing is decoded

    def feed(self, data: bytearray, start: int) -> int | None:
        """Decode ``data`` from ``start`` (where the body begins) on; the index just past the
        body's end once it is complete, else None (call again when more has arrived)."""
        while True:
            pos = start + self.offset
            if self.offset > 2 * self.max_body + MAX_HEAD:
                raise HeadError(413, "request body too large")
            eol = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
            if eol < 0:
                if len(data) - pos >= MAX_CHUNK_LINE:
                    raise HeadError(400, "malformed chunk size line")
                return None
            size_text = bytes(data[pos:eol]).split(b";", 1)[0].rstrip(b" \t")
            if not size_text or len(size_text) > 8 or not _HEX.issuperset(size_text):
                raise HeadError(400, "invalid chunk size")
            size = int(size_text, 16)
            if size == 0:  # the last chunk, then trailer fields (ignored) up to an empty line
                end = data.find(b"\r\n\r\n", eol, eol + 4 + MAX_HEAD)
                if end < 0:
                    if len(data) - eol > MAX_HEAD + 4:
                        raise HeadError(431, "trailer fields too large")
                    return None
                return end + 4
            if len(self.body) + size > self.max_body:
                raise HeadError(413, "request body too large")
            if len(data) < eol + 2 + size + 2:
                return None
            if data[eol + 2 + size:eol + 4 + size] != b"\r\n":
                raise HeadError(400, "chunk data not followed by CRLF")
            self.body += data[eol + 2:eol + 2 + size]
            self.offset = eol + 4 + size - start


_date = (0, b"")


def http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]


def response(status: int, body: bytes, content_type: bytes, keep_alive: bool, http10: bool = False) -> bytes:
    if not keep_alive:
        connection = b"Connection: close\r\n"
    else:  # HTTP/1.1's default; an HTTP/1.0 client must be told
        connection = b"Connection: keep-alive\r\n" if http10 else b""
    return b"".join((b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     % (status, REASONS[status], http_date(), content_type, len(body)),
                     connection, b"\r\n", body))


async def answered(answer: Answer, path: str, body: bytes | bytearray,
                   protocol: str) -> tuple[int, bytes, bytes]:
    """(status, body, content type) of the answer to a request (both protocols): an error is a
    400, 404 or 500 with a short text that names nothing internal."""
    try:
        return 200, await answer(path, body), JSON
    except BadRequest as exc:
        return 400, f"{exc}\n".encode(), TEXT
    except NotFound:
        return 404, b"no such webhook\n", TEXT
    except Exception:
        log.exception("admission webhook %s failed (%s)", path, protocol)
        return 500, b"internal error\n", TEXT


class IdleTimer:
    """A connection's keep-alive timeout (both protocols): ``expire`` is called once ``seconds``
    have passed since the last :meth:`touch` without ``busy()`` being true."""

    def __init__(self, seconds: float, busy: Callable[[], bool], expire: Callable[[], None]) -> None:
        self.seconds, self.busy, self.expire = seconds, busy, expire
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0

    def touch(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        if self._handle is None:
            self._handle = loop.call_later(self.seconds, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self._last
        if self.busy() or idle_for < self.seconds:
            self._handle = loop.call_later(max(0.1, self.seconds - idle_for), self._check)
            return
        self.expire()


class Outbox:
    """What the HTTP/1.1 connections of one server write, written together: at the end of the
    event loop's turn, or once ``limit`` writes are waiting. A burst's requests arrive on as many
    connections and are answered in one turn; a send after each answer left the next answer to
    run with cold caches: 0.23 against 0.18 ms of CPU a promotion-gate request
    (``bench/webhook_latency.py``). Closes wait their turn too, after the answers before them."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self.pending: list[tuple[asyncio.Transport, bytes | None]] = []  # None: close it
        self._soon: asyncio.Handle | None = None

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        self._add(transport, data)

    def close(self, transport: asyncio.Transport) -> None:
        self._add(transport, None)

    def _add(self, transport: asyncio.Transport, data: bytes | None) -> None:
        self.pending.append((transport, data))
        if len(self.pending) >= self.limit:
            self.flush()
        elif self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        batch, self.pending = self.pending, []
        for transport, data in batch:
            if transport.is_closing():  # closed meanwhile (by us or the client): nothing to send
                continue
            if data is None:
                transport.close()
            else:
                transport.write(data)


class H1Protocol(asyncio.Protocol):
    """One HTTP/1.1 connection: POSTs of AdmissionReviews answered by ``answer``, in order."""

    def __init__(self, answer: Answer, *, idle_seconds: float = IDLE_SECONDS, max_body: int = MAX_BODY,
                 connections: set[H1Protocol] | None = None, outbox: Outbox | None = None) -> None:
        self.answer = answer
        self.outbox = outbox if outbox is not None else Outbox()
        self.max_body = max_body
        self.connections = connections if connections is not None else set()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.head: tuple[int, Head] | None = None  # the request being received: where its body starts
        self.continued = False  # 100 Continue sent for the request being received
        self.chunks: Dechunker | None = None  # the chunked body being received
        self.writable = True
        self.paused = False  # reading paused: the buffer holds more than a request ahead
        self.draining = False
        self.closing = False  # its close is queued in the outbox: it takes no more requests
        self.eof = False  # the client has half-closed: answer what it sent, then close
        # Closed after ``idle_seconds`` without a complete request (a half-sent one included).
        self.idle = IdleTimer(idle_seconds, lambda: self.task is not None, self._expire)

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connections.add(self)
        self.idle.touch()

    def data_received(self, data: bytes) -> None:
        if self.closing:  # what follows a request that ended the connection is not read
            return
        self.buffer += data
        if self.task is None:
            self._next()
        elif len(self.buffer) > MAX_HEAD + self.max_body and self.transport is not None:
            self.paused = True  # pipelining far ahead of our answers: wait
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """The client sent all it will (a half-close): what is complete is still answered. Over
        TLS there is no half-close (asyncio closes the connection whatever this returns)."""
        self.eof = True
        if self.task is None:
            self._next()
        keep = self.task is not None and self.transport is not None and \
            self.transport.get_extra_info("sslcontext") is None
        if not keep:
            self.outbox.flush()  # asyncio closes the transport on return: our answers go first
        return keep

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        self.idle.cancel()

    def pause_writing(self) -> None:
        self.writable = False  # the client is not reading: answer nothing more until it does

    def resume_writing(self) -> None:
        self.writable = True
        if self.task is None:
            self._next()

    # --- requests ----------------------------------------------------------------------------
    def _next(self) -> None:
        """Frame the next complete request in the buffer and start answering it."""
        if self.transport is None or not self.writable or self.draining or self.closing:
            return
        if self.paused:  # nothing is being answered now: read on
            self.paused = False
            self.transport.resume_reading()
        if self.head is None:  # parsed once, not again with each piece of its body
            while self.buffer[:2] == b"\r\n":  # empty lines before a request line are allowed
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._refuse(431, "request line and headers too large")
                return
            try:
                self.head = (end + 4, parse_head(bytes(self.buffer[:end]), self.max_body))
            except HeadError as exc:
                self._refuse(exc.status, str(exc))
                return
        start, head = self.head
        stop: int | None
        if head.chunked:
            self.chunks = self.chunks or Dechunker(self.max_body)
            try:
                stop = self.chunks.feed(self.buffer, start)
            except HeadError as exc:
                self._refuse(exc.status, str(exc))
                return
        else:
            stop = start + head.length if len(self.buffer) - start >= head.length else None
        if stop is None:  # the body is still arriving
            if head.expect_continue and not self.continued:
                self.continued = True
                self.outbox.write(self.transport, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        body = bytes(self.chunks.body) if self.chunks is not None else bytes(self.buffer[start:stop])
        del self.buffer[:stop]
        self.head, self.continued, self.chunks = None, False, None
        if head.method != b"POST":
            self._refuse(405, "only POST is served here")
            return
        self.task = asyncio.get_running_loop().create_task(self._serve(head, body))

    async def _serve(self, head: Head, body: bytes) -> None:
        status, out, content_type = await answered(self.answer, head.path, body, "HTTP/1.1")
        self.task = None
        if self.transport is None:
            return
        keep_alive = head.keep_alive and not self.draining
        self.outbox.write(self.transport, response(status, out, content_type, keep_alive, head.http10))
        self.idle.touch()
        if keep_alive:
            self._next()  # the next pipelined request, if complete
        if not keep_alive or (self.eof and self.task is None):
            self._close()

    def _refuse(self, status: int, message: str) -> None:
        """An error answer, then the connection's end (the rest of the stream is not framed)."""
        if self.transport is not None:
            answer = response(status, f"{message}\n".encode(), TEXT, keep_alive=False)
            self.outbox.write(self.transport, answer)
        self._close()
        self.buffer.clear()
        self.head = None

    def _close(self) -> None:
        """The connection's end, after what it was sent: nothing more is read or answered on it."""
        self.closing = True
        if self.transport is not None:
            self.outbox.close(self.transport)

    # --- idle and shutdown -------------------------------------------------------------------
    def _expire(self) -> None:
        self._close()

    async def shutdown(self, timeout: float) -> None:
        """Answer the request in progress (at most ``timeout`` s, with ``Connection: close``), start
        no other, and close."""
        self.draining = True
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=timeout)
        self._close()
        self.outbox.flush()
