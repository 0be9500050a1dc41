"""Decode steps over a growing slice of a preallocated KV cache: what a model's cache looks like.

``K[:, :, :S]`` of a ``(B, G, S_max, D)`` buffer has rows that are contiguous but heads that are
``S_max`` rows apart: the fused kernel reads it in place (`as_rows` in ``csrc/params.h``); before
2026-12-06 every call copied both slices. A growing ``S`` is also a new GEMM shape every step,
which is why bf16 decode steps do not use oneDNN's brgemm (it compiles a kernel per shape).

    PYTHONPATH=src python benchmarks/bench_cache_slices.py

Prints µs per step (mean over 200 steps) for a growing and a fixed cache length, fp32 and bf16.
"""

from __future__ import annotations

import time

import torch

import attnkit
from attnkit.bench.machine import header


def steps(dtype: torch.dtype, B: int = 1, H: int = 8, D: int = 64, s_max: int = 1200) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(B, H, s_max, D, generator=g).to(dtype) for _ in range(2))
    with torch.inference_mode():
        for S in range(400, 420):  # warm-up (and the kernel build on a first run)
            attnkit.attention(q, k[:, :, :S], v[:, :, :S])
        t0 = time.perf_counter()
        for S in range(500, 700):
            attnkit.attention(q, k[:, :, :S], v[:, :, :S])
        t1 = time.perf_counter()
        for _ in range(200):
            attnkit.attention(q, k[:, :, :600], v[:, :, :600])
        t2 = time.perf_counter()
    return (t1 - t0) / 200 * 1e6, (t2 - t1) / 200 * 1e6


if __name__ == "__main__":
    print(header(torch.get_num_threads()))
    for dt in (torch.float32, torch.bfloat16):
        grow, fixed = steps(dt)
        print(f"{str(dt):15s} growing S 500..699: {grow:7.1f} µs/step   fixed S=600: {fixed:7.1f} µs/step")
