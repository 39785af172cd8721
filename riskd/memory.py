"""The process's memory management, set for a long-running daemon whose every tick makes and drops
a snapshot's worth of objects (at 3000 accounts: a 7 MB body, ~100,000 small objects).

`settle_malloc` (at start, before any thread) and `settle_gc` (after the first tick) are what
`Daemon.run` does; the benchmarks call them the same way (tests/bench_riskd.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

GC_THRESHOLDS = (20_000, 10, 10)

# glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept: it would otherwise rise to the largest block freed
ARENA_MAX = 2


def settle_gc() -> None:
    """After the first tick: the objects of startup live forever, so they leave every later pass of
    the cycle collector (gc.freeze), and a young collection waits for 20,000 new objects instead of
    700. A desk's tick makes tens of thousands of short-lived objects (a snapshot's dicts, its
    positions), nearly all freed by reference counting; with the default threshold the collector
    ran 50 times a tick at 1000 accounts and took about half the tick (tests/bench_riskd.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def settle_malloc() -> bool:
    """At start, before any thread: a block of 128 kB or more (a snapshot body, its text, a state
    document) is always mapped on its own and given back to the system when freed, and the threads
    share at most two malloc arenas. glibc's defaults raise the mapping threshold to the largest
    block freed so far (so every later body is carved from the heap, whose free space is rarely given
    back) and give each thread an arena of its own; at 3000 accounts riskd's resident memory then
    settled at 142 MB instead of 129 MB (tests/bench_riskd.py, daemon_cpu). Return False where the C library is
    not glibc (nothing is changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
