"""Giving memory back: malloc_trim, rate-limited, and what it frees."""

from __future__ import annotations

import ctypes.util

import pytest

from service import memory


@pytest.mark.skipif(memory._LIBC is None, reason="not glibc: trim does nothing")
def test_trim_returns_freed_heap_and_is_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_last", 0.0)
    # Many small blocks (below the mmap threshold, so they live in the heap), then freed.
    # A block allocated after them pins the heap's top, so free() alone cannot shrink it;
    # only malloc_trim hands back the free pages below.
    blocks = [bytearray(4096) for _ in range(50_000)]  # ~200 MiB
    pin = bytearray(4096)
    held = memory.resident_bytes()
    del blocks
    freed_alone = held - memory.resident_bytes()
    assert memory.trim()
    assert held - memory.resident_bytes() > freed_alone + (100 << 20)
    del pin
    assert not memory.trim(), "a second trim within the interval is skipped"


def test_resident_bytes_is_the_process_size() -> None:
    assert memory.resident_bytes() > 10 << 20
    assert ctypes.util.find_library("c") is None or memory._LIBC is not None
