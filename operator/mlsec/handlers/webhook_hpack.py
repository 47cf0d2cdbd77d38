"""HPACK (RFC 7541) for the webhook port's HTTP/2 (:mod:`mlsec.handlers.webhook_h2`): the
decoding of requests' header blocks, and our answers' constant header blocks.

The ``hpack`` library's decoder, in one pass over the block with no per-field objects: it cost
~15 µs of the ~160 a promotion-gate request takes (``bench/webhook_latency.py``), and copied the
rest of the block for every literal field (quadratic in a block of many small fields). Huffman
strings and the static table are still the library's. ``tests/unit/fuzz/test_fuzz_hpack.py`` holds
the two decoders to the same headers, the same table and the same refusals.

A decoder belongs to one connection: its dynamic table is built by the blocks in their order, so
every block must be decoded, whatever becomes of its stream, or the connection ends.
"""

from __future__ import annotations

import functools
from collections import deque

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = HeaderTable.STATIC_TABLE  # RFC 7541 Appendix A: entries 1 to 61
STATIC_SIZE = len(STATIC)
ENTRY_OVERHEAD = 32  # bytes an entry counts beyond its name and value (§4.1)
MAX_INTEGER_BYTES = 5  # continuation bytes of an integer: up to 2^35, far beyond any limit here

Field = tuple[bytes, bytes]


class HeaderBlockError(Exception):
    """A header block that cannot be decoded: a connection error (COMPRESSION_ERROR)."""


class HeaderListTooLarge(HeaderBlockError):
    """A header list larger than our SETTINGS_MAX_HEADER_LIST_SIZE."""


def integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """The integer at ``pos`` in a ``prefix``-bit prefix (§5.1), and the position after it."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    for _ in range(MAX_INTEGER_BYTES):
        if pos >= len(data):
            raise HeaderBlockError("a truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise HeaderBlockError("an integer too long")


def string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal at ``pos`` (§5.2), Huffman-decoded if it is so, and the position after it."""
    huffman = data[pos] & 0x80
    length, pos = integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HeaderBlockError("a truncated string")
    text = data[pos:end]
    if huffman:
        try:
            text = _short_huffman(text) if length <= 32 else decode_huffman(text)
        except HPACKDecodingError as exc:
            raise HeaderBlockError(str(exc)) from None
    return text, end


_short_huffman = functools.lru_cache(maxsize=1024)(decode_huffman)
"""Short values recur (a content-length, a user agent): the library's decoding is a loop in
Python, ~1 µs a byte."""


class Decoder:
    """One connection's HPACK decoder: its dynamic table and the limits we advertised."""

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        self.max_allowed = max_table_size  # our SETTINGS_HEADER_TABLE_SIZE
        self.max_size = max_table_size  # the encoder's last table size update
        self.max_header_list_size = max_header_list_size
        self.size = 0
        self.table: deque[Field] = deque()  # the dynamic table, newest first (index 62)

    def decode(self, block: bytes) -> list[Field]:
        """The header list of ``block`` (its names and values as bytes), the table updated."""
        fields: list[Field] = []
        listed = 0
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field (§6.1): most of a client's repeated requests
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = integer(block, pos, 7)
                else:
                    pos += 1
                field = STATIC[index - 1] if 0 < index <= STATIC_SIZE else self._entry(index)
            elif first & 0x40:  # literal with incremental indexing (§6.2.1)
                field, pos = self._literal(block, pos, 6)
                self._add(field)
            elif first & 0x20:  # dynamic table size update (§6.3): only before the first field
                if fields:
                    raise HeaderBlockError("a table size update after a field")
                size, pos = integer(block, pos, 5)
                if size > self.max_allowed:
                    raise HeaderBlockError("a table size update beyond our SETTINGS_HEADER_TABLE_SIZE")
                self.max_size = size
                self._evict()
                continue
            else:  # literal without indexing or never indexed (§6.2.2, §6.2.3)
                field, pos = self._literal(block, pos, 4)
            listed += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if listed > self.max_header_list_size:
                raise HeaderListTooLarge(f"a header list over {self.max_header_list_size} bytes")
            fields.append(field)
        return fields

    def _entry(self, index: int) -> Field:
        if 0 < index <= STATIC_SIZE:
            return STATIC[index - 1]
        if STATIC_SIZE < index <= STATIC_SIZE + len(self.table):
            return self.table[index - STATIC_SIZE - 1]
        raise HeaderBlockError(f"a table index out of range: {index}")

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[Field, int]:
        index, pos = integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            if pos >= len(block):
                raise HeaderBlockError("a truncated field")
            name, pos = string(block, pos)
        if pos >= len(block):
            raise HeaderBlockError("a field without its value")
        value, pos = string(block, pos)
        return (name, value), pos

    def _add(self, field: Field) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.max_size:  # larger than the table: it empties it (§4.4)
            self.table.clear()
            self.size = 0
            return
        self.table.appendleft(field)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD


# --- our answers' header blocks ------------------------------------------------------------------

_STATUS_INDEX = {int(value): index for index, (name, value) in enumerate(STATIC, 1) if name == b":status"}
_STATUS_NAME = next(index for index, (name, _) in enumerate(STATIC, 1) if name == b":status")
_CONTENT_TYPE_NAME = next(index for index, (name, _) in enumerate(STATIC, 1) if name == b"content-type")


def encode_integer(value: int, prefix: int, first: int) -> bytes:
    """An HPACK integer (§5.1) in a ``prefix``-bit prefix, the first byte's high bits ``first``."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name_index: int, value: bytes) -> bytes:
    """A field without indexing (§6.2.2): a name from the static table, a plain string value."""
    return encode_integer(name_index, 4, 0x00) + encode_integer(len(value), 7, 0x00) + value


@functools.lru_cache(maxsize=32)
def response_headers(status: int, content_type: bytes) -> bytes:
    """An answer's header block (pure): ``:status`` and ``content-type``, never added to the
    decoder's table, so each is the same bytes every time and our encoder keeps no table."""
    index = _STATUS_INDEX.get(status)
    block = encode_integer(index, 7, 0x80) if index else _literal(_STATUS_NAME, str(status).encode())
    return block + _literal(_CONTENT_TYPE_NAME, content_type)
