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

