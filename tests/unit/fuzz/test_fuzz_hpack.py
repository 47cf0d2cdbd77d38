"""Differential fuzzing of our HPACK decoder (``handlers/webhook_hpack.py``) against the ``hpack``
library's, which it replaced on the webhook port: hypothesis builds sequences of header lists
(any names and values, Huffman or not, never-indexed fields, table size changes) encoded by the
library's encoder, and random or mutated blocks; both decoders must give the same fields and
the same dynamic table, or both refuse the block.

≈200 examples per test in ``make test``; ``MLSEC_FUZZ_EXAMPLES=10000`` for the long run.
"""

from __future__ import annotations

import os

import hpack
from hpack.exceptions import HPACKError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsec.handlers.webhook_hpack import Decoder, HeaderBlockError, integer

EXAMPLES = int(os.environ.get("MLSEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MLSEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COMMON = [b":method", b":path", b"content-type", b"content-length", b"accept", b"user-agent", b"x-a"]
NAME = st.one_of(st.sampled_from(COMMON), st.binary(max_size=40))
VALUE = st.one_of(st.sampled_from([b"POST", b"/deployment-gate", b"application/json", b"1400", b""]),
                  st.binary(max_size=300))
FIELD = st.tuples(NAME, VALUE, st.booleans())  # the last: never indexed (sensitive)
BLOCK = st.tuples(st.lists(FIELD, max_size=12), st.booleans(),  # Huffman
                  st.one_of(st.none(), st.integers(0, 4096)))  # a table size change before it


def same(ours: Decoder, theirs: hpack.Decoder, block: bytes) -> bool:
    """Decodes ``block`` with both; fails unless they agree. False once they both refused it."""
    try:
        expected = [tuple(f) for f in theirs.decode(block, raw=True)]
    except HPACKError:
        expected = None
    try:
        got = ours.decode(block)
    except HeaderBlockError as exc:
        # RFC 7541 §5.1 lets a decoder refuse integers longer than its limit; hpack has none.
        assert expected is None or "too long" in str(exc), (block, expected, exc)
        return False
    assert got == expected, block
    assert list(ours.table) == [tuple(f) for f in theirs.header_table.dynamic_entries]
    assert ours.size == theirs.header_table._current_size
    return True


@FUZZ
@given(st.lists(BLOCK, min_size=1, max_size=6))
def test_encoded_header_lists_decode_as_the_library_decodes_them(
        blocks: list[tuple[list[tuple[bytes, bytes, bool]], bool, int | None]]) -> None:
    encoder, ours, theirs = hpack.Encoder(), Decoder(), hpack.Decoder()
    for fields, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if secret else (n, v) for n, v, secret in fields]
        block = encoder.encode(headers, huffman=huffman)
        assert same(ours, theirs, block)


@FUZZ
@given(st.lists(BLOCK, max_size=3), st.lists(st.one_of(st.binary(min_size=1, max_size=60),
                                                     st.tuples(st.integers(0, 10**4), st.integers(0, 255))),
                                           min_size=1, max_size=4))
def test_random_and_mutated_blocks_are_refused_or_decoded_alike(
        blocks: list[tuple[list[tuple[bytes, bytes, bool]], bool, int | None]],
        noise: list[bytes | tuple[int, int]]) -> None:
    encoder, ours, theirs = hpack.Encoder(), Decoder(), hpack.Decoder()
    for fields, huffman, _ in blocks:  # a table built first
        assert same(ours, theirs, encoder.encode([(n, v) for n, v, _ in fields], huffman=huffman))
    for item in noise:
        if isinstance(item, bytes):
            block = item
        else:  # one byte of an encoded block changed
            at, byte = item
            good = bytearray(encoder.encode([(b"x-a", b"%d" % at), (b"content-length", b"1400")]))
            good[at % len(good)] = byte
            block = bytes(good)
        if not same(ours, theirs, block):
            return  # a refused block ends the connection: nothing more is decoded


def test_integers_at_their_limits() -> None:
    assert integer(b"\x1e", 0, 5) == (30, 1)
    assert integer(b"\x1f\x00", 0, 5) == (31, 2)
    assert integer(b"\x1f\x9a\x0a", 0, 5) == (1337, 3)  # RFC 7541 C.1.2
    assert integer(b"\xff\xff\xff\xff\xff\x07", 0, 7) == (127 + 0x7F + (0x7F << 7) + (0x7F << 14)
                                                         + (0x7F << 21) + (0x07 << 28), 6)
    for too_long in (b"\x7f\x80\x80\x80\x80\x80\x00", b"\x7f\x80"):
        try:
            integer(too_long, 0, 7)
        except HeaderBlockError:
            continue
        raise AssertionError(too_long)
