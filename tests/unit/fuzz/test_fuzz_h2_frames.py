"""Fuzzing the webhook port's HTTP/2 (``handlers/webhook_h2.py``, ours) with hypothesis, on the
protocol object itself (its bytes in, its frames out):

- Requests from the ``h2`` library's client (bodies in several DATA frames, padded or not, with
  or without trailers), their bytes cut at random points: every one is answered with its own body.
- Those requests with random frames among them (any type, flags, stream and payload) or random
  bytes: no callback raises; what the server writes is a sequence of whole frames, and if it
  ends the connection, its last frame is a GOAWAY.

h2spec's conformance suite runs against the real server in ``tests/integration/test_h2spec.py``.
≈200 examples per test in ``make test``; ``MLSEC_FUZZ_EXAMPLES=10000`` for the long run.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.admission.h2wire import drive, frames, raw, server_preface

from mlsec.handlers import webhook_h2

EXAMPLES = int(os.environ.get("MLSEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MLSEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SERVER_PREFACE = server_preface()


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.receive_data(SERVER_PREFACE)  # so the client may send whole bodies at once
    return conn


REQUEST = st.tuples(st.binary(max_size=3000),  # the body
                    st.integers(1, 4),  # DATA frames it is sent in
                    st.integers(0, 20),  # padding of each
                    st.booleans(),  # a content-length header
                    st.booleans())  # trailers


Spec = tuple[bytes, int, int, bool, bool]


def requests(conn: h2.connection.H2Connection, specs: list[Spec]) -> dict[int, bytes]:
    sent = {}
    for body, parts, pad, length, trailers in specs:
        sid = conn.get_next_available_stream_id()
        headers = [(b":method", b"POST"), (b":path", f"/r{sid}".encode()), (b":scheme", b"https"),
                   (b":authority", b"127.0.0.1"), (b"content-type", b"application/json")]
        if length:
            headers.append((b"content-length", str(len(body)).encode()))
        conn.send_headers(sid, headers, end_stream=not body and not trailers)
        step = -(-len(body) // parts) if body else 0
        pieces = [body[i:i + step] for i in range(0, len(body), step)] if body else []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1 and not trailers
            conn.send_data(sid, piece, end_stream=last, pad_length=pad or None)
        if trailers:
            conn.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
        sent[sid] = body
    return sent


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


@FUZZ
@given(st.lists(REQUEST, min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=12))
def test_requests_cut_anywhere_are_each_answered_with_their_own_body(
        specs: list[Spec], points: list[int]) -> None:
    conn = client()
    sent = requests(conn, specs)
    transport = drive(cut(conn.data_to_send(), points))
    assert not transport.closed
    answers: dict[int, dict[str, Any]] = {sid: {"body": b""} for sid in sent}
    for event in conn.receive_data(bytes(transport.out)):
        if isinstance(event, h2.events.ResponseReceived):
            answers[event.stream_id]["status"] = dict(event.headers)[b":status"]
        elif isinstance(event, h2.events.DataReceived):
            answers[event.stream_id]["body"] += event.data
        elif isinstance(event, h2.events.StreamEnded):
            answers[event.stream_id]["ended"] = True
        elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
            raise AssertionError(f"{event}")
    for sid, body in sent.items():
        assert answers[sid].get("status") == b"200" and answers[sid].get("ended"), answers[sid]
        assert json.loads(answers[sid]["body"]) == {"path": f"/r{sid}", "body": body.decode("latin-1")}


FRAME = st.tuples(st.integers(0, 12), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5, 7, 99, 2**31 - 1]),
                  st.binary(max_size=40))


@FUZZ
@given(st.lists(REQUEST, max_size=3),
       st.lists(st.one_of(FRAME, st.binary(min_size=1, max_size=30)), max_size=8),
       st.lists(st.integers(0, 10**6), max_size=6), st.randoms(use_true_random=False))
def test_random_frames_among_requests_never_break_the_server(
        specs: list[Spec], noise: list[Any], points: list[int],
        rnd: Any) -> None:
    conn = client()
    requests(conn, specs)
    data = bytearray(conn.data_to_send())
    for item in noise:  # each at a random place between whole frames of the requests' or at the end
        piece = raw(*item) if isinstance(item, tuple) else item
        at = rnd.choice(frame_bounds(bytes(data)))
        data[at:at] = piece
    transport = drive(cut(bytes(data), points))
    out = frames(bytes(transport.out))
    assert out and out[0][0] == webhook_h2.SETTINGS
    goaways = [i for i, frame in enumerate(out) if frame[0] == webhook_h2.GOAWAY]
    if transport.closed:
        assert goaways == [len(out) - 1]
    else:
        assert not goaways


def frame_bounds(data: bytes) -> list[int]:
    """Offsets in ``data`` (the preface, then frames) where a frame starts, and its end."""
    pos, out = len(webhook_h2.PREFACE), [len(webhook_h2.PREFACE)]
    while pos + 9 <= len(data):
        high, low = struct.unpack_from(">HB", data, pos)
        pos += 9 + (high << 8 | low)
        out.append(min(pos, len(data)))
    return out
