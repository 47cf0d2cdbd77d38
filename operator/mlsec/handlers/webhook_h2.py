"""HTTP/2 for the admission webhooks: the API server's calls share one connection.

kube-apiserver calls a webhook with client-go's transport: HTTP/2 when the server offers it (ALPN),
else HTTP/1.1 with at most 25 idle connections kept per host. Over HTTP/1.1 a burst of 100
concurrent writes therefore opened ~75 new TLS connections every time, and each handshake cost
the operator's event loop ~0.8 ms of CPU, three to five times the review itself
(``bench/webhook_latency.py``). So the webhook port negotiates: ``h2`` connections are served
here, every other connection by :mod:`mlsec.handlers.webhook_http1`.

The server side of HTTP/2 (RFC 9113) that a webhook needs, ours: the frames, the stream states
and flow control in both directions, header blocks decoded and encoded by :mod:`mlsec.handlers.webhook_hpack`,
answers' headers constant bytes (never indexed, so our encoder keeps no table). It replaced the
``h2`` library, whose state machine and HPACK decoder took 88 µs of CPU a request to receive
and answer, against 22 for this module (100-request bursts, no TLS): over a third of what the
promotion gate cost in all. h2spec's 145 conformance tests pass (``tests/integration/
test_h2spec.py``; h2's server passed 139), and the ``h2`` library is the client of the tests.

Limits: ``MAX_STREAMS`` concurrent requests a connection, answers still running included (the
client opens another connection beyond them; streams it resets at once do not make room), a
body of at most ``MAX_BODY`` bytes (as over HTTP/1.1), a header block of at most
``MAX_HEADER_LIST`` bytes however many CONTINUATION frames carry it, ``CONNECTION_WINDOW`` bytes
in flight, ``MAX_UNREAD`` bytes the client does not read; a connection without a request for
``IDLE_SECONDS`` is closed (GOAWAY first), as an idle HTTP/1.1 keep-alive connection is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mlsec.handlers.webhook_hpack import Decoder, HeaderBlockError, HeaderListTooLarge, response_headers
from mlsec.handlers.webhook_http1 import IDLE_SECONDS, MAX_BODY, TEXT, Answer, IdleTimer, answered

log = logging.getLogger(__name__)

MAX_STREAMS = 128
CONNECTION_WINDOW = 8 * 1024**2
"""What a client may send on a connection ahead of our reading it. HTTP/2's default, 64 KiB, is
~20 AdmissionReviews: a burst would wait for our WINDOW_UPDATEs round trip by round trip."""
MAX_HEADER_LIST = 64 * 1024
MAX_UNREAD = 1024**2
"""Bytes written to a connection and not yet taken by the client beyond which it is dropped:
answers wait while the client does not read, so only frames it provokes could grow past this."""
FLUSH_EVERY = 16
"""Answers written to the socket together: the ones ready in one turn of the event loop, at most
this many. Each written alone (a TLS record and a send each) cost ~50 µs of CPU more: 0.31 ms a
promotion-gate request over HTTP/2 against 0.25 (``bench/webhook_latency.py``). Bounded so the
first answers of a burst do not wait for the last."""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_SIZE = 16384  # the largest frame we accept: SETTINGS_MAX_FRAME_SIZE's default, not raised
MAX_WINDOW = 2**31 - 1
CLOSED_KEPT = 256  # closed streams remembered, to tell a late frame from a protocol error

# Frame types, flags (RFC 9113 §6), settings (§6.5.2) and error codes (§7).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = range(10)
ENHANCE_YOUR_CALM = 0xB

_HEAD = struct.Struct(">HBBBL")  # a frame's 24-bit length as 16 + 8 bits, type, flags, stream
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")

_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+")  # no uppercase, space, control or inner colon
_VALUE = re.compile(rb"(?:[^\x00\r\n \t](?:[^\x00\r\n]*[^\x00\r\n \t])?)?")  # trimmed, no NUL/CR/LF
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                 b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})  # a request's


def request_header_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What makes a request's header block malformed (RFC 9113 §8.2 to 8.3), or None (pure).

    The h2 library's rules in one pass (h2 checked with a chain of eight generators):
    ``test_fuzz_h2_headers`` holds the two to the same answer on generated header blocks."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    for name, value in headers:
        if not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return f"malformed header field {name!r}"
        if name[0] == 0x3A:  # a pseudo-header field
            if regular or name in pseudo or name not in _PSEUDO:
                return f"misplaced, repeated or unknown pseudo-header field {name!r}"
            pseudo[name] = value
            continue
        regular = True
        if name in _CONNECTION_HEADERS or (name == b"te" and value.lower() != b"trailers"):
            return f"connection-specific header field {name!r}"
        if name == b"host":
            if host is not None:
                return "more than one Host header field"
            host = value
    method = pseudo.get(b":method")
    if method is None:
        return "no :method"
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        return "no :scheme or :path"
    if b":protocol" in pseudo and method != b"CONNECT":
        return ":protocol outside CONNECT"
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        return "neither :authority nor Host"
    if authority is not None and host is not None and authority != host:
        return ":authority and Host differ"
    if b":path" in pseudo and not pseudo[b":path"]:
        return "empty :path"
    return None


class Negotiate(asyncio.Protocol):
    """Hands each TLS connection to the protocol its ALPN names: ``h2`` here, else HTTP/1.1."""

    def __init__(self, http1: Callable[[], Any], http2: Callable[[], asyncio.Protocol]) -> None:
        self.http1, self.http2 = http1, http2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol = self.http2() if chosen == "h2" else self.http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def trailer_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What makes a trailer block malformed (no pseudo-header fields, RFC 9113 §8.1), or None."""
    for name, value in headers:
        if name[:1] == b":" or not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return f"malformed trailer field {name!r}"
        if name in _CONNECTION_HEADERS or name == b"te":
            return f"connection-specific trailer field {name!r}"
    return None


