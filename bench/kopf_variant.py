"""``mlsec run`` with some kopf settings overridden, to compare settings within one benchmark run.

    MLSEC_BENCH_KOPF="execution.max_workers=32,batching.batch_window=0.02" \
        python -m bench.kopf_variant run ...

The operator's own settings (mlsec.handlers.settings.apply_kopf_settings) are applied first, by
its start-up handler; this module's start-up handler, registered after it, then sets each
``path=value`` of $MLSEC_BENCH_KOPF. Nothing else differs from ``mlsec run``.

With $MLSEC_BENCH_TRACEMALLOC=FILE the process traces its allocations (tracemalloc: slower, and
its own bookkeeping doubles the memory) and writes the live ones to FILE on SIGUSR1, with the
snapshot itself as FILE.snapshot (to compare two levels); $MLSEC_BENCH_TRACEMALLOC_FRAMES frames
are kept per allocation (12; 1 is several times faster: 5,000 models in minutes, not hours). With
$MLSEC_BENCH_OBJECTS=FILE it writes on SIGUSR2 the most numerous live object types and the size
of the bodies kopf keeps for daemons and timers (cheap: no tracing). With $MLSEC_BENCH_PEAKS=FILE
it appends to FILE, at each new high of pymalloc's 64-byte blocks in use (sampled every second),
what each thread was running, and with tracing on saves the allocations alive then as
FILE.high.snapshot.
"""

from __future__ import annotations

import linecache
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from types import FrameType, FunctionType
from typing import Any

from mlsec.clients import rest

rest.keep_kubernetes_package_out()  # as `mlsec run` does, before kopf is imported

import kopf  # noqa: E402

from mlsec import cli  # noqa: E402
from mlsec.handlers import lifecycle  # noqa: F401, E402 - registers the operator's settings handler first

log = logging.getLogger("bench.kopf_variant")


def overrides(text: str) -> list[tuple[list[str], str]]:
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        path, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected path=value, got {item!r}")
        out.append((path.split("."), value))
    return out


def _convert(old: Any, value: str) -> Any:
    if isinstance(old, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(old, int):
        return int(value)
    if old is None or isinstance(old, float):
        return float(value) if "." in value else int(value)
    return type(old)(value)


@kopf.on.startup()
def override(settings: kopf.OperatorSettings, **_: Any) -> None:
    for path, value in overrides(os.environ.get("MLSEC_BENCH_KOPF", "")):
        target: Any = settings
        for part in path[:-1]:
            target = getattr(target, part)
        old = getattr(target, path[-1])
        setattr(target, path[-1], _convert(old, value))
        log.warning("bench: kopf setting %s = %r (was %r)", ".".join(path), getattr(target, path[-1]), old)


def _dump_allocations(_signum: int, _frame: FrameType | None) -> None:
    """SIGUSR1: the allocations still alive, by the first frame in mlsec, kopf or another library
    (the caller that holds them), to $MLSEC_BENCH_TRACEMALLOC."""
    snapshot = tracemalloc.take_snapshot()
    snapshot.dump(os.environ["MLSEC_BENCH_TRACEMALLOC"] + ".snapshot")  # to compare two levels
    by_file = snapshot.statistics("filename")
    by_trace = snapshot.statistics("traceback")
    now, peak = tracemalloc.get_traced_memory()  # the peak: how high a burst took live allocations
    lines = [f"total {sum(s.size for s in by_file) / 2**20:.1f} MiB traced (now {now / 2**20:.1f}, "
             f"peak {peak / 2**20:.1f} since start; tracemalloc's own "
             f"{tracemalloc.get_tracemalloc_memory() / 2**20:.1f})",
             "", "by file:"]
    lines += [f"{s.size / 2**20:8.2f} MiB {s.count:8d} {s.traceback[0].filename}" for s in by_file[:40]]
    lines += ["", "by traceback (innermost last):"]
    for stat in by_trace[:25]:
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}")
        for frame in stat.traceback[-8:]:
            code = linecache.getline(frame.filename, frame.lineno).strip()
            lines.append(f"      {frame.filename}:{frame.lineno} {code[:100]}")
    with open(os.environ["MLSEC_BENCH_TRACEMALLOC"], "w") as f:
        f.write("\n".join(lines) + "\n")


