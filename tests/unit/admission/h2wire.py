"""The webhook port's HTTP/2 protocol object driven directly: its bytes in, its frames out."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from mlsec.handlers import webhook_h2


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.unread = False  # a client that reads nothing: all that was written stays buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "a write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return len(self.out) if self.unread else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def echo(path: str, raw: bytes | bytearray) -> bytes:
    return json.dumps({"path": path, "body": bytes(raw).decode("latin-1")}).encode()


def drive(chunks: list[bytes], answer: webhook_h2.Answer = echo, *, unread: bool = False,
          **options: Any) -> Transport:
    """The server's side of a connection that receives ``chunks``, every answer run to its end."""
    async def main() -> Transport:
        protocol = webhook_h2.H2Protocol(answer, **options)
        transport = Transport()
        transport.unread = unread
        protocol.connection_made(transport)
        for chunk in chunks:
            if transport.closed:
                break
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        while protocol.tasks:
            await asyncio.gather(*protocol.tasks)
        await asyncio.sleep(0)  # the last answers' flush
        protocol.connection_lost(None)
        return transport

    return asyncio.run(main())


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame; fails unless ``data`` is whole frames."""
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a cut frame header"
        high, low, kind, flags, stream = struct.unpack_from(">HBBBL", data, pos)
        length = high << 8 | low
        assert len(data) - pos - 9 >= length, "a cut frame"
        out.append((kind, flags, stream & 0x7FFFFFFF, data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out


def raw(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One frame's bytes."""
    return struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream) + payload


def server_preface() -> bytes:
    """The server's first bytes: its SETTINGS and the connection's window."""
    async def main() -> bytes:
        server = webhook_h2.H2Protocol(echo)
        transport = Transport()
        server.connection_made(transport)
        server.connection_lost(None)
        return bytes(transport.out)

    return asyncio.run(main())


CLIENT_START = webhook_h2.PREFACE + raw(webhook_h2.SETTINGS, 0, 0, b"")
"""A client's preface and (empty) SETTINGS: what must come first."""