class ConnectionFailure(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with ``code``, then the connection's end."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = ("body", "ended", "expected", "path", "refusal", "send_window", "window")

    def __init__(self, path: str, window: int, send_window: int, expected: int | None) -> None:
        self.path = path
        self.body = bytearray()
        self.window = window  # what the client may still send on it
        self.send_window = send_window  # what we may still send on it
        self.expected = expected  # its content-length
        self.ended = False  # the request is complete (half-closed remote): being answered
        self.refusal: tuple[int, bytes] | None = None  # answered with this, not by ``answer``


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection: POSTs of AdmissionReviews answered by ``answer``, concurrently."""

    def __init__(self, answer: Answer, *, idle_seconds: float = IDLE_SECONDS, max_body: int = MAX_BODY,
                 connections: set[H2Protocol] | None = None) -> None:
        self.answer = answer
        self.max_body = max_body
        self.connections = connections if connections is not None else set()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}  # open and half-closed (remote) streams
        self.closed: OrderedDict[int, bool] = OrderedDict()  # recently closed: reset by us?
        self.last_stream = 0  # the highest stream the client has opened
        self.tasks: set[asyncio.Task[None]] = set()
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._in = bytearray()
        self._out = bytearray()
        self._preface = False  # the client's preface and first SETTINGS have arrived
        self._settings = False
        self._block: tuple[int, int, bytearray, bool] | None = None  # a header block in CONTINUATIONs
        self._recv_window = CONNECTION_WINDOW  # what the client may still send on the connection
        self._send_window = 65535  # what we may still send on the connection
        self._peer_window = 65535  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_frame = 16384  # the client's SETTINGS_MAX_FRAME_SIZE
        self._table_update = True  # our next header block first says our table's size: 0
        self._window: list[asyncio.Future[None]] = []  # sends waiting for flow-control credit
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self.idle = IdleTimer(idle_seconds, lambda: bool(self.streams or self.tasks), self._expire)
        self._unsent = 0  # answers queued since the last write to the socket
        self._flush_soon: asyncio.Handle | None = None
        self.draining = False  # shutting down: new requests are refused (the client retries them)
        self.gone = False  # our GOAWAY is sent: nothing more goes out but it

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connections.add(self)
        settings = ((MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                    (INITIAL_WINDOW_SIZE, self.max_body + 1),  # a whole body without waiting
                    (MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST))
        self._frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings))
        self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - 65535))
        self._flush()
        self.idle.touch()

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        buf = self._in
        buf += data
        try:
            used = self._receive(buf)
        except ConnectionFailure as exc:
            log.debug("HTTP/2 connection error from a webhook client: %s", exc)
            self._goaway(exc.code)
            self._close()
            return
        del buf[:used]
        self._flush()
        if self.transport is not None and self.transport.get_write_buffer_size() > MAX_UNREAD:
            # What we owe a client that does not read (PING or SETTINGS acknowledgements, stream
            # resets: the flood attacks of CVE-2019-9512, -9514, -9515) is not kept without bound.
            log.debug("HTTP/2 webhook client does not read its answers: connection closed")
            self.gone = True
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        self.streams.clear()
        self.idle.cancel()
        self._wake_window()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- frames in ---------------------------------------------------------------------------
    def _receive(self, buf: bytearray) -> int:
        """Handles the whole frames in ``buf``; returns how many bytes they took."""
        pos, end = 0, len(buf)
        if not self._preface:
            if buf[:len(PREFACE)] != PREFACE[:end]:
                raise ConnectionFailure(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            if end < len(PREFACE):
                return 0
            self._preface, pos = True, len(PREFACE)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(buf, pos)
            length: int = high << 8 | low
            if length > FRAME_SIZE:
                raise ConnectionFailure(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            stream_id &= 0x7FFFFFFF
            if not self._settings:
                if kind != SETTINGS or flags & ACK:
                    raise ConnectionFailure(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
                self._settings = True
            if self._block is not None and kind != CONTINUATION:
                raise ConnectionFailure(PROTOCOL_ERROR, "a header block interrupted")
            if kind == DATA:
                self._data(stream_id, flags, payload)
            elif kind == HEADERS:
                self._headers(stream_id, flags, payload)
            elif kind == CONTINUATION:
                self._continuation(stream_id, flags, payload)
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id, payload)
            elif kind == SETTINGS:
                self._settings_frame(stream_id, flags, payload)
            elif kind == PING:
                if stream_id:
                    raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, "PING of other than 8 bytes")
                if not flags & ACK:
                    self._frame(PING, ACK, 0, payload)
            elif kind == RST_STREAM:
                self._rst_stream(stream_id, payload)
            elif kind == PRIORITY:
                if not stream_id:
                    raise ConnectionFailure(PROTOCOL_ERROR, "PRIORITY on the connection")
                if length != 5:
                    self._reset(stream_id, FRAME_SIZE_ERROR)
                elif _U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
                    self._reset(stream_id, PROTOCOL_ERROR)  # depends on itself
            elif kind == GOAWAY:
                if stream_id:
                    raise ConnectionFailure(PROTOCOL_ERROR, "GOAWAY on a stream")
                self._goaway(NO_ERROR)  # the client is leaving: so are we
                self._close()
                return pos
            elif kind == PUSH_PROMISE:
                raise ConnectionFailure(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # other types: extensions we do not know, ignored (RFC 9113 §5.5)
        return pos

    def _unpad(self, flags: int, payload: bytes, extra: int = 0) -> tuple[bytes, bytes]:
        """(the fields before the content, the content) of a frame that may be padded."""
        pad = 0
        if flags & PADDED:
            if not payload:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "a padded frame without its pad length")
            pad, payload = payload[0], payload[1:]
        if pad + extra > len(payload):
            raise ConnectionFailure(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[:extra], payload[extra:len(payload) - pad]

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA on the connection")
        size = len(payload)  # padding included: all of it counts against the windows
        self._recv_window -= size
        if self._recv_window < 0:
            raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        if self._recv_window <= CONNECTION_WINDOW // 2:  # credit back, a batch at a time
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - self._recv_window))
            self._recv_window = CONNECTION_WINDOW
        _, data = self._unpad(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            self._late(stream_id, "DATA")
            return
        stream.window -= size
        if stream.window < 0:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            return
        stream.body += data
        if stream.expected is not None and len(stream.body) > stream.expected:
            self._reset(stream_id, PROTOCOL_ERROR)  # more than its content-length (§8.1.1)
            return
        if flags & END_STREAM:
            self._end(stream_id, stream)
        elif len(stream.body) > self.max_body or stream.window <= 0:
            self._too_large(stream_id)

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "HEADERS on the connection")
        priority, fragment = self._unpad(flags, payload, 5 if flags & PRIORITY_FLAG else 0)
        self_dependent = bool(priority) and _U32.unpack_from(priority)[0] & 0x7FFFFFFF == stream_id
        self._block = (stream_id, flags, bytearray(fragment), self_dependent)
        if flags & END_HEADERS:
            self._block_done()
        elif len(fragment) > MAX_HEADER_LIST:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "a header block over the limit")

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._block is None or self._block[0] != stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._block[2]
        block += payload
        if len(block) > MAX_HEADER_LIST:  # however many frames: the CONTINUATION flood
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "a header block over the limit")
        if flags & END_HEADERS:
            self._block_done()

    def _block_done(self) -> None:
        assert self._block is not None
        stream_id, flags, block, self_dependent = self._block
        self._block = None
        try:  # decoded whatever becomes of the stream: the decoder's table is the connection's
            headers = self.decoder.decode(bytes(block))
        except HeaderListTooLarge:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "a header list over the limit") from None
        except HeaderBlockError as exc:
            raise ConnectionFailure(COMPRESSION_ERROR, f"a header block that cannot be decoded: {exc}") \
                from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers
            if stream.ended:
                self._reset(stream_id, STREAM_CLOSED)
            elif not flags & END_STREAM or trailer_problem(headers) is not None or self_dependent:
                self._reset(stream_id, PROTOCOL_ERROR)
            else:
                self._end(stream_id, stream)
            return
        if stream_id <= self.last_stream:
            self._late(stream_id, "HEADERS")
            return
        if not stream_id % 2:
            raise ConnectionFailure(PROTOCOL_ERROR, "a client stream with an even number")
        self.last_stream = stream_id
        if self_dependent:
            self._reset(stream_id, PROTOCOL_ERROR)
            return
        if self.draining or len(self.streams) >= MAX_STREAMS or len(self.tasks) >= MAX_STREAMS:
            # Answers still running count too: a client that resets its streams at once and opens
            # new ones (the "rapid reset" attack) gets no more of them running than the limit.
            self._reset(stream_id, REFUSED_STREAM)  # safe to retry (§8.7)
            return
        problem = request_header_problem(headers)
        lengths = {value for name, value in headers if name == b"content-length"}
        if problem is None and (len(lengths) > 1 or not all(v.isdigit() for v in lengths)):
            problem = "a malformed or repeated content-length"
        if problem is not None:  # a malformed request: a stream error (§8.1.1)
            log.debug("malformed HTTP/2 request from a webhook client: %s", problem)
            self._reset(stream_id, PROTOCOL_ERROR)
            return
        fields = dict(headers)
        length = fields.get(b"content-length")
        expected = (int(length) if len(length) <= 12 else self.max_body + 1) if length is not None else None
        path = fields.get(b":path", b"")  # none in a CONNECT (answered 405)
        stream = _Stream(path.decode("latin-1"), self.max_body + 1, self._peer_window, expected)
        self.streams[stream_id] = stream
        if fields[b":method"] != b"POST":
            stream.refusal = (405, b"only POST is served here\n")
        elif expected is not None and expected > self.max_body:
            if not flags & END_STREAM:
                self._too_large(stream_id)
                return
            stream.refusal = (413, b"request body too large\n")
        if flags & END_STREAM:
            self._end(stream_id, stream)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ConnectionFailure(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionFailure(FLOW_CONTROL_ERROR, "the connection's window over 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                if stream_id > self.last_stream:
                    raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return  # a closed stream's: may arrive a while after (§5.1)
            if not increment:
                self._reset(stream_id, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(stream_id, FLOW_CONTROL_ERROR)
                return
        self._wake_window()

    def _settings_frame(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with settings")
            return
        if len(payload) % 6:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS not in 6-byte settings")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == HEADER_TABLE_SIZE:
                self._table_update = True
            elif key == ENABLE_PUSH and value > 1:
                raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH other than 0 or 1")
            elif key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta, self._peer_window = value - self._peer_window, value
                for stream in self.streams.values():  # may go negative (§6.9.2)
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionFailure(FLOW_CONTROL_ERROR, "a stream's window over 2^31-1")
            elif key == MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self._peer_frame = value
            # the others (and unknown ones) change nothing we send (§6.5.2)
        self._frame(SETTINGS, ACK, 0, b"")
        self._wake_window()

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "RST_STREAM of other than 4 bytes")
        if not stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on the connection")
        if stream_id > self.last_stream:
            raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if self.streams.pop(stream_id, None) is not None:  # a running answer finds it closed
            self._forget(stream_id, False)
            self._wake_window()

    def _late(self, stream_id: int, kind: str) -> None:
        """DATA or HEADERS on a stream that is not open."""
        if stream_id > self.last_stream:
            raise ConnectionFailure(PROTOCOL_ERROR, f"{kind} on an idle stream")
        if self.closed.get(stream_id):
            return  # we reset it: frames already in flight are ignored (§5.1)
        if stream_id in self.streams:  # half-closed (remote): the request had ended
            self._reset(stream_id, STREAM_CLOSED)
            return
        if stream_id not in self.closed and kind == "HEADERS":  # a stream never opened, or long ago
            raise ConnectionFailure(PROTOCOL_ERROR, "a new stream's number below the last one's")
        raise ConnectionFailure(STREAM_CLOSED, f"{kind} on a closed stream")

    def _end(self, stream_id: int, stream: _Stream) -> None:
        if stream.expected is not None and len(stream.body) != stream.expected:
            self._reset(stream_id, PROTOCOL_ERROR)  # shorter than its content-length (§8.1.1)
            return
        stream.ended = True
        self.idle.touch()
        task = asyncio.get_running_loop().create_task(self._serve(stream_id, stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- answers -----------------------------------------------------------------------------
    async def _serve(self, stream_id: int, stream: _Stream) -> None:
        if stream.refusal is not None:
            (status, body), content_type = stream.refusal, TEXT
        else:
            status, body, content_type = await answered(self.answer, stream.path, stream.body, "HTTP/2")
        await self._respond(stream_id, stream, status, body, content_type)
        self.idle.touch()

    def _header_block(self, status: int, content_type: bytes) -> bytes:
        block = response_headers(status, content_type)
        if self._table_update:  # our table is empty and stays so: its size is 0 (RFC 7541 §4.2)
            self._table_update = False
            block = b"\x20" + block
        return block

    def _too_large(self, stream_id: int) -> None:
        """413 before the client has sent the whole body: the rest is not wanted (RFC 9113 §8.1)."""
        if self._send_now(stream_id, 413, b"request body too large\n"):
            self._reset(stream_id, NO_ERROR)

    def _send_now(self, stream_id: int, status: int, body: bytes) -> bool:
        """A short error answer from within a frame; the stream is reset (REFUSED_STREAM) if it
        cannot go out now. Whether it went out."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        if min(stream.send_window, self._send_window) < len(body) or len(body) > self._peer_frame:
            self._reset(stream_id, REFUSED_STREAM)
            return False
        self._frame(HEADERS, END_HEADERS, stream_id, self._header_block(status, TEXT))
        self._frame(DATA, END_STREAM, stream_id, body)
        self._send_window -= len(body)
        stream.send_window -= len(body)
        return True

    async def _respond(self, stream_id: int, stream: _Stream, status: int, body: bytes,
                       content_type: bytes) -> None:
        if self._writable is not None:
            await self._writable  # the client is not reading: do not pile up answers
        if self.transport is None or self.gone or self.streams.get(stream_id) is not stream:
            return
        self._frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), stream_id,
                    self._header_block(status, content_type))
        view, sent = memoryview(body), 0
        while sent < len(body):
            size = min(self._send_window, stream.send_window, self._peer_frame, len(body) - sent)
            if size <= 0:
                self._flush()
                await self._window_credit()
                if self.transport is None or self.gone or self.streams.get(stream_id) is not stream:
                    return
                continue
            last = sent + size == len(body)
            self._frame(DATA, END_STREAM if last else 0, stream_id, view[sent:sent + size])
            sent += size
            self._send_window -= size
            stream.send_window -= size
        del self.streams[stream_id]
        self._forget(stream_id, False)
        self._unsent += 1
        if self._unsent >= FLUSH_EVERY:
            self._flush()
        elif self._flush_soon is None:
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)

    async def _window_credit(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._window.append(waiter)
        await waiter

    def _wake_window(self) -> None:
        waiters, self._window = self._window, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- frames out --------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes | memoryview) -> None:
        length = len(payload)
        self._out += _HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id)
        self._out += payload

    def _reset(self, stream_id: int, code: int) -> None:
        """A stream error (RFC 9113 §5.4.2): RST_STREAM; frames in flight on it are then ignored."""
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        if self.streams.pop(stream_id, None) is not None:
            self._wake_window()
        self._forget(stream_id, True)

    def _forget(self, stream_id: int, reset_by_us: bool) -> None:
        self.closed[stream_id] = reset_by_us
        if len(self.closed) > CLOSED_KEPT:
            self.closed.popitem(last=False)

    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        self._unsent = 0
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self._out))
        self._out.clear()

    # --- idle and shutdown -------------------------------------------------------------------
    def _goaway(self, code: int) -> None:
        if not self.gone:
            self._frame(GOAWAY, 0, 0, _U32.pack(self.last_stream) + _U32.pack(code))
            self._flush()
            self.gone = True

    def _expire(self) -> None:
        if self.transport is not None:
            self.goaway()
            self._close()

    def goaway(self) -> None:
        """The connection's end, NO_ERROR: only once nothing is left to answer (see :meth:`shutdown`)."""
        self._goaway(NO_ERROR)

    async def shutdown(self, timeout: float) -> None:
        """Refuse new requests (REFUSED_STREAM: the client retries them on another connection),
        let those in progress answer (at most ``timeout`` s), then GOAWAY and close."""
        self.draining = True
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)
        self.goaway()
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