def _deep_size(obj: Any, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(_deep_size(v, seen) for v in obj)
    return size


def _deep_size_any(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Deep size through containers, instance dicts and slots (not through modules, types,
    functions): what a module-level name keeps alive."""
    if id(obj) in seen or depth > 40 or isinstance(obj, (type, FunctionType)) \
            or type(obj).__name__ in ("module", "builtin_function_or_method", "method"):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        return size + sum(_deep_size_any(k, seen, depth + 1) + _deep_size_any(v, seen, depth + 1)
                          for k, v in list(obj.items()))
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(_deep_size_any(v, seen, depth + 1) for v in list(obj))
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return size
    inner = getattr(obj, "__dict__", None)
    if isinstance(inner, dict):
        size += _deep_size_any(inner, seen, depth + 1)
    for slot in getattr(type(obj), "__slots__", ()) or ():
        if isinstance(slot, str) and hasattr(obj, slot):
            size += _deep_size_any(getattr(obj, slot), seen, depth + 1)
    return size


def _glibc_heap() -> list[str]:
    """glibc's own figures (mallinfo2): what C code (OpenSSL, pydantic-core, large Python blocks)
    holds and what malloc keeps free."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    mib = 2**20
    return [f"glibc: heap from sbrk/arenas {info.arena / mib:.1f} MiB (in use {info.uordblks / mib:.1f}, "
            f"free {info.fordblks / mib:.1f}), mmapped blocks {info.hblks} = {info.hblkhd / mib:.1f} MiB"]


def _brief(r: Any) -> str:
    if isinstance(r, dict):
        return repr(list(r)[:3])[:80]
    if isinstance(r, (list, tuple)):
        return f"len {len(r)}: " + repr([type(x).__qualname__ if isinstance(x, (dict, list, tuple)) else x
                                         for x in list(r)[:3]])[:100]
    return repr(getattr(r, "__dict__", ""))[:80]


def _dump_object_counts(_signum: int, _frame: FrameType | None) -> None:
    """SIGUSR2: the most numerous live object types, and the bodies kopf keeps for daemons and
    timers (``live_fresh_body``), to $MLSEC_BENCH_OBJECTS."""
    import gc
    from collections import Counter

    from kopf._core.reactor.inventory import ResourceMemory

    def status_line() -> str:
        return next(x for x in open("/proc/self/status").read().splitlines() if x.startswith("VmRSS"))

    # Cyclic garbage first: how much is waiting for a full collection (gen 2 runs rarely when
    # many objects live long), measured by RSS and pymalloc's allocated bytes around gc.collect().
    print("mlsec-bench: before gc.collect", status_line(), file=sys.stderr, flush=True)
    sys._debugmallocstats()
    collected = gc.collect()
    print(f"mlsec-bench: gc.collect() freed {collected} objects;", status_line(), file=sys.stderr, flush=True)
    sys._debugmallocstats()
    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
    memories = [o for o in gc.get_objects() if isinstance(o, ResourceMemory)]
    bodies = [m.daemons_memory.live_fresh_body for m in memories
              if m.daemons_memory.live_fresh_body is not None]
    seen: set[int] = set()
    body_bytes = sum(_deep_size(dict(b), seen) for b in bodies)
    def rss() -> str:
        return next(x for x in open("/proc/self/status").read().splitlines() if x.startswith("VmRSS"))

    import ctypes
    import io
    before = rss()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    after = rss()
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        sys._debugmallocstats()
    finally:
        sys.stderr = old
    keys = ("arenas allocated current", "bytes in allocated blocks", "bytes in available blocks",
            "unused pools")
    pymalloc = [x for x in err.getvalue().splitlines() if any(k in x for k in keys)]
    lines = [f"before malloc_trim: {before}; after: {after}", *pymalloc, *_glibc_heap(), "",
             f"kopf ResourceMemory objects: {len(memories)}; with a live body: {len(bodies)} "
             f"({body_bytes / 2**20:.1f} MiB deep)", "", "most numerous types:"]
    lines += [f"{n:9d} {name}" for name, n in counts.most_common(40)]
    # Bytes by type of every object the collector tracks, plus the untracked ones (str, bytes,
    # int, float, …) they refer to directly: close to all live Python objects, unlike the counts.
    sizes: Counter[str] = Counter()
    numbers: Counter[str] = Counter()
    untracked: set[int] = set()
    for o in gc.get_objects():
        name = type(o).__qualname__
        sizes[name] += sys.getsizeof(o)
        numbers[name] += 1
        for r in gc.get_referents(o):
            if not gc.is_tracked(r) and id(r) not in untracked:
                untracked.add(id(r))
                rname = type(r).__qualname__
                sizes[rname] += sys.getsizeof(r)
                numbers[rname] += 1
    lines += ["", f"live objects by type (bytes, shallow), {sum(sizes.values()) / 2**20:.1f} MiB in all:"]
    lines += [f"{size / 2**20:9.2f} MiB {numbers[name]:9d} {name}" for name, size in sizes.most_common(25)]
    shapes: Counter[str] = Counter()  # the dicts by their first keys: who holds so many
    shape_bytes: Counter[str] = Counter()
    for o in gc.get_objects():
        if type(o) is dict:
            shape = repr(tuple(list(o)[:4]))[:100]
            shapes[shape] += 1
            shape_bytes[shape] += sys.getsizeof(o)
    lines += ["", "dicts by their first keys:"]
    lines += [f"{shape_bytes[k] / 2**20:9.2f} MiB {n:9d} {k}" for k, n in shapes.most_common(20)]
    holders_of: Counter[str] = Counter()  # and by what refers to them
    for o in gc.get_objects():
        for r in gc.get_referents(o):
            if type(r) is dict:
                where = type(o).__qualname__
                if type(o) is dict:
                    where += " " + repr(tuple(list(o)[:2]))[:70]
                holders_of[where] += 1
    lines += ["", "dicts by what refers to them:"]
    lines += [f"{n:9d} {k}" for k, n in holders_of.most_common(20)]
    set_holders: Counter[str] = Counter()  # sets (their tables are large): who holds them, and what
    set_bytes: Counter[str] = Counter()
    for o in gc.get_objects():
        for r in gc.get_referents(o):
            if type(r) in (set, frozenset) and sys.getsizeof(r) > 512:
                where = f"{type(o).__qualname__} {_brief(o)[:60]} → {type(r).__name__} of " \
                        f"{type(next(iter(r), None)).__name__}"
                set_holders[where] += 1
                set_bytes[where] += sys.getsizeof(r)
    lines += ["", "sets over 512 bytes by what refers to them:"]
    lines += [f"{set_bytes[k] / 2**20:9.2f} MiB {n:9d} {k}" for k, n in set_bytes.most_common(15)
              for n in [set_holders[k]]]
    probe = os.environ.get("MLSEC_BENCH_PROBE_KEY")  # e.g. dataClassification: who holds such dicts
    if probe:
        sample = next((o for o in gc.get_objects() if type(o) is dict and probe in o), None)
        chain, frontier, skip = [], [sample], {id(lines), id(sizes)}
        for _ in range(6):
            if not frontier or frontier[0] is None:
                break
            refs = [r for r in gc.get_referrers(frontier[0])
                    if id(r) not in skip and type(r).__name__ not in ("frame", "list_iterator")
                    and r is not frontier]
            chain.append(" | ".join(f"{type(r).__qualname__} {_brief(r)}" for r in refs[:4]))
            frontier = refs[:1]
        lines += ["", f"referrers of a dict holding {probe!r}, upwards:", *chain]
    holders = []  # what each module-level name of ours, kopf's and prometheus' holds, deep
    seen_ids: set[int] = set()
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith(("mlsec", "kopf", "prometheus_client")):
            continue
        for attr, value in list(vars(mod).items()):
            if isinstance(value, (dict, list, set, tuple)) or hasattr(value, "__dict__") \
                    or hasattr(value, "__slots__"):
                if isinstance(value, type) or type(value).__name__ == "module":
                    continue
                size = _deep_size_any(value, seen_ids)
                if size > 256 * 1024:
                    holders.append((size, f"{mod_name}.{attr}"))
    holders.sort(reverse=True)
    lines += ["", "module-level holders (deep, first holder wins):"]
    lines += [f"{size / 2**20:9.2f} MiB {name}" for size, name in holders[:30]]
    coros = Counter(o.cr_code.co_qualname for o in gc.get_objects() if type(o).__name__ == "coroutine")
    lines += ["", "coroutines:"] + [f"{n:9d} {name}" for name, n in coros.most_common(15)]
    with open(os.environ["MLSEC_BENCH_OBJECTS"], "w") as f:
        f.write("\n".join(lines) + "\n")


def _small_blocks(size: int) -> int:
    """pymalloc's blocks in use of one size class, from ``sys._debugmallocstats`` (it writes to
    the C stderr: redirected to a temporary file for the call)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out.read().decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[1] == str(size) and parts[0].isdigit():
                return int(parts[3])
    return 0


def _sample_peaks(path: str, size: int = 64, every: float = 1.0) -> None:
    """Every ``every`` s, pymalloc's live blocks of ``size`` bytes (or, tracing, the bytes
    traced); at each new high, what every thread was running, written to ``path``: what builds
    the transient peaks that leave pools pinned (bench/README.md)."""
    high = 0
    while True:
        time.sleep(every)
        # With tracing on, pymalloc's statistics are not printed: the traced total instead.
        n = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else _small_blocks(size)
        if n <= high:
            continue
        high = n
        stacks = []
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            names = []
            f: FrameType | None = frame
            while f is not None and len(names) < 8:
                names.append(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_code.co_name}")
                f = f.f_back
            stacks.append(" < ".join(names))
        with open(path, "a") as out:
            what = "bytes traced" if tracemalloc.is_tracing() else f"{size}-byte blocks in use"
            out.write(f"{time.strftime('%H:%M:%S')} {what}: {n}\n")
            out.writelines(f"    {s}\n" for s in stacks)
        if tracemalloc.is_tracing():  # what is alive at the high, to compare with a settled level
            tracemalloc.take_snapshot().dump(f"{path}.high.snapshot")


if __name__ == "__main__":
    if os.environ.get("MLSEC_BENCH_PEAKS"):
        threading.Thread(target=_sample_peaks, args=(os.environ["MLSEC_BENCH_PEAKS"],),
                         name="bench-peaks", daemon=True).start()
    if os.environ.get("MLSEC_BENCH_OBJECTS"):
        signal.signal(signal.SIGUSR2, _dump_object_counts)
    if os.environ.get("MLSEC_BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ.get("MLSEC_BENCH_TRACEMALLOC_FRAMES", "12")))
        signal.signal(signal.SIGUSR1, _dump_allocations)
    sys.exit(cli.main())
