"""Timing helpers shared by the benchmarks: best-of-N wall time and latency percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def best_seconds(fn: Callable[[], object], min_time: float = 0.5, min_runs: int = 3,
                 max_runs: int = 50) -> float:
    """Best wall time of ``fn`` over at least ``min_runs`` calls and ``min_time`` seconds.

    The best, not the mean: on a shared machine the noise only ever adds time.
    """
    fn()  # warm-up: thread pools, allocator growth, weight packing
    best, total, runs = float("inf"), 0.0, 0
    while runs < max_runs and (runs < min_runs or total < min_time):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, total, runs = min(best, took), total + took, runs + 1
    return best


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 in milliseconds."""
    a = np.asarray(seconds, dtype=np.float64) * 1000
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}
