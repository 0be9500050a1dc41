"""Timing, the one way every attnkit benchmark measures: medians after warm-up.

- :func:`median_seconds`: one callable, a warm-up run, then up to ``repeats`` timed runs within a
  time budget (what ``attnkit bench`` does per implementation);
- :func:`interleaved_medians`: several callables timed in turns, so machine noise hits them alike
  (what the ``benchmarks/`` scripts do when they compare engines on the same inputs);
- :func:`matmul_peak_gflops`: this machine's measured fp32 matmul rate, the denominator of "% peak".

Example:
    >>> from attnkit.bench.timing import interleaved_medians, median_seconds
    >>> median_seconds(lambda: sum(range(100)), repeats=3, budget_s=1.0) > 0
    True
    >>> sorted(interleaved_medians({"a": lambda: None, "b": lambda: None}, repeats=3))
    ['a', 'b']
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

__all__ = ["median_seconds", "interleaved_medians", "matmul_peak_gflops"]


def median_seconds(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Median wall time of ``fn`` after one warm-up run (a warm-up longer than the budget is the measurement)."""
    t0 = time.perf_counter()
    fn()  # warm-up (allocations, kernel selection)
    first = time.perf_counter() - t0
    samples: list[float] = []
    if first > budget_s:
        return first
    while len(samples) < repeats and sum(samples) < budget_s:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable: one warm-up each, then ``repeats`` rounds of one run each."""
    for fn in fns.values():  # warm-up (allocator, thread pools)
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul GFLOP/s of this machine (median of ``repeats`` n×n products)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats, 30.0) / 1e9
