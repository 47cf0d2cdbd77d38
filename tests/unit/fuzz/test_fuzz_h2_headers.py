"""Our one-pass check of an HTTP/2 request's header block against the h2 library's own
(``webhook_h2.request_header_problem`` replaces h2's inbound validation): hypothesis builds
header blocks near the rules' edges and the two must agree on every one.

≈200 examples in ``make test``; ``MLSEC_FUZZ_EXAMPLES=10000`` for the long run.
"""

from __future__ import annotations

import asyncio
import os

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.unit.admission import h2wire

from mlsec.handlers import webhook_h2
from mlsec.handlers.webhook_h2 import request_header_problem

EXAMPLES = int(os.environ.get("MLSEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES * 5, deadline=None, derandomize="MLSEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow])
REQUEST = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                is_push_promise=False)

NAMES = st.one_of(
    st.sampled_from([b":method", b":scheme", b":path", b":authority", b":protocol", b":status", b":x", b":",
                     b"host", b"Host", b"content-type", b"te", b"connection", b"keep-alive",
                     b"transfer-encoding", b"upgrade", b"proxy-connection", b"x-a", b"x:a", b"x a", b""]),
    st.binary(min_size=0, max_size=4))
VALUES = st.one_of(
    st.sampled_from([b"POST", b"GET", b"CONNECT", b"https", b"/deployment-gate", b"", b"trailers",
                     b"Trailers", b"gzip", b"example:443", b" x", b"x ", b"\tx", b"a\rb", b"a\nb",
                     b"a\x00b"]),
    st.binary(max_size=4))
BASE = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/deployment-gate"),
        (b":authority", b"example:443"), (b"content-type", b"application/json")]


def h2_accepts(headers: list[tuple[bytes, bytes]]) -> bool:
    try:
        list(validate_headers(headers, REQUEST))
    except ProtocolError:
        return False
    return True


@FUZZ
@given(st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_random_header_blocks_get_the_same_verdict(headers: list[tuple[bytes, bytes]]) -> None:
    assert (request_header_problem(headers) is None) == h2_accepts(headers), headers


EDGES = [  # each rule's edge, inserted into a valid request (the generated ones add the rest)
    [(5, (b"te", b"gzip"))], [(5, (b"te", b"Trailers"))], [(5, (b"connection", b"close"))],
    [(5, (b"Content-Length", b"2"))], [(5, (b"host", b"other"))], [(5, (b"host", b"example:443"))],
    [(5, (b"host", b"example:443")), (6, (b"host", b"example:443"))], [(5, (b":path", b"/again"))],
    [(1, (b":protocol", b"websocket"))], [(5, (b"x-a", b" padded"))], [(5, (b"x-a", b""))],
]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 6), st.tuples(NAMES, VALUES)), max_size=3),
       st.lists(st.integers(0, 6), max_size=2))
@example([(0, (b":method", b"CONNECT"))], [0])
@example([(0, (b":method", b"CONNECT")), (0, (b":protocol", b"websocket"))], [0])
@example([(0, (b":method", b"CONNECT"))], [0, 0, 0])
@example([(2, (b":path", b""))], [2])
@example([], [3])
def test_a_valid_request_mutated_gets_the_same_verdict(inserts: list[tuple[int, tuple[bytes, bytes]]],
                                                      removals: list[int]) -> None:
    headers = list(BASE)
    for at in removals:
        if headers:
            del headers[at % len(headers)]
    for at, header in inserts:
        headers.insert(at % (len(headers) + 1), header)
    assert (request_header_problem(headers) is None) == h2_accepts(headers), headers


def test_each_rules_edge_gets_the_same_verdict() -> None:
    for inserts in EDGES:
        headers = list(BASE)
        for at, header in inserts:
            headers.insert(at, header)
        assert (request_header_problem(headers) is None) == h2_accepts(headers), headers


def test_the_server_resets_a_malformed_request_and_serves_the_next() -> None:
    """Over a connection: a request with an uppercase header name is a stream error (reset with
    PROTOCOL_ERROR), the connection stays, and the next request is answered."""
    async def answer(path: str, raw: bytes | bytearray) -> bytes:
        return b"{}"

    async def main() -> tuple[int | None, int]:
        protocol = webhook_h2.H2Protocol(answer)
        client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))  # sends the uppercase name as it is
        client.initiate_connection()

        class Transport(h2wire.Transport):
            def write(self, data: bytes | bytearray | memoryview) -> None:
                events.extend(client.receive_data(bytes(data)))

        events: list[h2.events.Event] = []
        protocol.connection_made(Transport())
        protocol.data_received(client.data_to_send())
        bad = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/x"), (b":authority", b"a"),
               (b"Content-Type", b"application/json")]
        client.send_headers(1, bad, end_stream=True)
        client.send_headers(3, BASE, end_stream=True)
        protocol.data_received(client.data_to_send())
        await asyncio.sleep(0.05)
        reset = next((e.error_code for e in events if isinstance(e, h2.events.StreamReset)), None)
        answered = next((e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)), 0)
        return reset, answered

    assert asyncio.run(main()) == (ErrorCodes.PROTOCOL_ERROR, 3)
