"""Giving memory back to the system after large requests (glibc's allocator).

Tokenizing a large request, and parsing its JSON, allocate hundreds of thousands of small
objects; freed, they stay in the allocator's arenas, so the process keeps its peak size (three
refused 1 MB requests left 1.9 GB resident before this module existed). ``trim`` hands the free
pages back (``malloc_trim``), rate-limited because it walks every arena. Elsewhere than glibc
both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import threading
import time

# At most one trim per this many seconds: a trim of a 1 GB heap takes a few milliseconds, and
# large requests arriving back to back share one.
_MIN_INTERVAL_S = 1.0

_lock = threading.Lock()
_last = 0.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def trim() -> bool:
    """Return free heap pages to the system unless a trim ran within ``_MIN_INTERVAL_S``;
    blocking (call it from a worker thread). True if it trimmed."""
    global _last
    if _LIBC is None:
        return False
    with _lock:
        now = time.monotonic()
        if now - _last < _MIN_INTERVAL_S:
            return False
        _last = now
    _LIBC.malloc_trim(0)
    return True


def resident_bytes() -> int:
    """The process's resident set size now (Linux), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return 0

