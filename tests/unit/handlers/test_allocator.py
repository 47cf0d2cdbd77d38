"""The operator caps glibc's malloc arenas (issue 9's memory figures)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import tracemalloc
from asyncio import sslproto
from pathlib import Path

import pytest

from mlsec.handlers import allocator
from mlsec.local import pki

# Sixteen threads alive together, each allocating large blocks (not pymalloc's: those come from glibc), then
# glibc's own statistics, one "Arena N:" block per arena, on stderr.
PROGRAM = """
import ctypes, sys, threading
from mlsec.handlers import allocator
print(allocator.limit_arenas() if sys.argv[1] == "capped" else None)
blocks = []
together = threading.Barrier(16)
def work():
    together.wait()  # all alive at once: an exiting thread hands its arena to the next one
    blocks.extend(bytearray(64 * 1024) for _ in range(20))
    together.wait()
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = str(Path(allocator.__file__).parents[2])
    run = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
                         check=True)
    return run.stdout.strip(), run.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_two_arenas_however_many_threads_allocate() -> None:
    assert arenas("capped") == ("True", 2)
    said, uncapped = arenas("default")
    assert said == "None" and uncapped > 2  # the premise: glibc's default gives threads their own


def test_an_administrators_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.limit_arenas() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_trim_runs_at_most_once_per_interval() -> None:
    allocator._last_trim = float("-inf")
    blocks = [bytearray(100_000) for _ in range(50)]  # below the mmap threshold: glibc's heap
    keep = bytearray(1000)
    del blocks
    assert allocator.trim(min_interval=60) is True  # pages given back
    assert allocator.trim(min_interval=60) is False  # too soon
    assert keep is not None


def test_one_trimmer_per_process() -> None:
    first = allocator.start_trimmer(period=3600)
    assert allocator.start_trimmer(period=3600) is first and first.is_alive() and first.daemon


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_a_trim_asked_for_too_soon_is_deferred_to_the_interval_end_not_dropped() -> None:
    import time

    allocator.start_trimmer(period=3600)  # the periodic trims never come during this test
    recent = time.monotonic() - (allocator.MIN_TRIM_INTERVAL - 1.0)
    allocator._last_trim = recent  # a trim a moment ago: the next may come in a second
    allocator.request_trim()
    time.sleep(0.3)
    assert allocator._last_trim == recent  # not yet: the interval holds
    deadline = time.monotonic() + 5
    while allocator._last_trim == recent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert allocator._last_trim > recent  # it ran once the interval was over


# --- asyncio's TLS receive buffers -------------------------------------------------------------


def _tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "localhost", ips=("127.0.0.1",))
    (tmp / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp / "tls.key").write_bytes(leaf.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    return server, ssl.create_default_context(cadata=ca.cert_pem.decode())


async def _traced_per_connection(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                                 n: int = 10, payload: int = 1 << 20) -> float:
    """Bytes Python allocates per open TLS connection (both ends live here), after checking
    that a payload larger than any buffer crosses one of them intact."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        opened = [await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
                  for _ in range(n)]
        await asyncio.sleep(0.1)  # the server's side of each accepted
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    sent = os.urandom(payload)
    reader, writer = opened[0]
    writer.write(sent)
    assert await reader.readexactly(payload) == sent
    for _, w in opened:
        w.close()
    server.close()
    await server.wait_closed()
    return grown / n


def test_tls_connections_made_after_the_cap_hold_small_receive_buffers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sslproto.SSLProtocol, "max_size", sslproto.SSLProtocol.max_size)
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    uncapped = asyncio.run(_traced_per_connection(server_ctx, client_ctx))
    assert uncapped > 2 * 200 * 1024  # the premise: 256 KiB at each end, resident
    assert allocator.small_tls_buffers() is True
    capped = asyncio.run(_traced_per_connection(server_ctx, client_ctx))
    assert capped < 2 * 64 * 1024, (uncapped, capped)
