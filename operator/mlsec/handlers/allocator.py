"""The C allocator's arenas: fewer, so the operator's threads do not each keep a heap of their own.

glibc gives every thread that allocates while the others hold the lock an arena of its own, up to
eight per CPU. The operator parses watch events in a thread per child kind, runs handlers in
kopf's executor and repairs in a pool; large objects (bodies, JSON strings) go to the arena of
whichever thread made them, and each arena keeps its freed pages. Two arenas
(``bench/memory.py``): a restart with 5,000 models in place 528.7 → 434.1 MiB; 1,000 models
205.1 / 207.0 → 187.0 / 198.5 in two runs each; 5,000 models as created, no change (541.6 →
550.4: the per-model state dominates there).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from asyncio import sslproto

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2
log = logging.getLogger(__name__)


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; call before any thread starts. Whether the cap was set: not
    when $MALLOC_ARENA_MAX is set (the administrator decided) or the C library is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no mallopt: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return ok


# asyncio's TLS transport gives every connection a 256 KiB buffer for the encrypted bytes it
# receives (SSLProtocol.max_size), zero-filled (so resident) when the connection is made, for
# its whole life. A pool keeping 40-50 idle connections to the API server held 13 MiB in them
# (bench/README.md, twelfth run). A TLS record carries at most 16 KiB: 32 KiB still takes two per
# read; a large response costs more reads, not more round trips.
TLS_READ_BUFFER = 32 * 1024


def small_tls_buffers(size: int = TLS_READ_BUFFER) -> bool:
    """Cap the receive buffer of asyncio's TLS connections made from now on (the API server's,
    the webhook's). Whether it was capped: not with a TLS transport that has no such size."""
    if not isinstance(getattr(sslproto.SSLProtocol, "max_size", None), int):
        return False
    sslproto.SSLProtocol.max_size = size
    return True


# glibc returns freed memory to the system only from the top of its heap; what a burst freed below
# live blocks (pages of listed children, response bodies) stays resident. malloc_trim(0) gives
# back every free page: after the reconcile queue drains, and every TRIM_PERIOD for what the
# Reports, syncs and webhooks free meanwhile. A restart with 5,000 models had 12-19 MiB of
# glibc's heap free (bench/README.md, seventh run).
MIN_TRIM_INTERVAL = 10.0
TRIM_PERIOD = 60.0
_trim_lock = threading.Lock()
_last_trim = float("-inf")


def trim(min_interval: float = MIN_TRIM_INTERVAL) -> bool:
    """Return glibc's free pages to the system, at most once per ``min_interval`` seconds (it
    walks the heap under malloc's lock: milliseconds). Whether it ran and released anything."""
    global _last_trim
    with _trim_lock:
        now = time.monotonic()
        if now - _last_trim < min_interval:
            return False
        _last_trim = now
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))


_trimmer: threading.Thread | None = None
_wanted = threading.Event()


def request_trim() -> None:
    """Trim soon, in the trimmer thread (the caller does not wait for malloc's lock): at the end
    of a burst (the reconcile queue drained, a listing parsed). A request inside the minimum
    interval is deferred to its end, not dropped: after a restart the eight listings end within
    seconds of each other and of the resume pass, and a trim skipped at the last of them left
    13.6 MiB of glibc's heap free until the next period (bench/README.md, eighth run)."""
    _wanted.set()


def start_trimmer(period: float = TRIM_PERIOD) -> threading.Thread:
    """A daemon thread that trims every ``period`` seconds (Go's scavenger, in the small) and
    when asked (:func:`request_trim`); one per process however often it is called."""
    global _trimmer

    def loop() -> None:
        while True:
            _wanted.wait(period)
            _wanted.clear()
            with _trim_lock:
                wait = MIN_TRIM_INTERVAL - (time.monotonic() - _last_trim)
            if wait > 0:
                time.sleep(wait)
            trim()

    with _trim_lock:
        if _trimmer is None:
            _trimmer = threading.Thread(target=loop, name="mlsec-malloc-trim", daemon=True)
            _trimmer.start()
        return _trimmer
