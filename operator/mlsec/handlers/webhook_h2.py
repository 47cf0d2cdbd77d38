"""HTTP/2 for the admission webhooks: the API server's calls share one connection.

kube-apiserver calls a webhook with client-go's transport: HTTP/2 when the server offers it (ALPN),
else HTTP/1.1 with at most 25 idle connections kept per host. Over HTTP/1.1 a burst of 100
concurrent writes therefore opened ~75 new TLS connections every time, and each handshake cost
the operator's event loop ~0.8 ms of CPU, three to five times the review itself
(``bench/webhook_latency.py``). So the webhook port negotiates: ``h2`` connections are served
here (the ``h2`` library's state machine, our routes only), every other connection by
:mod:`mlsec.handlers.webhook_http1` (:class:`mlsec.handlers.webhook.Server`).

Limits: ``MAX_STREAMS`` concurrent requests a connection (the client opens another connection
beyond them), ``CONNECTION_WINDOW`` bytes in flight, a body of at most ``MAX_BODY`` bytes
(as over HTTP/1.1); a connection without a request for ``IDLE_SECONDS`` is closed (GOAWAY
first), as an idle HTTP/1.1 keep-alive connection is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from mlsec.handlers.admission_dispatch import BadRequest, NotFound
from mlsec.handlers.webhook_http1 import IDLE_SECONDS, MAX_BODY, Answer, IdleTimer

log = logging.getLogger(__name__)

MAX_STREAMS = 128
CONNECTION_WINDOW = 8 * 1024**2
"""What a client may send on a connection ahead of our reading it. HTTP/2's default, 64 KiB, is
~20 AdmissionReviews: a burst would wait for our WINDOW_UPDATEs round trip by round trip."""
MAX_HEADER_LIST = 64 * 1024
FLUSH_EVERY = 16
"""Answers written to the socket together: the ones ready in one turn of the event loop, at most
this many. Each written alone (a TLS record and a send each) cost ~50 µs of CPU more: 0.31 ms a
promotion-gate request over HTTP/2 against 0.25 (``bench/webhook_latency.py``). Bounded so the
first answers of a burst do not wait for the last."""
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+")  # no uppercase, space, control or inner colon
_VALUE = re.compile(rb"(?:[^\x00\r\n \t](?:[^\x00\r\n]*[^\x00\r\n \t])?)?")  # trimmed, no NUL/CR/LF
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                 b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})  # a request's


def request_header_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What makes a request's header block malformed (RFC 9113 §8.2 to 8.3), or None (pure).

    The h2 library's own check, done in one pass: h2 validates with a chain of eight generators,
    18 of its ~95 µs a request (``bench/webhook_latency.py``). ``test_fuzz_h2_headers`` holds the
    two to the same answer on generated header blocks."""
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


class _Stream:
    __slots__ = ("body", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.body = bytearray()


class _Connection(h2.connection.H2Connection):
    """h2's connection, counting open streams only near the limit.

    h2 counts the open inbound streams on every new stream to enforce MAX_CONCURRENT_STREAMS,
    walking all of them (O(n) a request: 5 to 10 µs at 100 in flight). The streams it keeps are
    never fewer than the open ones, so under the limit their number settles the check."""

    @property
    def open_inbound_streams(self) -> int:
        kept = len(self.streams)  # open ones, and closed ones the next exact count prunes
        if kept < self.local_settings.max_concurrent_streams:
            return kept
        return super().open_inbound_streams


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection: POSTs of AdmissionReviews answered by ``answer``, concurrently."""

    def __init__(self, answer: Answer, *, idle_seconds: float = IDLE_SECONDS, max_body: int = MAX_BODY,
                 connections: set[H2Protocol] | None = None) -> None:
        self.answer = answer
        self.max_body = max_body
        self.connections = connections if connections is not None else set()
        # Our response headers are three constants: not validated nor normalized again each time
        # (~10 % of the protocol's CPU per request). Request headers are validated by
        # request_header_problem (h2's own validation, in one pass).
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False,
                                           validate_inbound_headers=False)
        self.conn = _Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: max_body,  # a whole body without waiting
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._window: list[asyncio.Future[None]] = []  # sends waiting for flow-control credit
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self.idle = IdleTimer(idle_seconds, lambda: bool(self.streams or self.tasks), self._expire)
        self._unsent = 0  # answers queued in h2 since the last write to the socket
        self._flush_soon: asyncio.Handle | None = None
        self.draining = False  # shutting down: new requests are refused (the client retries them)

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connections.add(self)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - self.conn.inbound_flow_control_window)
        self._flush()
        self.idle.touch()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # the library has queued the GOAWAY
            log.debug("HTTP/2 protocol error from a webhook client: %s", exc)
            self._flush()
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._ended(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)  # a running answer finds it closed
                self._wake_window()
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._wake_window()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                self._close()
                return
        self._flush()

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

    # --- requests ----------------------------------------------------------------------------
    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        problem = request_header_problem(event.headers or [])
        if problem is not None:  # a malformed request: a stream error (RFC 9113 §8.1.1)
            log.debug("malformed HTTP/2 request from a webhook client: %s", problem)
            self.conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        headers = dict(event.headers or ())
        if self.draining:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        method, path = headers.get(b":method"), headers.get(b":path", b"")
        if method != b"POST":
            self._send_now(stream_id, 405, b"only POST is served here\n")
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._send_now(stream_id, 413, b"request body too large\n")
            return
        self.streams[stream_id] = _Stream(path.decode("latin-1"))
        if event.stream_ended is not None:  # no body at all
            self._ended(stream_id)

    def _data(self, event: h2.events.DataReceived) -> None:
        # Credit is given back at once: a body is bounded by max_body, not by the window.
        if event.flow_controlled_length:
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.body += event.data or b""
        if len(stream.body) > self.max_body:
            del self.streams[event.stream_id]
            self._send_now(event.stream_id, 413, b"request body too large\n")

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.idle.touch()
        task = asyncio.get_running_loop().create_task(self._serve(stream_id, stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, stream_id: int, stream: _Stream) -> None:
        try:
            status, body, content_type = 200, await self.answer(stream.path, stream.body), JSON
        except BadRequest as exc:
            status, body, content_type = 400, f"{exc}\n".encode(), TEXT
        except NotFound:
            status, body, content_type = 404, b"no such webhook\n", TEXT
        except Exception:
            log.exception("admission webhook %s failed (HTTP/2)", stream.path)
            status, body, content_type = 500, b"internal error\n", TEXT
        await self._respond(stream_id, status, body, content_type)
        self.idle.touch()

    # --- responses ---------------------------------------------------------------------------
    @staticmethod
    def _headers(status: int, content_type: bytes) -> list[tuple[bytes, bytes]]:
        # No content-length: optional in HTTP/2 (the body ends with the stream), and its value,
        # new with every answer, was a third of the cost of encoding the headers.
        return [(b":status", str(status).encode()), (b"content-type", content_type)]

    def _send_now(self, stream_id: int, status: int, body: bytes) -> None:
        """A short error answer from a protocol callback; reset if it cannot go out at once."""
        try:
            if self.conn.local_flow_control_window(stream_id) >= len(body):
                self.conn.send_headers(stream_id, self._headers(status, TEXT))
                self.conn.send_data(stream_id, body, end_stream=True)
            else:
                self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        except h2.exceptions.ProtocolError:
            return

    async def _respond(self, stream_id: int, status: int, body: bytes, content_type: bytes) -> None:
        try:
            if self._writable is not None:
                await self._writable  # the client is not reading: do not pile up answers
            if self.transport is None:
                return
            self.conn.send_headers(stream_id, self._headers(status, content_type))
            view = memoryview(body)
            while True:
                window = min(self.conn.local_flow_control_window(stream_id),
                             self.conn.max_outbound_frame_size)
                if window <= 0 and view:
                    self._flush()
                    await self._window_credit()
                    if self.transport is None:
                        return
                    continue
                chunk = view[:window]
                view = view[len(chunk):]
                self.conn.send_data(stream_id, chunk.tobytes(), end_stream=not view)
                if not view:
                    break
        except h2.exceptions.ProtocolError:  # the client reset the stream or left meanwhile
            return
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

    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        self._unsent = 0
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # --- idle and shutdown -------------------------------------------------------------------
    def _expire(self) -> None:
        if self.transport is not None:
            self.goaway()
            self._close()

    def goaway(self) -> None:
        """The connection's end: h2 sends nothing after its GOAWAY, so only once nothing is left
        to answer (see :meth:`shutdown`)."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()
        self._flush()

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
